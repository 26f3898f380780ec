"""``agents-worker status``: what every inbox holds, who consumes it, what is dead-lettered,
and the fleet of supervisors and their workers.

``--watch`` redraws it every ``--interval`` seconds until Ctrl-C (in place on a terminal, one
print per interval otherwise). Each refresh reads the targets workers serve
(:func:`~runtime.observability.fleet.read_targets`, one command) and scans for inbox streams
only while that set is empty; a single ``status`` also scans, so that a target nobody serves
yet is shown too.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import anyio
import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table

from runtime.cli.app import Context, existing_redis, pass_context
from runtime.cli.observe_view import STATUS_STYLE, age
from runtime.streams import StreamStatus, find_targets, stream_status

if TYPE_CHECKING:
    import redis.asyncio

    from runtime.keys import Keys
    from runtime.observability.fleet import FleetMember

__all__ = ["status"]

_STATE_STYLE = {
    "starting": "cyan",
    "ready": "green",
    "busy": "yellow",
    "paused": "red",
    "draining": "magenta",
    "stopped": "dim",
}


@click.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (one line per refresh with --watch)."
)
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes of --watch.",
)
@click.option("--target", "targets", multiple=True, help="Only these targets (repeatable).")
@pass_context
def status(
    ctx: Context, as_json: bool, watch: bool, interval: float, targets: tuple[str, ...]
) -> None:
    """Per inbox stream: length, lag, pending, oldest pending age, consumers, delayed, DLQ.

    Below it, the fleet: each supervisor's workers with their state, pid, uptime, runs and
    memory. With --watch the view is redrawn every --interval seconds until Ctrl-C (printed
    again each time when the output is not a terminal, one JSON line each with --json).
    """
    anyio.run(_status, ctx, as_json, watch, interval, list(targets) or None)


async def _status(
    ctx: Context, as_json: bool, watch: bool, interval: float, targets: list[str] | None
) -> None:
    async with existing_redis(ctx) as conn:
        client, keys = conn.client, conn.keys
        if not watch:
            streams = await stream_status(client, keys, targets or await _all(client, keys))
            if as_json:
                click.echo(json.dumps([_doc(s) for s in streams], indent=2))
            else:
                ctx.console.print(_render(streams, await _fleet(client, keys)))
            return
        if as_json or not ctx.console.is_terminal:
            while True:  # a log or a pipe: one document per interval, never redrawn
                streams, fleet = await _read(client, keys, targets)
                if as_json:
                    click.echo(json.dumps([_doc(s) for s in streams]))
                else:
                    ctx.console.print(_render(streams, fleet))
                await anyio.sleep(interval)
        view = _render(*await _read(client, keys, targets))
        with Live(view, console=ctx.console, auto_refresh=False) as live:
            while True:
                await anyio.sleep(interval)
                live.update(_render(*await _read(client, keys, targets)), refresh=True)


async def _all(client: redis.asyncio.Redis, keys: Keys) -> list[str]:
    """Every target: those served, and any other inbox stream (found with SCAN)."""
    from runtime.observability.fleet import read_targets

    served = await read_targets(client, keys)
    return sorted(set(served) | set(await find_targets(client, keys)))


async def _read(
    client: redis.asyncio.Redis, keys: Keys, targets: list[str] | None
) -> tuple[list[StreamStatus], list[FleetMember]]:
    """One refresh: no SCAN while workers have said which targets they serve."""
    from runtime.observability.fleet import read_targets

    if not targets:
        targets = await read_targets(client, keys) or await find_targets(client, keys)
    return await stream_status(client, keys, targets), await _fleet(client, keys)


async def _fleet(client: redis.asyncio.Redis, keys: Keys) -> list[FleetMember]:
    from runtime.observability.fleet import read_fleet

    return await read_fleet(client, keys)


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


def _render(streams: list[StreamStatus], fleet: list[FleetMember]) -> Group:
    parts: list[RenderableType] = [_streams_table(streams)]
    if fleet:
        parts.append(_fleet_table(fleet))
    return Group(*parts)


def _streams_table(streams: list[StreamStatus]) -> RenderableType:
    if not streams:
        return "No inbox streams yet: nothing was enqueued and no worker has started."
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
        oldest = "-" if s.oldest_pending_age_s is None else f"{s.oldest_pending_age_s:.1f} s"
        dlq = f"[red]{s.dlq}[/]" if s.dlq else "0"
        lag = "-" if not s.groups else "?" if s.lag is None else str(s.lag)
        table.add_row(
            s.target,
            str(s.length),
            lag,
            str(s.pending),
            oldest,
            str(s.delayed),
            dlq,
            consumers or "-",
        )
    return table


def _fleet_table(fleet: list[FleetMember]) -> Table:
    workers = sum(len(member.workers) for member in fleet)
    table = Table(
        "supervisor", "http", "worker", "state", "pid", "up", "runs", "RSS",
        title=f"Fleet: {len(fleet)} supervisor(s), {workers} worker(s)", highlight=False,
    )  # fmt: skip
    now = time.time()
    for member in fleet:
        supervisor, http = f"{member.instance} (pid {member.pid})", member.http or "-"
        if not member.workers:
            table.add_row(supervisor, http, "-", "-", "-", "-", "-", "-")
        for worker in member.workers:
            style = _STATE_STYLE.get(worker.state) or STATUS_STYLE.get(worker.state, "")
            table.add_row(
                supervisor,
                http,
                worker.name,
                f"[{style}]{worker.state}[/]" if style else worker.state,
                str(worker.pid or "-"),
                age(worker.started_at, now, suffix=""),
                str(worker.runs),
                "-" if worker.rss_mb is None else f"{worker.rss_mb:.0f} MiB",
            )
            supervisor = http = ""  # once per supervisor
    return table
