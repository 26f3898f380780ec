"""The ``agents-worker`` command line.

Each command lives in a module of its own, imported only when that command is invoked:
``agents-worker --help`` lists them from :data:`COMMANDS` without importing any (the demo and
``submit`` load the Agents SDK, the others a Redis client).
"""

from runtime.cli.app import Context, cli, pass_context

__all__ = ["COMMANDS", "Context", "cli", "main", "pass_context"]

COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("runtime.cli.config_cmd:config_group", "Show, check and document the settings."),
    "dashboard": (
        "runtime.cli.dashboard_cmd:dashboard",
        "Serve the live web dashboard: workers, inboxes, runs, traces and charts.",
    ),
    "demo": (
        "runtime.cli.demo_cmd:demo",
        "Run the demo agents end to end on the embedded Redis Stack (or REDIS_URL).",
    ),
    "dlq": (
        "runtime.cli.dlq_cmd:dlq_group",
        "Inspect and act on dead-lettered entries (one stream per target).",
    ),
    "enqueue": (
        "runtime.cli.enqueue_cmd:enqueue",
        "Enqueue PAYLOAD (JSON, or a string with --text) for TARGET; prints the task id.",
    ),
    "metrics": (
        "runtime.cli.metrics_cmd:metrics",
        "Fleet figures: runs, latency, tokens, calls per agent; lag, pending, DLQ per inbox.",
    ),
    "redis": (
        "runtime.cli.redis_cmd:redis_group",
        "Manage the embedded Redis Stack server (Search, JSON, TimeSeries, Bloom).",
    ),
    "run": (
        "runtime.cli.run_cmd:run",
        "Run APP (module:object, e.g. workers.demo:app) in supervised worker processes.",
    ),
    "runs": (
        "runtime.cli.runs_cmd:runs_group",
        "Recent agent runs: list them, show one with its events, cancel one.",
    ),
    "status": (
        "runtime.cli.status_cmd:status",
        "Per inbox stream: length, lag, pending, oldest pending age, consumers, delayed, DLQ.",
    ),
    "submit": (
        "runtime.cli.submit_cmd:submit",
        "Submit TEXT to AGENT; prints the run id, or follows the run to its result.",
    ),
    "trace": (
        "runtime.cli.trace_cmd:trace",
        "Show the span tree of a run (RUN_ID, or a trace id) with its timings.",
    ),
}
"""Command name → ``("module:attribute", short help)``; the help is the first sentence of
the command's docstring (a test keeps them equal)."""

cli.lazy.update(COMMANDS)


def main() -> None:
    """Entry point of the ``agents-worker`` console script."""
    cli.main(prog_name="agents-worker")
