"""What the dashboard's API answers: one typed view per page section, encoded as JSON.

The live feed (:mod:`runtime.web.dashboard.live`) sends the same views, and compares their
encoded bytes to send only what changed.
"""

from __future__ import annotations

from typing import Any

import msgspec

from runtime.observability.fleet import FleetMember
from runtime.observability.lifecycle import RunSummary
from runtime.observability.spans import TraceSummary

__all__ = [
    "Charts",
    "DlqTarget",
    "DlqView",
    "EventRow",
    "InboxRow",
    "LetterRow",
    "Overview",
    "RunDetail",
    "RunFilter",
    "RunRecord",
    "RunsPage",
    "SpanRow",
    "encode",
]

encode = msgspec.json.Encoder().encode


class View(msgspec.Struct, frozen=True, kw_only=True):
    """A section of a page, as the API sends it."""


class InboxRow(View, frozen=True, kw_only=True):
    """One target's inbox: what waits, what runs, what failed for good."""

    target: str
    length: int
    lag: int | None
    """Entries not yet read by the workers (``None`` when Redis cannot tell)."""
    pending: int
    """Entries read and not yet acked (running, or held by a worker that died)."""
    oldest_pending_age_s: float | None
    delayed: int
    dlq: int
    consumers: int


class Overview(View, frozen=True, kw_only=True):
    """The fleet, its inboxes and its totals."""

    fleet: list[FleetMember]
    inboxes: list[InboxRow]
    totals: dict[str, float]
    """Fleet-wide counters (``runs_completed``, ``runs_failed``, …) since the deployment began."""


class RunFilter(View, frozen=True, kw_only=True):
    status: str | None = None
    agent: str | None = None


class RunsPage(View, frozen=True, kw_only=True):
    """The most recent runs (one row per run, its latest status), filtered."""

    runs: list[RunSummary]
    window: int
    """How many lifecycle events the filter looked at (the newest ones)."""
    filter: RunFilter


class Charts(View, frozen=True, kw_only=True):
    """Runs per minute and their average latency, from TimeSeries."""

    history: bool
    reason: str | None = None
    """Why there is no history (``history`` false)."""
    bucket_ms: int
    x: list[float]
    """Bucket starts, unix seconds."""
    completed: list[float]
    failed: list[float]
    latency_ms: list[float | None]


class RunRecord(View, frozen=True, kw_only=True):
    """A run's record (``keys.run(id)``)."""

    run_id: str
    status: str
    agent: str
    session_id: str | None
    final_output: Any
    last_agent: str | None
    usage: dict[str, int]
    error: str | None
    error_type: str | None
    worker: str | None
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int | None
    trace_id: str | None
    cancel_requested: bool


class EventRow(View, frozen=True, kw_only=True):
    """One event of a run (consecutive text deltas are one row with their *count*)."""

    id: str | None
    type: str
    at: float
    data: dict[str, Any]
    count: int = 1


class SpanRow(View, frozen=True, kw_only=True):
    """A span placed in its trace's waterfall."""

    span_id: str
    parent_id: str | None
    name: str
    kind: str
    start: float
    end: float | None
    status: str
    error: str | None
    attrs: dict[str, Any]
    depth: int
    offset_ms: float
    """Start, from the trace's first span."""
    duration_ms: float
    """Until its end, or until now while it runs."""


class RunDetail(View, frozen=True, kw_only=True):
    """Everything a run's page shows.

    Nothing in it changes with the clock alone (the live feed sends it again only when
    Redis changed), except :attr:`now`: while the run is :attr:`running`, the page extends
    the bars of spans still running (``end`` null) to the time it shows, from :attr:`now`.
    """

    run_id: str
    run: RunRecord | None
    """``None`` when the run is unknown or expired."""
    running: bool
    """The run is not over: spans still running go on until :attr:`now` and beyond."""
    now: float
    """The server's clock when this was read (unix seconds)."""
    trace_id: str | None
    trace: TraceSummary | None
    spans: list[SpanRow]
    """Spans still running last until the trace's last end seen (the page extends them)."""
    spans_total: int
    """Spans the trace holds; more than :attr:`spans_read` when some were left out."""
    spans_read: int
    """Spans read (at most ``SPANS_MAX``, of :attr:`spans_total`)."""
    trace_ms: float
    events: list[EventRow]
    """The first events; an event that cannot be read is a row of type
    ``event.unreadable`` (its data says why)."""
    events_total: int
    events_read: int
    problems: list[str] = msgspec.field(default_factory=list)
    """What could not be read (a field of the record, events): the rest is shown."""


class DlqTarget(View, frozen=True, kw_only=True):
    target: str
    size: int


class LetterRow(View, frozen=True, kw_only=True):
    """One dead letter, as a table row."""

    id: str
    reason: str
    detail: str
    error: str
    task_id: str
    run_id: str | None
    """The agent run it carried, when it did."""
    attempts: int
    deliveries: int
    failed_at: float


class DlqView(View, frozen=True, kw_only=True):
    """Every target's dead-letter count, and the oldest letters of one target."""

    targets: list[DlqTarget]
    target: str | None
    size: int
    letters: list[LetterRow]
