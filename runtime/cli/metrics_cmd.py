"""``agents-worker metrics``: the fleet's figures in two tables.

Per agent: runs completed and failed, average run latency, tokens in and out, model and tool
calls. Per inbox: length, lag, pending, oldest pending age and dead letters (read live, as
``status`` does), with the retries and reclaims counted for it. Without ``--window`` the
figures are the fleet's totals since the deployment began (a hash every process adds to);
with ``--window 15m`` they are summed from the TimeSeries history of that window, which needs
the TimeSeries module (said plainly when it is missing).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import click
from rich.table import Table
from rich.text import Text

from runtime.cli.app import Context, existing_redis, pass_context
from runtime.cli.observe_view import duration_ms, parse_window

if TYPE_CHECKING:
    from runtime.observability.timeseries import MetricsStore, Total
    from runtime.redis.connection import Connection
    from runtime.streams import StreamStatus

__all__ = ["metrics"]

AGENT_COUNTERS = (
    "runs_completed", "runs_failed", "model_calls", "tokens_in", "tokens_out", "tool_calls",
)  # fmt: skip
TARGET_COUNTERS = ("retries", "reclaims", "dead_letters")
LATENCY = "run_latency"
HISTORY_OFF = (
    "Metrics history is off: this Redis has no TimeSeries module. The figures are the "
    "fleet's totals since the deployment began; --window and the dashboard's charts need "
    "TimeSeries (Redis 8, or Redis Stack)."
)


@dataclass
class Figures:
    """What the tables show: per agent and per target, counter name → value."""

    agents: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    targets: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))


@click.command()
@click.option(
    "--window",
    callback=parse_window,
    metavar="DURATION",
    help="Only the last DURATION (90s, 15m, 2h, 1d), from the TimeSeries history "
    "[default: totals since the deployment began].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_context
def metrics(ctx: Context, window: float | None, as_json: bool) -> None:
    """Fleet figures: runs, latency, tokens, calls per agent; lag, pending, DLQ per inbox."""
    anyio.run(_metrics, ctx, window, as_json)


async def _metrics(ctx: Context, window: float | None, as_json: bool) -> None:
    from runtime.observability.timeseries import MetricsStore

    async with existing_redis(ctx) as conn:
        store = MetricsStore(conn.client, conn.keys)
        history = await store.history_available()
        totals = await store.totals()
        used = window if history else None
        figures = await _windowed(store, totals, used) if used else _from_totals(totals)
        inboxes = await _inboxes(conn)
    if as_json:
        click.echo(json.dumps(_doc(figures, inboxes, history, used), indent=2))
        return
    if not history:
        ctx.errors.print(f"[yellow]{HISTORY_OFF}[/]")
    if not totals:
        ctx.console.print(
            "No metrics recorded yet (no worker has written any, or observability.metrics is off)."
        )
    else:
        ctx.console.print(_agents_table(figures, used))
    ctx.console.print(_inbox_table(figures, inboxes, used))


def _from_totals(totals: list[Total]) -> Figures:
    figures = Figures()
    wanted = {*AGENT_COUNTERS, f"{LATENCY}_sum", f"{LATENCY}_count"}
    for total in totals:
        agent, target = total.labels.get("agent"), total.labels.get("target")
        if agent and total.metric in wanted:
            row = figures.agents[agent]
            row[total.metric] = row.get(total.metric, 0.0) + total.value
        if target and total.metric in TARGET_COUNTERS:
            row = figures.targets[target]
            row[total.metric] = row.get(total.metric, 0.0) + total.value
    return figures


async def _windowed(store: MetricsStore, totals: list[Total], window: float) -> Figures:
    """The counters of the last *window* seconds, per agent and per target, from TimeSeries
    (the totals name the agents and targets there are)."""
    end = int(time.time() * 1000)
    start = end - int(window * 1000)
    agents = sorted({t.labels["agent"] for t in totals if t.labels.get("agent")})
    targets = sorted({t.labels["target"] for t in totals if t.labels.get("target")})
    figures = Figures()

    async def summed(metric: str, labels: dict[str, str], stat: str = "sum") -> float:
        points = await store.range(
            metric, start, end, bucket_ms=end - start, labels=labels, reduce="sum", stat=stat
        )
        return float(sum(value for _, value in points))

    for agent in agents:
        row = figures.agents[agent]
        for metric in AGENT_COUNTERS:
            row[metric] = await summed(metric, {"agent": agent})
        row[f"{LATENCY}_sum"] = await summed(LATENCY, {"agent": agent})
        row[f"{LATENCY}_count"] = await summed(LATENCY, {"agent": agent}, "count")
    for target in targets:
        for metric in TARGET_COUNTERS:
            figures.targets[target][metric] = await summed(metric, {"target": target})
    return figures


async def _inboxes(conn: Connection) -> list[StreamStatus]:
    """Every inbox's live figures (the targets served, or found with SCAN when none is)."""
    from runtime.observability.fleet import read_targets
    from runtime.streams import find_targets, stream_status

    targets = await read_targets(conn.client, conn.keys)
    targets = targets or await find_targets(conn.client, conn.keys)
    return await stream_status(conn.client, conn.keys, targets)


