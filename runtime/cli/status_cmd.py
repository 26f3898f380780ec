"""``agents-worker status``: what every inbox holds, who consumes it, what is dead-lettered."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import click
from rich.console import Group
from rich.live import Live
from rich.table import Table

from runtime.cli.app import Context, existing_redis, pass_context
from runtime.streams import StreamStatus, stream_status

__all__ = ["status"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option("--interval", type=float, default=2.0, show_default=True)
@click.option("--target", "targets", multiple=True, help="Only these targets (repeatable).")
@pass_context
def status(
    ctx: Context, as_json: bool, watch: bool, interval: float, targets: tuple[str, ...]
) -> None:
    """Per inbox stream: length, lag, pending, oldest pending age, consumers, delayed, DLQ."""
    anyio.run(_status, ctx, as_json, watch, interval, list(targets) or None)


async def _status(
    ctx: Context, as_json: bool, watch: bool, interval: float, targets: list[str] | None
) -> None:
    async with existing_redis(ctx) as conn:
        streams = await stream_status(conn.client, conn.keys, targets)
        if as_json:
            click.echo(json.dumps([_doc(s) for s in streams], indent=2))
            return
        if not watch:
            ctx.console.print(_render(streams))
            return
        with Live(_render(streams), console=ctx.console, auto_refresh=False) as live:
            while True:
                await anyio.sleep(interval)
                streams = await stream_status(conn.client, conn.keys, targets)
                live.update(_render(streams), refresh=True)


def _doc(stream: StreamStatus) -> dict[str, Any]:
    return {
        "target": stream.target,
        "stream": stream.key,
        "length": stream.length,
        "lag": stream.lag,
        "pending": stream.pending,
        "oldest_pending_age_s": stream.oldest_pending_age_s,
        "delayed": stream.delayed,
        "dlq": stream.dlq,
        "groups": [
            {
                "name": g.name,
                "lag": g.lag,
                "pending": g.pending,
                "consumers": [
                    {"name": c.name, "pending": c.pending, "idle_s": c.idle_s} for c in g.consumers
                ],
            }
            for g in stream.groups
        ],
    }


def _render(streams: list[StreamStatus]) -> Group:
    table = Table(
        "target", "length", "lag", "pending", "oldest pending", "delayed", "DLQ", "consumers",
        title=f"Inbox streams at {time.strftime('%H:%M:%S')}", highlight=False,
    )  # fmt: skip
    for s in streams:
        consumers = ", ".join(
            f"{c.name} ({c.pending} pending, idle {c.idle_s:.0f} s)"
            for g in s.groups
            for c in g.consumers
        )
        age = "-" if s.oldest_pending_age_s is None else f"{s.oldest_pending_age_s:.1f} s"
        dlq = f"[red]{s.dlq}[/]" if s.dlq else "0"
        lag = "-" if not s.groups else "?" if s.lag is None else str(s.lag)
        table.add_row(
            s.target, str(s.length), lag, str(s.pending), age, str(s.delayed), dlq, consumers or "-"
        )
    if not streams:
        return Group("No inbox streams yet: nothing was enqueued and no worker has started.")
    return Group(table)
