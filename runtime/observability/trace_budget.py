"""What one process writes of each trace, bounded: at most :data:`MAX_SPANS_PER_TRACE` spans
per trace id, and one recent-traces entry per trace id.

A trace may be shared by many tasks (``enqueue_many`` inside an app's span, a long-lived app
span around many runs): without a bound its spans hash would grow by every task's spans, its
expiry be pushed back forever, and each task add an entry for the same trace to the stream of
recent traces. :class:`TraceBook` (used by the recorder's flush, in one thread at a time)
keeps, for the trace ids it saw last (:data:`BOOK_SIZE`, least recently used forgotten first):

- how many distinct spans it wrote (a span written at start and again at end counts once);
  beyond the cap a trace's new spans are dropped, counted and logged once per trace
  (``tracing.trace_full``), and its summary is no longer rewritten (its keys then expire);
- whether the trace's ended summary was written: the first one goes to the hash and the
  stream; a later one (another run of the same trace ended) updates the hash only, merged
  with the first (earliest start, latest end, an error wins).

So a trace holds at most *processes × cap* spans.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import msgspec

from runtime.log import get_logger
from runtime.observability.trace_model import MAX_ATTR_CHARS, SpanRecord, TraceSummary, clip

__all__ = ["BOOK_SIZE", "MAX_SPANS_PER_TRACE", "Booked", "TraceBook", "clipped", "merged"]

log = get_logger(__name__)

#: Distinct spans one process writes of one trace at most; beyond, they are dropped.
MAX_SPANS_PER_TRACE = 5_000
#: Trace ids a process remembers (least recently used forgotten first).
BOOK_SIZE = 4_096

Booked = tuple[TraceSummary, bool]
"""A summary to write, and whether with its recent-traces entry."""


class _Trace:
    __slots__ = ("count", "open", "summary", "told")

    def __init__(self) -> None:
        self.count = 0
        self.open: set[str] | None = None  # written while running, end not yet written
        self.summary: TraceSummary | None = None  # the ended summary written
        self.told = False

    def admit(self, span: SpanRecord, cap: int) -> bool:
        span_id, open_ = span.span_id, self.open
        if open_ is not None and span_id in open_:
            if span.end is not None:
                open_.discard(span_id)
            return True
        if self.count >= cap:
            return False
        self.count += 1
        if span.end is None:
            if open_ is None:
                open_ = self.open = set()
            open_.add(span_id)
        return True


class TraceBook:
    """The per-trace bounds of one recorder (see the module's docstring); not thread-safe:
    the recorder's flushes use it one at a time."""

    def __init__(self, cap: int = MAX_SPANS_PER_TRACE, size: int = BOOK_SIZE) -> None:
        self.cap = cap
        self.size = size
        self.dropped = 0
        self._traces: OrderedDict[str, _Trace] = OrderedDict()

    def _entry(self, trace_id: str) -> _Trace:
        traces = self._traces
        entry = traces.get(trace_id)
        if entry is None:
            entry = traces[trace_id] = _Trace()
            if len(traces) > self.size:
                traces.popitem(last=False)
        else:
            traces.move_to_end(trace_id)
        return entry

    def admit(self, spans: Iterable[SpanRecord]) -> list[SpanRecord]:
        """The spans within their trace's cap (each span once per batch: the latest)."""
        out: list[SpanRecord] = []
        last_id, entry = "", None
        for span in spans:
            if span.trace_id != last_id or entry is None:
                last_id, entry = span.trace_id, self._entry(span.trace_id)
            if entry.admit(span, self.cap):
                out.append(span)
                continue
            self.dropped += 1
            if not entry.told:
                entry.told = True
                log.warning("tracing.trace_full", trace_id=span.trace_id, cap=self.cap)
        return out

    def summaries(
        self, started: Iterable[TraceSummary], ended: Iterable[TraceSummary]
    ) -> list[Booked]:
        """What to write of these summaries: a begun trace's hash (unless it ended already);
        an ended trace's first summary with its stream entry, a later one merged, hash only;
        nothing more of a trace over its cap."""
        out: list[Booked] = []
        for summary in started:
            entry = self._entry(summary.trace_id)
            if entry.summary is None and entry.count < self.cap:
                out.append((clipped(summary), False))
        for summary in ended:
            entry = self._entry(summary.trace_id)
            if entry.summary is None:
                entry.summary = clipped(summary)
                out.append((entry.summary, True))
            elif entry.count < self.cap:
                entry.summary = merged(entry.summary, clipped(summary))
                out.append((entry.summary, False))
        return out


def clipped(summary: TraceSummary) -> TraceSummary:
    """*summary* with its error cut to :data:`MAX_ATTR_CHARS` characters."""
    error = summary.error
    if error is None or len(error) <= MAX_ATTR_CHARS + 64:  # cut already, or short
        return summary
    return msgspec.structs.replace(summary, error=clip(error))


def merged(first: TraceSummary, later: TraceSummary) -> TraceSummary:
    """The summary of a trace two runs (or tasks) ended: the first's name, the run and agent
    when both had the same, the earliest start, the latest end, an error if either had one."""
    ends = [end for end in (first.end, later.end) if end is not None]
    failed = first.status == "error" or later.status == "error"
    return msgspec.structs.replace(
        first,
        run_id=first.run_id if first.run_id == later.run_id else None,
        agent=first.agent if first.agent == later.agent else None,
        start=min(first.start, later.start),
        end=max(ends) if ends else None,
        status="error" if failed else later.status,
        error=first.error or later.error,
    )