def _average(row: dict[str, float]) -> float | None:
    count = row.get(f"{LATENCY}_count", 0.0)
    return row.get(f"{LATENCY}_sum", 0.0) / count if count else None


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _scope(window: float | None) -> str:
    if window is None:
        return "since the deployment began"
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if window >= seconds and window % seconds == 0:
            return f"last {window / seconds:g} {unit}"
    return f"last {window:g} s"


def _agents_table(figures: Figures, window: float | None) -> Table:
    table = Table(
        "agent", "completed", "failed", "avg latency", "tokens in", "tokens out",
        "model calls", "tool calls", title=f"Agents ({_scope(window)})", highlight=False,
    )  # fmt: skip
    for agent, row in sorted(figures.agents.items()):
        failed = row.get("runs_failed", 0.0)
        table.add_row(
            Text(agent),
            _number(row.get("runs_completed", 0.0)),
            f"[red]{_number(failed)}[/]" if failed else "0",
            duration_ms(_average(row)),
            *(_number(row.get(name, 0.0)) for name in AGENT_COUNTERS[3:5]),
            *(_number(row.get(name, 0.0)) for name in ("model_calls", "tool_calls")),
        )
    return table


def _inbox_table(figures: Figures, inboxes: list[StreamStatus], window: float | None) -> Table:
    table = Table(
        "inbox", "length", "lag", "pending", "oldest pending", "DLQ", "retries", "reclaims",
        title=f"Inboxes (now; retries and reclaims {_scope(window)})", highlight=False,
    )  # fmt: skip
    for inbox in inboxes:
        counted = figures.targets.get(inbox.target, {})
        age = inbox.oldest_pending_age_s
        table.add_row(
            Text(inbox.target),
            str(inbox.length),
            "-" if inbox.lag is None else str(inbox.lag),
            str(inbox.pending),
            "-" if age is None else duration_ms(age * 1000),
            f"[red]{inbox.dlq}[/]" if inbox.dlq else "0",
            _number(counted.get("retries", 0.0)),
            _number(counted.get("reclaims", 0.0)),
        )
    return table


def _doc(
    figures: Figures, inboxes: list[StreamStatus], history: bool, window: float | None
) -> dict[str, Any]:
    agents = [
        {
            "agent": agent,
            **{name: row.get(name, 0.0) for name in AGENT_COUNTERS},
            "avg_latency_ms": _average(row),
        }
        for agent, row in sorted(figures.agents.items())
    ]
    boxes = [
        {
            "target": inbox.target,
            "length": inbox.length,
            "lag": inbox.lag,
            "pending": inbox.pending,
            "oldest_pending_age_s": inbox.oldest_pending_age_s,
            "dlq": inbox.dlq,
            **{
                name: figures.targets.get(inbox.target, {}).get(name, 0.0)
                for name in TARGET_COUNTERS
            },
        }
        for inbox in inboxes
    ]
    return {"history": history, "window_s": window, "agents": agents, "inboxes": boxes}
