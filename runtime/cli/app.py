"""The root command group, its global options and the context every command gets.

``agents-worker --help`` and ``--version`` must stay quick (no Redis client, settings or
Agents SDK loaded): the commands are imported only when one is invoked
(:class:`LazyGroup`), and what only a running command needs is imported in the functions
that need it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from runtime.errors import AgentsWorkerError
from runtime.redaction import redact_text

if TYPE_CHECKING:
    from rich.console import Console

    from runtime.redis.connection import Connection
    from runtime.settings import Resolved, Settings

__all__ = ["Context", "LazyGroup", "cli", "existing_redis", "pass_context"]


@dataclass
class Context:
    """What every command gets: the resolved settings and the terminal."""

    resolved: Resolved
    console: Console
    errors: Console
    config_file: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return self.resolved.settings

    def override(self, flags: dict[str, Any]) -> None:
        """Apply a command's own flags (``None``: not given) on top of the global ones."""
        from runtime.settings import resolve_settings

        given = {key: value for key, value in flags.items() if value is not None}
        if given:
            self.overrides = {**self.overrides, **given}
            self.resolved = resolve_settings(self.config_file, overrides=self.overrides)


pass_context = click.make_pass_decorator(Context)


class LazyGroup(click.Group):
    """A group whose commands are imported when invoked, not to list them.

    *lazy* maps a command name to ``("module:attribute", short help)``; ``--help`` shows the
    short help without importing the module. Runtime errors become one clear line on stderr
    and exit status 1 (no traceback).
    """

    def __init__(
        self, *args: Any, lazy: Mapping[str, tuple[str, str]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, tuple[str, str]] = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name][0].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(name) for name in names), default=0)
        rows: list[tuple[str, str]] = []
        for name in names:
            # a stand-in with the table's help is shortened exactly as click shortens a command's
            shown = self.commands.get(name) or click.Command(name, help=self.lazy[name][1])
            if not shown.hidden:
                rows.append((name, shown.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AgentsWorkerError as exc:
            raise click.ClickException(redact_text(str(exc))) from exc
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from runtime._version import __version__

    click.echo(f"agents-worker, version {__version__}")
    ctx.exit()


def _parse_set(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    overrides = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not of the form section.key=value")
        overrides[key.strip()] = value
    return overrides


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML settings file [default: $AGENTS_WORKER_CONFIG or config/agents-worker.toml].",
)
@click.option("--redis-url", help="Redis URL; no embedded server is started when given.")
@click.option("--key-prefix", help="Prefix of every Redis key [default: aw].")
@click.option(
    "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)
)
@click.option("--log-format", type=click.Choice(["console", "json"]))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_set,
    help="Override any setting, e.g. --set worker.concurrency=32 (repeatable).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    config_file: str | None,
    redis_url: str | None,
    key_prefix: str | None,
    log_level: str | None,
    log_format: str | None,
    overrides: dict[str, str],
) -> None:
    """agents-worker: a durable, Redis-native runtime for OpenAI Agents SDK agents.

    Settings come from defaults, then a TOML file, then AGENTS_WORKER_* variables, then these
    flags; `agents-worker config show` prints them with their sources.
    """
    # imported here, not at the top: --help and --version need none of it
    from rich.console import Console

    from runtime.log import configure_logging
    from runtime.settings import resolve_settings

    flags = {
        "redis.url": redis_url,
        "redis.key_prefix": key_prefix,
        "observability.log_level": log_level.upper() if log_level else None,
        "observability.log_format": log_format,
    }
    merged = {key: value for key, value in flags.items() if value is not None}
    merged.update(overrides)
    resolved = resolve_settings(config_file, overrides=merged)
    settings = resolved.settings
    configure_logging(settings.observability.log_level, settings.observability.log_format)
    # Piped output (logs, CI) gets wide tables rather than 80 columns of wrapped cells.
    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
    ctx.obj = Context(
        resolved,
        Console(highlight=False, soft_wrap=True, width=width),
        Console(stderr=True, highlight=False, soft_wrap=True, width=width),
        config_file,
        merged,
    )


@contextlib.asynccontextmanager
async def existing_redis(ctx: Context) -> AsyncIterator[Connection]:
    """Connect to the configured Redis or the running embedded one; never start a server.

    Operator commands use this: inspecting an empty server that was just started helps nobody.
    """
    import msgspec

    from runtime.redis.connection import open_redis
    from runtime.redis.embedded import EmbeddedRedis

    settings = ctx.settings
    if settings.redis.url is None:
        running = EmbeddedRedis(settings.redis.embedded).status()
        if running is None:
            raise click.ClickException(
                "no Redis to talk to: set REDIS_URL (or --redis-url), or start the embedded "
                "server with `agents-worker redis start`"
            )
        redis_settings = msgspec.structs.replace(settings.redis, url=running.url)
        settings = msgspec.structs.replace(settings, redis=redis_settings)
    async with open_redis(settings) as conn:
        yield conn
