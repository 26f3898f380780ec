"""``agents-worker runs …``: recent agent runs, one run with its events, cancel a run.

``runs list`` reads the lifecycle feed (a bounded stream, newest first); ``runs show`` reads
the run's record and event stream; ``runs cancel`` asks the worker to stop a run.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import click
from rich.table import Table
from rich.text import Text

from runtime.cli.app import Context, existing_redis, pass_context
from runtime.cli.observe_view import age, check_id, clock, duration_ms, short, styled_status

if TYPE_CHECKING:
    import redis.asyncio

    from runtime.agents.protocol import RunEvent, RunResult
    from runtime.agents.runs import RunStore
    from runtime.observability.lifecycle import RunSummary

__all__ = ["runs_group"]

_STATUSES = ("queued", "running", "completed", "failed", "cancelled", "requeued")
_TERMINAL = ("completed", "failed", "cancelled")
_MAX_EVENTS = 10_000  # a run's event stream is trimmed to about runs.events_maxlen anyway


@click.group("runs")
def runs_group() -> None:
    """Recent agent runs: list them, show one with its events, cancel one."""


@runs_group.command("list")
@click.option("--status", type=click.Choice(_STATUSES), help="Only runs whose latest status is S.")
@click.option("--agent", help="Only runs of this agent.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def list_runs(
    ctx: Context, status: str | None, agent: str | None, limit: int, as_json: bool
) -> None:
    """List recent runs, newest first, from the lifecycle feed."""
    anyio.run(_list, ctx, status, agent, limit, as_json)


async def _list(
    ctx: Context, status: str | None, agent: str | None, limit: int, as_json: bool
) -> None:
    from runtime.observability.lifecycle import recent_runs

    async with existing_redis(ctx) as conn:
        rows = await recent_runs(
            conn.client, conn.keys, limit=limit, status=status, agent=agent, scan=_scan(limit)
        )
    if as_json:
        click.echo(json.dumps([_summary_doc(row) for row in rows], indent=2))
        return
    if not rows:
        wanted = " ".join(
            f"--{name} {value}" for name, value in (("status", status), ("agent", agent)) if value
        )
        said = f"No recent run matches {wanted}." if wanted else "No runs recorded yet."
        ctx.console.print(said, markup=False)
        return
    table = Table(
        "run", "agent", "status", "duration", "age", "session", "worker", "error",
        title="Recent runs (newest first)", highlight=False,
    )  # fmt: skip
    for row in rows:
        table.add_row(
            Text(row.run_id),
            Text(row.agent or "-"),
            styled_status(row.status),
            duration_ms(row.duration_ms),
            age(row.at),
            Text(row.session or "-"),
            Text(row.worker or "-"),
            Text(short(row.error, 50)),
        )
    ctx.console.print(table)


def _scan(limit: int) -> int:
    """Lifecycle events to read for *limit* runs (a run writes about three)."""
    return max(2000, 4 * limit)


def _summary_doc(row: RunSummary) -> dict[str, Any]:
    names = ("run_id", "agent", "status", "at", "session", "trace_id", "worker")
    doc = {name: getattr(row, name) for name in names}
    doc.update(duration_ms=row.duration_ms, error=row.error)
    return doc


@runs_group.command("show")
@click.argument("run_id", callback=check_id("run"))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def show_run(ctx: Context, run_id: str, as_json: bool) -> None:
    """Show a run's record (status, result or error, timings, session, trace) and its events."""
    anyio.run(_show, ctx, run_id, as_json)


async def _show(ctx: Context, run_id: str, as_json: bool) -> None:
    from runtime.agents.runs import RunStore

    async with existing_redis(ctx) as conn:
        store = RunStore(conn.client, conn.keys, ctx.settings.runs)
        result = await store.get(run_id)
        if result is None:
            raise click.ClickException(f"no run {run_id!r} (unknown, or its record expired)")
        extra = await _record_extras(conn.client, conn.keys.run(run_id))
        events = await _all_events(store, run_id)
    record = _record_doc(result, extra)
    if as_json:
        doc = {"run": record, "events": [_event_doc(event) for event in events]}
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    ctx.console.print(_record_table(record))
    ctx.console.print(_events_table(events, result.submitted_at))


async def _record_extras(client: redis.asyncio.Redis, key: str) -> dict[str, str]:
    """The record's fields beyond :class:`RunResult`'s: its trace, attempts, cancel mark."""
    from runtime.redis.connection import translate_errors

    names = ("trace_id", "attempts", "cancel_requested")
    with translate_errors("read a run"):
        values: list[Any] = await client.hmget(key, names)
    return {
        name: value.decode() if isinstance(value, bytes) else str(value)
        for name, value in zip(names, values, strict=True)
        if value is not None
    }


async def _all_events(store: RunStore, run_id: str) -> list[RunEvent]:
    events: list[RunEvent] = []
    after = "0-0"
    while len(events) < _MAX_EVENTS:
        batch = await store.read_events(run_id, after)
        if not batch:
            break
        events.extend(batch)
        after = batch[-1].id or after
    return events


def _record_doc(result: RunResult, extra: dict[str, str]) -> dict[str, Any]:
    import msgspec

    doc: dict[str, Any] = msgspec.to_builtins(result)
    doc["trace_id"] = extra.get("trace_id")
    doc["attempts"] = int(extra.get("attempts") or 0)
    doc["cancel_requested"] = "cancel_requested" in extra
    began, ended = result.started_at, result.finished_at
    doc["queue_wait_ms"] = (began - result.submitted_at) * 1000 if began else None
    doc["duration_ms"] = (ended - began) * 1000 if began and ended else None
    return doc


