"""A run's page (record, events, span waterfall) and a dead letter's row, read from Redis.

Bounded: the run's own record, at most ``EVENTS_MAX`` of its events and its trace's two
hashes; the waterfall draws at most ``SPANS_MAX`` spans.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio

from runtime.agents.protocol import RunEvent, RunResult
from runtime.agents.runs import RunStore
from runtime.dlq import DeadLetter, envelope_of
from runtime.keys import Keys
from runtime.observability.spans import SpanRecord
from runtime.observability.trace_store import TraceStore, iter_tree, span_tree
from runtime.redis.connection import translate_errors
from runtime.web.dashboard.bounds import EVENTS_MAX, SPANS_MAX
from runtime.web.dashboard.views import EventRow, LetterRow, RunDetail, RunRecord, SpanRow

__all__ = ["clip", "fold_events", "letter_row", "run_detail", "waterfall"]

_TEXT_MAX = 2000
_ITEMS_MAX = 50
_DEPTH_MAX = 5
_DELTA = "message.delta"
_TERMINAL = frozenset({"completed", "failed", "cancelled"})


async def run_detail(
    client: redis.asyncio.Redis, keys: Keys, runs: RunStore, run_id: str
) -> RunDetail:
    """What *run_id*'s page shows (its ``run`` is ``None`` when unknown or expired)."""
    result = await runs.get(run_id)
    with translate_errors("read a run"):
        async with client.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.run(run_id), ["attempts", "trace_id", "cancel_requested"])
            pipe.xlen(keys.run_events(run_id))
            (attempts, trace_id, cancel), events_total = await pipe.execute()
    events = await runs.read_events(run_id, count=EVENTS_MAX)
    tid = _text(trace_id) or None
    store = TraceStore(client, keys)
    trace = await store.get_trace(tid) if tid else None
    spans = await store.get_spans(tid) if tid else []
    ended = result is not None and result.status in _TERMINAL
    rows, total_ms = waterfall(spans, None if ended else time.time())
    record = None
    if result is not None:
        record = _record(result, _text(attempts), tid, cancel is not None)
    return RunDetail(
        run_id=run_id,
        run=record,
        trace_id=tid,
        trace=trace,
        spans=rows,
        spans_total=len(spans),
        trace_ms=total_ms,
        events=fold_events(events),
        events_total=int(events_total),
        events_read=len(events),
    )


def _record(result: RunResult, attempts: str, trace_id: str | None, cancel: bool) -> RunRecord:
    return RunRecord(
        run_id=result.run_id,
        status=result.status,
        agent=result.agent,
        session_id=result.session_id,
        final_output=clip(result.final_output),
        last_agent=result.last_agent,
        usage=result.usage,
        error=result.error,
        error_type=result.error_type,
        worker=result.worker,
        submitted_at=result.submitted_at,
        started_at=result.started_at,
        finished_at=result.finished_at,
        attempts=int(attempts) if attempts.isdigit() else None,
        trace_id=trace_id,
        cancel_requested=cancel,
    )


def waterfall(
    spans: list[SpanRecord], now: float | None, *, limit: int = SPANS_MAX
) -> tuple[list[SpanRow], float]:
    """*spans* in tree order, each placed from the trace's first start, and the trace's
    length in ms. A span still running lasts until *now* (``None``: until the last end seen,
    for a run that is over: a span whose end was never written does not grow forever)."""
    if not spans:
        return [], 0.0
    begin = min(span.start for span in spans)
    ends = [span.end for span in spans if span.end is not None]
    horizon = now if now is not None else max(ends, default=begin)
    rows = []
    for node in iter_tree(span_tree(spans))[:limit]:
        span = node.span
        end = span.end if span.end is not None else max(horizon, span.start)
        rows.append(
            SpanRow(
                span_id=span.span_id,
                parent_id=span.parent_id,
                name=span.name,
                kind=span.kind,
                start=span.start,
                end=span.end,
                status=span.status,
                error=span.error,
                attrs=clip(span.attrs),
                depth=node.depth,
                offset_ms=(span.start - begin) * 1000,
                duration_ms=max(0.0, end - span.start) * 1000,
            )
        )
    finish = max([*ends, horizon])
    return rows, max(0.0, finish - begin) * 1000


def fold_events(events: list[RunEvent]) -> list[EventRow]:
    """Event rows; consecutive text deltas are one row (their text joined, *count* of them)."""
    rows: list[EventRow] = []
    for event in events:
        last = rows[-1] if rows else None
        if event.type == _DELTA and last is not None and last.type == _DELTA:
            text = str(last.data.get("text", "")) + str(event.data.get("delta", ""))
            rows[-1] = EventRow(
                id=last.id,
                type=_DELTA,
                at=last.at,
                data={"text": text[:_TEXT_MAX]},
                count=last.count + 1,
            )
            continue
        data = {"text": str(event.data.get("delta", ""))} if event.type == _DELTA else event.data
        rows.append(EventRow(id=event.id, type=event.type, at=event.at, data=clip(data)))
    return rows


def letter_row(letter: DeadLetter) -> LetterRow:
    """A dead letter as a table row (with its agent run's id when it carried one)."""
    envelope = envelope_of(letter)
    payload = envelope.payload if envelope is not None else None
    run_id = payload.get("run_id") if isinstance(payload, dict) else None
    return LetterRow(
        id=letter.id,
        reason=letter.reason,
        detail=letter.detail[:_TEXT_MAX],
        error=letter.error[:_TEXT_MAX],
        task_id=letter.task_id,
        run_id=run_id if isinstance(run_id, str) else None,
        attempts=letter.attempts,
        deliveries=letter.deliveries,
        failed_at=letter.failed_at,
    )


def clip(value: Any, depth: int = 0) -> Any:
    """*value* cut to what a page shows: long texts, long lists and deep nesting."""
    if isinstance(value, str):
        return value if len(value) <= _TEXT_MAX else value[: _TEXT_MAX - 1] + "…"
    if depth >= _DEPTH_MAX and isinstance(value, dict | list):
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[:_ITEMS_MAX]
        return {str(k): clip(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [clip(v, depth + 1) for v in value[:_ITEMS_MAX]]
    return value


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
