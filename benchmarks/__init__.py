"""Side-by-side benchmarks; results are recorded in benchmarks/RESULTS.md."""
