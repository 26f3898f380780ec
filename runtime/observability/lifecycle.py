"""The run lifecycle feed: one bounded stream of what happened to every agent run.

Each event is one entry of ``keys.events()`` (``XADD … MAXLEN ~ observability.events_maxlen``)
with string fields ``run``, ``agent``, ``status`` (``queued``, ``running``, ``completed``,
``failed``, ``cancelled``, ``requeued``), ``at`` (Unix seconds) and, when known, ``session``,
``trace`` (the run's 32-hex trace id), ``worker``, ``duration_ms`` and ``error`` (at most
:data:`MAX_ERROR` characters). Writers queue an event on the pipeline of a write they make
anyway (:func:`append_lifecycle`): the submit queues ``queued``, the worker ``running`` with
the write that marks the run's record running, and the terminal status with the run's result.
A writer whose result the record refused (the run had ended: another attempt's outcome or a
dead letter's stands) appends the record's own status after it (:func:`recorded_event`), so
the feed's latest word on a run is always the record's.

Readers get one row per run, its latest status (:func:`recent_runs`), from a bounded read of
the newest entries: never ``KEYS`` or ``SCAN``, whatever the number of runs in Redis::

    for run in await recent_runs(client, keys, limit=20, status="failed"):
        print(run.run_id, run.agent, run.error)
"""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec
import redis.asyncio

from runtime.keys import Keys

__all__ = [
    "MAX_ERROR",
    "STATUSES",
    "LifecycleEvent",
    "LifecycleStatus",
    "RunSummary",
    "append_lifecycle",
    "recent_runs",
    "recorded_event",
]

LifecycleStatus = Literal["queued", "running", "completed", "failed", "cancelled", "requeued"]
STATUSES: frozenset[str] = frozenset(
    {"queued", "running", "completed", "failed", "cancelled", "requeued"}
)
MAX_ERROR = 300
"""Characters of an error the feed keeps (the run's record keeps it whole)."""

_TERMINAL = frozenset({"completed", "failed", "cancelled"})
_PAGE = 500


class LifecycleEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One change of a run's status, as the feed stores it."""

    run: str
    agent: str
    status: LifecycleStatus
    at: float = 0.0
    """Unix seconds; 0: now, by the writer's clock."""
    session: str | None = None
    trace: str | None = None
    worker: str | None = None
    duration_ms: float | None = None
    error: str | None = None


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A run as the feed last saw it (its latest event)."""

    run_id: str
    agent: str
    status: str
    at: float
    session: str | None = None
    trace_id: str | None = None
    worker: str | None = None
    duration_ms: float | None = None
    error: str | None = None


def append_lifecycle(pipe: Any, keys: Keys, maxlen: int, event: LifecycleEvent) -> None:
    """Queue the XADD of *event* on *pipe* (a redis-py pipeline or a
    :class:`~runtime.redis.connection.Batch`); the stream is trimmed to about *maxlen*."""
    at = event.at or time.time()
    command: list[Any] = ["XADD", keys.events(), "MAXLEN", "~", maxlen, "*"]
    command += ["run", event.run, "agent", event.agent, "status", event.status, "at", repr(at)]
    if event.session:
        command += ["session", event.session]
    if event.trace:
        command += ["trace", event.trace]
    if event.worker:
        command += ["worker", event.worker]
    if event.duration_ms is not None:
        command += ["duration_ms", f"{event.duration_ms:.3f}"]
    if event.error:
        error = event.error
        command += ["error", error if len(error) <= MAX_ERROR else error[: MAX_ERROR - 1] + "…"]
    pipe.execute_command(*command)


def recorded_event(run: str, record: dict[str, str]) -> LifecycleEvent | None:
    """The event that restates what a run's *record* (its hash's fields, as text) says of
    it: its outcome when it ended, at its end time; ``requeued`` when it no longer says so
    (a replay put it back: the feed follows its next attempt); ``None`` when the record is
    gone or says nothing usable."""
    status = record.get("status")
    if not status or status not in STATUSES:
        return None
    ended = status in _TERMINAL
    started, finished = _number(record.get("started_at")), _number(record.get("finished_at"))
    duration = (finished - started) * 1000 if ended and started and finished else None
    return LifecycleEvent(
        run=run,
        agent=record.get("agent", ""),
        status=status if ended else "requeued",  # type: ignore[arg-type]
        at=(finished or 0.0) if ended else 0.0,
        session=record.get("session_id") or None,
        trace=record.get("trace_id") or None,
        worker=record.get("worker") or None,
        duration_ms=duration,
        error=(record.get("error") or None) if ended else None,
    )


class _Row:
    """A run seen while reading newest first: its latest event, and whether a ``requeued``
    event was met (a terminal event older than it still counts)."""

    __slots__ = ("requeued", "summary")

    def __init__(self, summary: RunSummary) -> None:
        self.summary = summary
        self.requeued = summary.status == "requeued"


async def recent_runs(
    client: redis.asyncio.Redis,
    keys: Keys,
    *,
    limit: int = 50,
    status: str | None = None,
    agent: str | None = None,
    scan: int = 2000,
) -> list[RunSummary]:
    """The latest runs, newest first, one row per run with its latest status.

    Reads at most *scan* events (``XREVRANGE``, in pages), so it costs the same with 100 or
    100,000 runs in Redis; a run whose events are all older than that is not listed.
    *status* and *agent* filter on the run's latest status and its agent. A ``running`` or
    ``queued`` event written after the run's terminal one (a delivery of an entry whose run
    had ended) does not hide that outcome; a ``requeued`` one (a replay) does.
    """
    rows: dict[str, _Row] = {}
    order: list[str] = []
    high = "+"
    left = scan
    while left > 0:
        count = min(_PAGE, left)
        page: Any = await client.xrevrange(keys.events(), high, "-", count=count)
        for _entry_id, fields in page:
            _fold(rows, order, _summary(fields))
        left -= len(page)
        if len(page) < count:
            break
        high = f"({_text(page[-1][0])}"
    chosen = []
    for run_id in order:
        summary = rows[run_id].summary
        if status is not None and summary.status != status:
            continue
        if agent is not None and summary.agent != agent:
            continue
        chosen.append(summary)
        if len(chosen) >= limit:
            break
    return chosen


def _fold(rows: dict[str, _Row], order: list[str], summary: RunSummary | None) -> None:
    """Add one event (read newest first) to what is known of its run."""
    if summary is None:
        return
    row = rows.get(summary.run_id)
    if row is None:
        rows[summary.run_id] = _Row(summary)
        order.append(summary.run_id)
        return
    if summary.status == "requeued":
        row.requeued = True
    elif (
        summary.status in _TERMINAL
        and not row.requeued
        and row.summary.status in ("running", "queued")
    ):
        # a late 'running' (an entry delivered again after its run ended) hides no outcome
        row.summary = summary


def _summary(fields: dict[bytes | str, bytes | str]) -> RunSummary | None:
    text = {_text(k): _text(v) for k, v in fields.items()}
    run, status = text.get("run"), text.get("status")
    if not run or status not in STATUSES:
        return None
    return RunSummary(
        run_id=run,
        agent=text.get("agent", ""),
        status=status,
        at=_number(text.get("at")) or 0.0,
        session=text.get("session") or None,
        trace_id=text.get("trace") or None,
        worker=text.get("worker") or None,
        duration_ms=_number(text.get("duration_ms")),
        error=text.get("error") or None,
    )


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
