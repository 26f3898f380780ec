"""``agents-worker redis …``: set up, start, inspect and stop the embedded Redis Stack."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import anyio
import click
from rich.table import Table

from runtime.cli.app import Context, pass_context
from runtime.redaction import redact_url
from runtime.redis.connection import (
    ServerInfo,
    create_client,
    read_server_info,
    translate_errors,
)
from runtime.redis.embedded import EmbeddedRedis, ServerStatus
from runtime.settings import Settings

__all__ = ["redis_group"]

# `status` exit code when no server is running (as `systemctl status` does).
EXIT_NOT_RUNNING = 3


@click.group("redis")
def redis_group() -> None:
    """Manage the embedded Redis Stack server (Search, JSON, TimeSeries, Bloom).

    Nothing here starts a server when a Redis URL is configured (REDIS_URL,
    AGENTS_WORKER_REDIS_URL, --redis-url or redis.url).
    """


def _external(ctx: Context) -> str | None:
    """The configured URL, after telling the user no embedded server is involved."""
    url = ctx.settings.redis.url
    if url is not None:
        source = ctx.resolved.sources["redis.url"]
        ctx.errors.print(
            f"Redis URL {redact_url(url)} is configured ({source}): "
            "no embedded server is started or stopped."
        )
    return url


async def _server_info(settings: Settings, url: str) -> tuple[ServerInfo, float, dict[str, Any]]:
    client = create_client(settings.redis, url)
    try:
        with translate_errors("read the server status", url):
            began = time.perf_counter()
            await client.ping()
            ping_ms = (time.perf_counter() - began) * 1000
            info = await read_server_info(client, url)
            memory = await client.info("memory")
            persistence = await client.info("persistence")
    finally:
        await client.aclose()
    extra = {
        "used_memory": memory.get("used_memory_human"),
        "aof_enabled": bool(persistence.get("aof_enabled")),
    }
    return info, ping_ms, extra


@redis_group.command()
@pass_context
def setup(ctx: Context) -> None:
    """Check the bundled server and fetch OpenSSL 1.1 for it if the system lacks it."""
    if _external(ctx) is not None:
        return
    server = EmbeddedRedis(ctx.settings.redis.embedded)
    ctx.console.print("Checking the embedded Redis Stack server…")
    binary, library_dir = server.prepare()
    ctx.console.print(f"  server:      {binary}")
    where = "from the system" if library_dir is None else f"from {library_dir}"
    ctx.console.print(f"  OpenSSL 1.1: {where}")
    ctx.console.print("[green]Ready:[/] `agents-worker redis start` will work.")


@redis_group.command()
@pass_context
def start(ctx: Context) -> None:
    """Start the embedded server in the background (or report the running one)."""
    if _external(ctx) is not None:
        return
    server = EmbeddedRedis(ctx.settings.redis.embedded)
    status = server.start()
    if status.reused:
        ctx.console.print(f"Embedded Redis is already running (pid {status.pid}).")
    else:
        ctx.console.print(
            f"Started embedded Redis Stack (pid {status.pid}) in {status.startup_ms:.0f} ms; "
            f"data in {status.data_dir}."
        )
    ctx.console.print(f"URL: {redact_url(status.url)}")


@redis_group.command()
@pass_context
def stop(ctx: Context) -> None:
    """Stop the embedded server (its append-only file is flushed first)."""
    if _external(ctx) is not None:
        return
    server = EmbeddedRedis(ctx.settings.redis.embedded)
    if server.stop():
        ctx.console.print(f"Stopped the embedded Redis in {server.data_dir}.")
    else:
        ctx.console.print(f"No embedded Redis is running in {server.data_dir}.")


@redis_group.command()
@pass_context
def url(ctx: Context) -> None:
    """Print the Redis URL in use (for `export REDIS_URL=$(agents-worker redis url)`)."""
    configured = ctx.settings.redis.url
    if configured is not None:
        click.echo(configured)
        return
    status = EmbeddedRedis(ctx.settings.redis.embedded).status()
    if status is None:
        raise click.ClickException(
            "no embedded Redis is running; start one with `agents-worker redis start`"
        )
    click.echo(status.url)


@redis_group.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Show the server: address, version, modules, start-up time, memory.

    Exits with status 3 when the embedded server is not running.
    """
    embedded: ServerStatus | None = None
    url = ctx.settings.redis.url
    if url is None:
        embedded = EmbeddedRedis(ctx.settings.redis.embedded).status()
        if embedded is None:
            if as_json:
                click.echo(json.dumps({"running": False, "embedded": True}))
            else:
                ctx.console.print("The embedded Redis is not running.")
            sys.exit(EXIT_NOT_RUNNING)
        url = embedded.url
    info, ping_ms, extra = anyio.run(_server_info, ctx.settings, url)
    doc: dict[str, Any] = {
        "running": True,
        "embedded": embedded is not None,
        "url": redact_url(url),
        "version": info.version,
        "mode": info.mode,
        "modules": info.modules,
        "ping_ms": round(ping_ms, 3),
        **extra,
    }
    if embedded is not None:
        doc |= {
            "pid": embedded.pid,
            "data_dir": str(embedded.data_dir),
            "uptime_s": round(time.time() - embedded.state.started_at, 1),
            "startup_ms": round(embedded.startup_ms, 1),
        }
    if as_json:
        click.echo(json.dumps(doc))
        return
    _print_status(ctx, doc)


def _print_status(ctx: Context, doc: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    kind = "embedded Redis Stack" if doc["embedded"] else "external Redis"
    table.add_row("server", f"{kind}, Redis {doc['version']} ({doc['mode']})")
    table.add_row("url", doc["url"])
    if doc["embedded"]:
        table.add_row("pid", str(doc["pid"]))
        table.add_row("data dir", doc["data_dir"])
        table.add_row("uptime", f"{doc['uptime_s']:.0f} s")
        table.add_row("start-up to first PING", f"{doc['startup_ms']:.0f} ms")
    modules = ", ".join(f"{name} {version}" for name, version in doc["modules"].items())
    table.add_row("modules", modules or "none (plain Redis)")
    table.add_row("ping", f"{doc['ping_ms']:.2f} ms")
    table.add_row("memory", str(doc["used_memory"]))
    table.add_row("append-only file", "on" if doc["aof_enabled"] else "off")
    ctx.console.print(table)
