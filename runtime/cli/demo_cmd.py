"""``agents-worker demo``: the README's first command."""

from __future__ import annotations

import anyio
import click
from rich.table import Table

from runtime.cli.app import Context, pass_context
from runtime.redaction import redact_url
from runtime.redis.connection import open_redis, read_server_info
from runtime.redis.embedded import EmbeddedRedis
from runtime.redis.modules import ModuleCheck, exercise_modules

__all__ = ["demo"]


@click.command()
@click.option(
    "--keep-redis", is_flag=True, help="Leave an embedded server it started running afterwards."
)
@pass_context
def demo(ctx: Context, keep_redis: bool) -> None:
    """Start Redis (embedded unless a URL is set) and prove every module works.

    Runs a real round trip through Search, JSON, TimeSeries and Bloom and prints the outcome;
    exits with status 1 when a module is missing or misbehaves.
    """
    checks = anyio.run(_run, ctx, keep_redis)
    failed = [check.module for check in checks if not check.ok]
    if failed:
        raise click.ClickException(
            f"module check failed: {', '.join(failed)}. The runtime needs Redis 8 or Redis Stack "
            "(or the embedded server: unset REDIS_URL)."
        )
    ctx.console.print("[green]All four modules answer:[/] the Redis foundation is ready.")


async def _run(ctx: Context, keep_redis: bool) -> list[ModuleCheck]:
    settings = ctx.settings
    out = ctx.console
    if settings.redis.url is None:
        data_dir = EmbeddedRedis(settings.redis.embedded).data_dir
        out.print(f"No Redis URL configured: using the embedded Redis Stack in {data_dir}.")
    else:
        source = ctx.resolved.sources["redis.url"]
        out.print(f"Using Redis at {redact_url(settings.redis.url)} ({source}).")
    async with open_redis(settings, stop_embedded=not keep_redis) as conn:
        if conn.embedded is not None:
            verb = "Reusing the running" if conn.embedded.reused else "Started the"
            out.print(
                f"{verb} embedded server (pid {conn.embedded.pid}) at {redact_url(conn.url)}; "
                f"start-up to first PING took {conn.embedded.startup_ms:.0f} ms."
            )
        info = await read_server_info(conn.client, conn.url)
        out.print(f"Server: Redis {info.version} ({info.mode}).")
        checks = await exercise_modules(conn.client, conn.keys, info)
        out.print(_table(checks))
        if conn.started_embedded and keep_redis:
            out.print("Leaving the embedded server running (--keep-redis).")
        elif conn.started_embedded:
            out.print("Stopping the embedded server it started…")
    return checks


def _table(checks: list[ModuleCheck]) -> Table:
    table = Table("module", "version", "result", "time", "what ran", highlight=False)
    for check in checks:
        result = "[green]ok[/]" if check.ok else "[red]FAILED[/]"
        version = str(check.version) if check.loaded else "-"
        table.add_row(check.module, version, result, f"{check.ms:.1f} ms", check.detail)
    return table
