"""Reading traces back from Redis: one trace's summary and spans, the recent traces, and the
span tree for a waterfall.

    store = TraceStore(client, keys)
    for summary in await store.list_traces(20):
        spans = await store.get_spans(summary.trace_id)
        for node in span_tree(spans):
            print("  " * node.depth, node.span.name, node.span.duration)

Every read is bounded: one trace's two hashes (:meth:`TraceStore.read_spans` reads at most
a given number of spans), or ``XREVRANGE … COUNT`` on the stream of recent traces (never
``KEYS``/``SCAN``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.keys import Keys
from runtime.log import get_logger
from runtime.observability.spans import SpanRecord, TraceSummary
from runtime.observability.tracecontext import trace_id_of
from runtime.redis.connection import translate_errors

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["SpanNode", "TraceStore", "iter_tree", "span_tree"]

log = get_logger(__name__)

_STREAM_ID = re.compile(r"\d+(-\d+)?")
_DECODER = msgspec.json.Decoder(SpanRecord)
# How many recent-trace entries a name-filtered listing reads at most, per trace asked for.
_SCAN_FACTOR = 20
_SCAN_MAX = 5000
# HSCAN calls one bounded read of a big trace makes at most.
_SCAN_PAGES = 20


@dataclass
class SpanNode:
    """One span in a tree: its depth (0 for a root) and its children, by start time."""

    span: SpanRecord
    depth: int
    children: list[SpanNode] = field(default_factory=list)


def span_tree(spans: list[SpanRecord]) -> list[SpanNode]:
    """The spans as a forest: roots first, each level by start time; a span whose parent is
    missing (not recorded, or expired) is a root, and so is the earliest span of a parent
    cycle (its link to its parent is dropped: the result is always a tree)."""
    nodes = sorted(
        (SpanNode(span, 0) for span in spans), key=lambda n: (n.span.start, n.span.span_id)
    )
    by_id = {node.span.span_id: node for node in nodes}
    roots: list[SpanNode] = []
    for node in nodes:
        parent = by_id.get(node.span.parent_id or "")
        if parent is None or parent is node:
            roots.append(node)
        else:
            parent.children.append(node)
    seen: set[int] = set()
    _set_depths(roots, seen)
    for node in nodes:  # only spans in a parent cycle are still unseen
        if id(node) not in seen:
            parent = by_id[node.span.parent_id or ""]
            parent.children.remove(node)
            roots.append(node)
            _set_depths([node], seen)
    roots.sort(key=lambda n: (n.span.start, n.span.span_id))
    return roots


def _set_depths(roots: list[SpanNode], seen: set[int]) -> None:
    stack = [(root, 0) for root in roots]
    while stack:
        node, depth = stack.pop()
        seen.add(id(node))
        node.depth = depth
        stack.extend((child, depth + 1) for child in node.children)


def iter_tree(roots: list[SpanNode]) -> list[SpanNode]:
    """The nodes of a forest in display order (depth first, children by start)."""
    out: list[SpanNode] = []
    stack = list(reversed(roots))
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        stack.extend(reversed(node.children))
    return out


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _opt_float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def summary_from_fields(fields: dict[Any, Any], spans: int | None = None) -> TraceSummary | None:
    """A summary from its hash (or stream entry) fields; None when they hold no trace id."""
    text = {_decode(k): _decode(v) for k, v in fields.items()}
    trace_id = text.get("trace_id")
    if not trace_id:
        return None
    status = text.get("status", "running")
    return TraceSummary(
        trace_id=trace_id,
        name=text.get("name", ""),
        run_id=text.get("run_id") or None,
        agent=text.get("agent") or None,
        start=_opt_float(text.get("start")) or 0.0,
        end=_opt_float(text.get("end")),
        status=status if status in ("ok", "error", "running") else "error",  # type: ignore[arg-type]
        error=text.get("error") or None,
        spans=spans if spans is not None else int(_opt_float(text.get("spans")) or 0),
    )


class TraceStore:
    """Reads traces written by :class:`~runtime.observability.spans.TraceRecorder`.

    Trace ids may be given bare (32 hex) or in the SDK's form (``trace_<hex>``).
    """

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, *, stream: str | None = None):
        self.client = client
        self.keys = keys
        self.stream = stream or keys.traces()

    @staticmethod
    def _tid(trace_id: str) -> str | None:
        return trace_id_of(trace_id)

    async def get_trace(self, trace_id: str) -> TraceSummary | None:
        """The summary of one trace (its span count read from its spans), or None."""
        tid = self._tid(trace_id)
        if tid is None:
            return None
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.trace(tid))
        pipe.hlen(self.keys.trace_spans(tid))
        with translate_errors("read a trace"):
            fields, count = await pipe.execute()
        if not fields:
            return None
        return summary_from_fields(fields, int(count))

    async def get_spans(self, trace_id: str, *, limit: int | None = None) -> list[SpanRecord]:
        """The spans of one trace, sorted by start (an unreadable span is skipped, logged);
        with *limit*, at most that many (see :meth:`read_spans`)."""
        if limit is not None:
            return (await self.read_spans(trace_id, limit))[0]
        tid = self._tid(trace_id)
        if tid is None:
            return []
        with translate_errors("read a trace's spans"):
            raw = await self.client.hgetall(self.keys.trace_spans(tid))
        return self._spans(tid, raw.values())

    async def read_spans(self, trace_id: str, limit: int) -> tuple[list[SpanRecord], int]:
        """At most *limit* spans of one trace, sorted by start, and how many it holds.

        ``HLEN`` first: a trace within *limit* is read whole (``HGETALL``), a bigger one with
        ``HSCAN`` until *limit* spans are read — the same ones each time while the trace does
        not change (a scan's order, not the earliest spans: finding those would read all).
        """
        tid = self._tid(trace_id)
        if tid is None:
            return [], 0
        key = self.keys.trace_spans(tid)
        values: list[Any] = []
        with translate_errors("read a trace's spans"):
            total = int(await self.client.hlen(key))
            if total <= limit:
                values = list((await self.client.hgetall(key)).values())
            elif limit > 0:
                values = await self._scan(key, limit)
        return self._spans(tid, values[:limit]), total

    async def _scan(self, key: str, limit: int) -> list[Any]:
        """Up to *limit* values of hash *key*, in ``HSCAN`` order (at most _SCAN_PAGES pages)."""
        found: dict[Any, Any] = {}
        cursor: int = 0
        for _ in range(_SCAN_PAGES):
            reply: Any = await self.client.hscan(key, cursor, count=limit - len(found))
            cursor, page = reply
            found.update(page)
            if not cursor or len(found) >= limit:
                break
        return list(found.values())

    @staticmethod
    def _spans(tid: str, values: Any) -> list[SpanRecord]:
        spans = []
        for value in values:
            try:
                spans.append(_DECODER.decode(value))
            except Exception as exc:  # any bad value (not only bad JSON) is skipped
                log.warning("tracing.bad_span", trace=tid, error=repr(exc))
        spans.sort(key=lambda s: (s.start, s.span_id))
        return spans

    async def list_traces(
        self, limit: int = 50, *, before: str | None = None, name: str | None = None
    ) -> list[TraceSummary]:
        """The most recent ended traces, newest first (one per trace id).

        *before*: a stream entry id (as in :meth:`list_entries`) to page past; *name*: keep
        traces whose name contains this text (reads at most ``20 × limit`` entries).
        """
        return [summary for _, summary in await self.list_entries(limit, before=before, name=name)]

    async def list_entries(
        self, limit: int = 50, *, before: str | None = None, name: str | None = None
    ) -> list[tuple[str, TraceSummary]]:
        """Like :meth:`list_traces`, with each summary's stream entry id (for paging)."""
        if limit <= 0:
            return []
        top = "+" if before is None else f"({before}" if _STREAM_ID.fullmatch(before) else None
        if top is None:
            return []
        count = min(_SCAN_MAX, limit * _SCAN_FACTOR) if name else limit * 2
        with translate_errors("list traces"):
            entries = await self.client.xrevrange(self.stream, top, "-", count=count)
            picked = self._pick(list(entries or []), limit, name)
            if not picked:
                return []
            pipe = self.client.pipeline(transaction=False)
            for _, summary in picked:  # the spans now stored (the entry's count may be 0)
                pipe.hlen(self.keys.trace_spans(summary.trace_id))
            counts = await pipe.execute()
        return [
            (entry_id, msgspec.structs.replace(summary, spans=int(count) or summary.spans))
            for (entry_id, summary), count in zip(picked, counts, strict=True)
        ]

    @staticmethod
    def _pick(
        entries: list[tuple[Any, Any]], limit: int, name: str | None
    ) -> list[tuple[str, TraceSummary]]:
        out: list[tuple[str, TraceSummary]] = []
        seen: set[str] = set()
        needle = name.lower() if name else None
        for entry_id, fields in entries:
            summary = summary_from_fields(fields or {})
            if summary is None or summary.trace_id in seen:
                continue
            if needle is not None and needle not in summary.name.lower():
                continue
            seen.add(summary.trace_id)
            out.append((_decode(entry_id), summary))
            if len(out) >= limit:
                break
        return out