def _record_table(doc: dict[str, Any]) -> Table:
    """The record, one field a row; every value is text (run data is never markup)."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    status = styled_status(doc["status"])
    if doc["cancel_requested"] and doc["status"] not in _TERMINAL:
        status.append(" (cancel requested)")
    last = doc.get("last_agent")
    rows: list[tuple[str, str | Text]] = [
        ("run", doc["run_id"]),
        ("status", status),
        ("agent", doc["agent"] + (f" (last: {last})" if last and last != doc["agent"] else "")),
        ("session", doc.get("session_id") or "-"),
        ("trace", _trace_hint(doc)),
        ("worker", doc.get("worker") or "-"),
        ("attempts", str(doc["attempts"])),
        ("submitted", f"{clock(doc['submitted_at'])} ({age(doc['submitted_at'])})"),
        ("queue wait", duration_ms(doc["queue_wait_ms"])),
        ("run time", duration_ms(doc["duration_ms"])),
    ]
    if doc.get("usage"):
        rows.append(("usage", ", ".join(f"{k} {v}" for k, v in doc["usage"].items())))
    if doc.get("final_output") is not None:
        rows.append(("result", short(_text(doc["final_output"]), 400)))
    if doc.get("error"):
        kind = doc.get("error_type")
        error = Text(short(doc["error"], 400), style="red")
        rows.append(("error", error + Text(f" ({kind})" if kind else "")))
    for name, value in rows:
        table.add_row(name, Text(value) if isinstance(value, str) else value)
    return table


def _trace_hint(doc: dict[str, Any]) -> Text:
    if not doc["trace_id"]:
        return Text("-")
    hint = Text(f" (agents-worker trace {doc['run_id']})", style="dim")
    return Text(doc["trace_id"]) + hint


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _event_doc(event: RunEvent) -> dict[str, Any]:
    return {"id": event.id, "type": event.type, "at": event.at, "data": event.data}


def _events_table(events: list[RunEvent], since: float) -> Table:
    table = Table("at", "+", "event", "detail", title=f"Events ({len(events)})", highlight=False)
    folded = _fold_deltas(events)
    for event, count in folded:
        offset = (event.at - since) * 1000 if event.at and since else None
        table.add_row(
            clock(event.at)[11:],
            duration_ms(offset),
            _event_name(event, count),
            Text(_detail(event)),
        )
    return table


def _event_name(event: RunEvent, count: int) -> Text:
    """The event's type (``×n`` when folded); a run's terminal event in its status' colour."""
    name = event.type if count == 1 else f"{event.type} ×{count}"
    if not event.type.startswith("run."):
        return Text(name)
    status = event.type[4:]
    return styled_status(status, name) if status in _TERMINAL else Text(name, style="bold")


def _fold_deltas(events: list[RunEvent]) -> list[tuple[RunEvent, int]]:
    """Consecutive ``message.delta`` events as one row (the whole message follows them)."""
    folded: list[tuple[RunEvent, int]] = []
    for event in events:
        if folded and event.type == "message.delta" and folded[-1][0].type == "message.delta":
            folded[-1] = (folded[-1][0], folded[-1][1] + 1)
        else:
            folded.append((event, 1))
    return folded


def _detail(event: RunEvent) -> str:
    data = event.data
    if event.type == "message.delta":
        return "(streamed text)"
    if event.type == "message":
        return short(f"{data.get('agent')}: {data.get('text')}", 100)
    if event.type == "tool.called":
        return short(f"{data.get('agent')} → {data.get('tool')}({data.get('arguments')})", 100)
    if event.type == "tool.output":
        return short(f"← {data.get('output')}", 100)
    if event.type == "handoff":
        return f"{data.get('from')} → {data.get('to')}"
    if event.type[4:] in _TERMINAL and event.type.startswith("run."):
        return short(data.get("error") or "result stored", 100)  # the record above has it
    return short(json.dumps(data, default=str), 100) if data else "-"


@runs_group.command("cancel")
@click.argument("run_id", callback=check_id("run"))
@pass_context
def cancel_run(ctx: Context, run_id: str) -> None:
    """Ask for a run to stop (it ends cancelled); exit 1 when it is unknown or already over."""
    anyio.run(_cancel, ctx, run_id)


async def _cancel(ctx: Context, run_id: str) -> None:
    from runtime.agents.runs import RunStore

    async with existing_redis(ctx) as conn:
        store = RunStore(conn.client, conn.keys, ctx.settings.runs)
        before = (await store.status(run_id)).get("status")
        asked = before not in (None, *_TERMINAL) and await store.request_cancel(run_id)
        after = before if asked else (await store.status(run_id)).get("status")
    if asked and before == "queued":
        ctx.console.print(
            f"cancel requested: run {run_id} is queued; it ends cancelled, without running, "
            "when a worker takes it",
            markup=False,
        )
    elif asked:
        ctx.console.print(
            f"cancel requested: run {run_id} is {before}; its worker stops it within a moment "
            f"and it ends cancelled (`agents-worker runs show {run_id}`)",
            markup=False,
        )
    elif after is None:
        raise click.ClickException(f"no run {run_id!r} (unknown, or its record expired)")
    else:
        raise click.ClickException(f"run {run_id} already ended ({after}): nothing to cancel")
