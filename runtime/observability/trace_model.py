"""The trace model: :class:`SpanRecord` and :class:`TraceSummary` as stored in Redis (JSON
and hash fields), :func:`clip`, which bounds the text they carry, and :class:`Deferred`, a
span to be built later (at the flush, off the agent's loop).

Re-exported by :mod:`runtime.observability.spans`, where the recorder lives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import msgspec

from runtime.log import get_logger

__all__ = [
    "MAX_ATTR_CHARS",
    "Deferred",
    "Pending",
    "SpanRecord",
    "SpanStatus",
    "TraceSummary",
    "clip",
    "clipped_span",
    "resolve",
    "summary_fields",
]

log = get_logger(__name__)

SpanStatus = Literal["ok", "error", "running"]

#: Longest text kept in one attribute or error (characters); longer text is cut and marked.
MAX_ATTR_CHARS = 4096
_MAX_DEPTH = 4
_MAX_ITEMS = 100


class SpanRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One span of a trace, as stored in Redis (JSON) and served by the API."""

    trace_id: str
    span_id: str
    parent_id: str | None = None
    name: str
    kind: str
    start: float
    end: float | None = None
    status: SpanStatus = "running"
    error: str | None = None
    attrs: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; None while the span runs."""
        return None if self.end is None else max(0.0, self.end - self.start)


class TraceSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What one trace was: its name, run, agent, times, outcome and number of spans."""

    trace_id: str
    name: str
    run_id: str | None = None
    agent: str | None = None
    start: float
    end: float | None = None
    status: SpanStatus = "running"
    error: str | None = None
    spans: int = 0


def clip(value: Any, limit: int = MAX_ATTR_CHARS, _depth: int = 0) -> Any:
    """*value* with every text longer than *limit* characters cut (and marked as cut),
    containers cut to 100 items and 4 levels; numbers, booleans and None as they are."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return value[:limit] + f"… [cut: {len(value)} characters]"
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if _depth >= _MAX_DEPTH:
        return clip(repr(value), limit)
    if isinstance(value, dict):
        items = list(value.items())[:_MAX_ITEMS]
        return {str(k): clip(v, limit, _depth + 1) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [clip(v, limit, _depth + 1) for v in value[:_MAX_ITEMS]]
    return clip(str(value), limit)


# What clip() adds to a text it cuts ("… [cut: N characters]") fits in this many characters.
_MARK_CHARS = 64


def _long(value: Any) -> bool:
    """Whether *value* is a text longer than :func:`clip` leaves one."""
    return isinstance(value, str) and len(value) > MAX_ATTR_CHARS + _MARK_CHARS


def clipped_span(span: SpanRecord) -> SpanRecord:
    """*span* with its error and its text attributes cut to :data:`MAX_ATTR_CHARS` (the
    same span when nothing is too long): whatever built it, a multi-megabyte error never
    reaches Redis or OpenTelemetry whole. Nested attributes are left to their builder."""
    error, attrs = span.error, span.attrs
    long_attrs = any(_long(value) for value in attrs.values())
    if not long_attrs and not _long(error):
        return span
    return msgspec.structs.replace(
        span,
        error=clip(error),
        attrs={k: clip(v) if _long(v) else v for k, v in attrs.items()} if long_attrs else attrs,
    )


def _field(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def summary_fields(summary: TraceSummary) -> dict[str, str]:
    """The summary as the string fields of its hash and of its recent-traces entry (None
    fields are left out)."""
    fields = msgspec.structs.asdict(summary)
    return {k: _field(v) for k, v in fields.items() if v is not None}


class Deferred:
    """A span to be built at the next flush, in a worker thread: what the SDK's processor
    records, so converting its spans costs the agent's loop nothing. *make* builds it (a
    subclass may override :meth:`build` instead)."""

    __slots__ = ("_make", "_value", "built", "ended")

    def __init__(self, make: Callable[[], SpanRecord] | None = None, *, ended: bool) -> None:
        self._make = make
        self._value: SpanRecord | None = None
        self.built = False
        self.ended = ended

    def build(self) -> SpanRecord:
        assert self._make is not None
        return self._make()

    def get(self) -> SpanRecord | None:
        """The span (built once); None when building it failed (logged)."""
        if not self.built:
            self.built = True
            try:
                self._value = self.build()
            except Exception:
                log.exception("tracing.span_unreadable")
            self._make = None
        return self._value


Pending = SpanRecord | Deferred


def resolve(items: Iterable[Pending]) -> list[SpanRecord]:
    """The spans built, their long texts cut (:func:`clipped_span`)."""
    out = []
    for item in items:
        span = item.get() if isinstance(item, Deferred) else item
        if span is not None:
            out.append(clipped_span(span))
    return out
