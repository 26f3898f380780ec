# The two commands of the README, plus helpers. Each creates or reuses .venv by itself.
.PHONY: demo test lint format bench docs clean

demo:  ## start the embedded Redis Stack and run the demo
	@scripts/demo

test:  ## lint, type-check and run the tests
	@scripts/test

lint:  ## ruff and mypy only
	@scripts/bootstrap && .venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

format:  ## apply ruff's fixes and formatting
	@scripts/bootstrap && .venv/bin/ruff check --fix . && .venv/bin/ruff format .

bench:  ## run the side-by-side benchmarks (see benchmarks/RESULTS.md)
	@scripts/bench
	@.venv-bench/bin/python -m benchmarks.startup
	@PYTHONPATH=. .venv-bench/bin/python -m benchmarks.sessions
	@PYTHONPATH=. .venv-bench/bin/python -m benchmarks.run_overhead --runs 1000
	@PYTHONPATH=. .venv-bench/bin/python -m benchmarks.idle_penalty

docs:  ## regenerate docs/configuration.md and config/agents-worker.toml from the settings model
	@scripts/bootstrap && .venv/bin/agents-worker config docs > docs/configuration.md && \
	  .venv/bin/agents-worker config example > config/agents-worker.toml

clean:  ## stop the embedded server and remove .venv and .agents-worker
	-@[ -x .venv/bin/agents-worker ] && .venv/bin/agents-worker redis stop
	rm -rf .venv .agents-worker
