"""One benchmark driver per queue; each runs as ``python -m benchmarks.peers.NAME``."""
