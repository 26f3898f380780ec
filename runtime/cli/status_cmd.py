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
from rich.text import Text

from runtime.cli.app import Context, existing_redis, pass_context
from runtime.cli.observe_view import STATUS_STYLE, age
from runtime.errors import RedisError
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
        watching = _Watch(ctx, client, keys, targets, interval)
        if as_json or not ctx.console.is_terminal:
            await watching.print_each(as_json)
        else:
            await watching.redraw()


class _Watch:
    """``status --watch``: a refresh every *interval* seconds; a Redis that fails is said
    (and tried again at the next refresh), it does not end the watch."""

    def __init__(
        self,
        ctx: Context,
        client: redis.asyncio.Redis,
        keys: Keys,
        targets: list[str] | None,
        interval: float,
    ) -> None:
        self.ctx, self.client, self.keys = ctx, client, keys
        self.targets, self.interval = targets, interval
        self.failure = ""
        self.last: RenderableType | None = None

    async def read(self) -> tuple[list[StreamStatus], list[FleetMember]] | None:
        try:
            return await _read(self.client, self.keys, self.targets)
        except RedisError as exc:
            self.failure = (
                f"{time.strftime('%H:%M:%S')} {exc} (trying again every {self.interval:g} s)"
            )
            return None

    async def print_each(self, as_json: bool) -> None:
        """A log or a pipe: everything printed once per interval, never redrawn."""
        while True:
            read = await self.read()
            if read is None:
                self.ctx.errors.print(self.failure, style="red", markup=False)
            elif as_json:
                click.echo(json.dumps([_doc(s) for s in read[0]]))
            else:
                self.ctx.console.print(_render(*read))
            await anyio.sleep(self.interval)

    async def redraw(self) -> None:
        """A terminal: the view redrawn in place."""
        with Live(
            self.view(await self.read()), console=self.ctx.console, auto_refresh=False
        ) as live:
            while True:
                await anyio.sleep(self.interval)
                live.update(self.view(await self.read()), refresh=True)

    def view(self, read: tuple[list[StreamStatus], list[FleetMember]] | None) -> RenderableType:
        if read is not None:
            self.last = _render(*read)
            return self.last
        failure = Text(self.failure, style="red")
        return failure if self.last is None else Group(failure, self.last)


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
            Text(s.target),
            str(s.length),
            lag,
            str(s.pending),
            oldest,
            str(s.delayed),
            dlq,
            Text(consumers or "-"),
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
        supervisor = Text(f"{member.instance} (pid {member.pid})")
        http = Text(member.http or "-")
        if not member.workers:
            table.add_row(supervisor, http, "-", "-", "-", "-", "-", "-")
        for worker in member.workers:
            style = _STATE_STYLE.get(worker.state) or STATUS_STYLE.get(worker.state, "")
            table.add_row(
                supervisor,
                http,
                Text(worker.name),
                Text(worker.state, style=style),
                str(worker.pid or "-"),
                age(worker.started_at, now, suffix=""),
                str(worker.runs),
                "-" if worker.rss_mb is None else f"{worker.rss_mb:.0f} MiB",
            )
            supervisor = http = Text()  # once per supervisor
    return table
