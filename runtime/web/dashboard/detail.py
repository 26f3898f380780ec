"""A run's page (record, events, span waterfall) and a dead letter's row, read from Redis.

Bounded: the run's own record, at most ``EVENTS_MAX`` of its events, its trace's summary and
at most ``SPANS_MAX`` of its spans (``TraceStore.read_spans``).
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio

from runtime.agents.protocol import RunEvent, RunResult
from runtime.agents.records import decode_events, decode_result
from runtime.dlq import DeadLetter, envelope_of
from runtime.keys import Keys
from runtime.observability.spans import SpanRecord, TraceSummary
from runtime.observability.trace_store import TraceStore, iter_tree, span_tree
from runtime.redis.connection import translate_errors
from runtime.web.dashboard.bounds import EVENTS_MAX, SPANS_MAX
from runtime.web.dashboard.views import EventRow, LetterRow, RunDetail, RunRecord, SpanRow

__all__ = ["UNREADABLE", "clip", "fold_events", "letter_row", "run_detail", "waterfall"]

UNREADABLE = "event.unreadable"
"""The type of an event row standing for an event that cannot be read."""

_TEXT_MAX = 2000
_WHY_MAX = 300
_ITEMS_MAX = 50
_DEPTH_MAX = 5
_DELTA = "message.delta"
_TERMINAL = frozenset({"completed", "failed", "cancelled"})


async def run_detail(client: redis.asyncio.Redis, keys: Keys, run_id: str) -> RunDetail:
    """What *run_id*'s page shows (its ``run`` is ``None`` when unknown or expired).

    What cannot be read is shown as such, never an error: a record field that does not
    decode is left out (and named in ``problems``), an event that does not decode is a row
    of type ``event.unreadable``.
    """
    stream = keys.run_events(run_id)
    with translate_errors("read a run"):
        async with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.run(run_id))
            pipe.xlen(stream)
            pipe.xrange(stream, "-", "+", count=EVENTS_MAX)
            raw, events_total, entries = await pipe.execute()
    fields = {_text(k): _text(v) for k, v in (raw or {}).items()}
    problems: list[str] = []
    record = _record(run_id, fields, problems) if fields else None
    events = _events(stream, entries or [], problems)
    tid = fields.get("trace_id") or None
    trace, spans, spans_total = await _trace(client, keys, tid)
    rows, total_ms = waterfall(spans, None)
    return RunDetail(
        run_id=run_id,
        run=record,
        running=record is not None and record.status not in _TERMINAL,
        now=time.time(),
        trace_id=tid,
        trace=trace,
        spans=rows,
        spans_total=spans_total,
        spans_read=len(spans),
        trace_ms=total_ms,
        events=fold_events(events),
        events_total=int(events_total),
        events_read=len(events),
        problems=problems,
    )


async def _trace(
    client: redis.asyncio.Redis, keys: Keys, tid: str | None
) -> tuple[TraceSummary | None, list[SpanRecord], int]:
    """The trace's summary, at most ``SPANS_MAX`` of its spans and how many it holds."""
    if tid is None:
        return None, [], 0
    store = TraceStore(client, keys)
    trace = await store.get_trace(tid)
    spans, total = await store.read_spans(tid, SPANS_MAX)
    return trace, spans, total


def _record(run_id: str, fields: dict[str, str], problems: list[str]) -> RunRecord:
    """The record from its hash's *fields*; a field that does not decode is left out and
    named in *problems*."""
    result, bad = _result(run_id, fields)
    problems.extend(
        f"the run's record: field {name!r} is unreadable ({error})" for name, error in bad
    )
    attempts = fields.get("attempts", "")
    tid = fields.get("trace_id") or None
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
        attempts=int(attempts) if attempts.isascii() and attempts.isdigit() else None,
        trace_id=tid,
        cancel_requested="cancel_requested" in fields,
    )


def _result(run_id: str, fields: dict[str, str]) -> tuple[RunResult, list[tuple[str, str]]]:
    """The record decoded, and the fields that do not decode (name, why)."""
    try:
        return decode_result(run_id, fields), []
    except Exception:  # any failure (not only ValueError): found field by field below
        pass
    bad: list[tuple[str, str]] = []
    for name, value in fields.items():
        try:
            decode_result(run_id, {name: value})
        except Exception as exc:
            bad.append((name, _why(exc)))
    unreadable = {name for name, _ in bad}
    good = {name: value for name, value in fields.items() if name not in unreadable}
    return decode_result(run_id, good), bad


def _events(stream: str, entries: list[Any], problems: list[str]) -> list[RunEvent]:
    """The events of *entries* (``XRANGE``); one that does not decode is an
    ``event.unreadable`` event saying why, and *problems* says how many there are."""
    events: list[RunEvent] = []
    bad = 0
    for entry_id, fields in entries:
        raw_id = entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()
        try:
            events.extend(decode_events([(stream, [(raw_id, fields)])]))
        except Exception as exc:
            bad += 1
            events.append(_unreadable(raw_id.decode(errors="replace"), exc))
    if bad:
        problems.append(f"{bad} of the run's events are unreadable (rows {UNREADABLE!r})")
    return events


def _unreadable(entry_id: str, exc: BaseException) -> RunEvent:
    millis = entry_id.partition("-")[0]
    at = int(millis) / 1000 if millis.isascii() and millis.isdigit() else 0.0
    return RunEvent(type=UNREADABLE, data={"error": _why(exc)}, at=at, id=entry_id)


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _WHY_MAX else text[: _WHY_MAX - 1] + "…"


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
