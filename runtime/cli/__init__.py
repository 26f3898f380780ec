"""The ``agents-worker`` command line."""

from runtime.cli import (
    config_cmd,
    demo_cmd,
    dlq_cmd,
    enqueue_cmd,
    redis_cmd,
    run_cmd,
    status_cmd,
    submit_cmd,
)
from runtime.cli.app import Context, cli, pass_context

__all__ = ["Context", "cli", "main", "pass_context"]

cli.add_command(redis_cmd.redis_group)
cli.add_command(config_cmd.config_group)
cli.add_command(demo_cmd.demo)
cli.add_command(run_cmd.run)
cli.add_command(status_cmd.status)
cli.add_command(dlq_cmd.dlq_group)
cli.add_command(enqueue_cmd.enqueue)
cli.add_command(submit_cmd.submit)


def main() -> None:
    """Entry point of the ``agents-worker`` console script."""
    cli.main(prog_name="agents-worker")
