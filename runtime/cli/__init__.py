"""The ``agents-worker`` command line."""

from runtime.cli.app import Context, cli, pass_context
from runtime.cli.config_cmd import config_group
from runtime.cli.demo_cmd import demo
from runtime.cli.redis_cmd import redis_group

__all__ = ["Context", "cli", "main", "pass_context"]

cli.add_command(redis_group)
cli.add_command(config_group)
cli.add_command(demo)


def main() -> None:
    """Entry point of the ``agents-worker`` console script."""
    cli.main(prog_name="agents-worker")
