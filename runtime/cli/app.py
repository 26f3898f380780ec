"""The root command group, its global options and the context every command gets."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import click
import msgspec
from rich.console import Console

from runtime import __version__
from runtime.errors import AgentsWorkerError
from runtime.log import configure_logging
from runtime.redaction import redact_text
from runtime.redis.connection import Connection, open_redis
from runtime.redis.embedded import EmbeddedRedis
from runtime.settings import Resolved, Settings, resolve_settings

__all__ = ["Context", "cli", "existing_redis", "pass_context"]


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
        given = {key: value for key, value in flags.items() if value is not None}
        if given:
            self.overrides = {**self.overrides, **given}
            self.resolved = resolve_settings(self.config_file, overrides=self.overrides)


pass_context = click.make_pass_decorator(Context)


class _Group(click.Group):
    """Turns runtime errors into one clear line on stderr and exit status 1 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AgentsWorkerError as exc:
            raise click.ClickException(redact_text(str(exc))) from exc
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None


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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agents-worker")
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
