"""Shared checks for the tracing tests: a guard that records every Redis command sent (which
thread, inside a processor callback or not), and the expected shape of the support app's trace.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from agents.tracing import Span, Trace, TracingProcessor
from redis.asyncio.connection import AbstractConnection
from redis.connection import AbstractConnection as SyncConnection

from runtime.observability.spans import SpanRecord


class RedisGuard:
    """Records (thread id, inside a processor callback?) for every command sent to Redis."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.sends: list[tuple[int, bool]] = []
        self.lock = threading.Lock()

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = AbstractConnection.send_packed_command
        guard = self

        async def spy(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
            with guard.lock:
                guard.sends.append((threading.get_ident(), guard.inside))
            await original(self, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", spy)
        sync_original = SyncConnection.send_packed_command

        def sync_spy(self: SyncConnection, command: Any, check_health: bool = True) -> None:
            with guard.lock:
                guard.sends.append((threading.get_ident(), guard.inside))
            sync_original(self, command, check_health)

        monkeypatch.setattr(SyncConnection, "send_packed_command", sync_spy)

    @property
    def inside(self) -> bool:
        return bool(getattr(self.local, "inside", False))

    def wrap(self, processor: TracingProcessor) -> TracingProcessor:
        """A processor calling *processor* with the 'inside a callback' flag set."""
        return _Guarded(processor, self)

    def sent_inside(self) -> int:
        with self.lock:
            return sum(1 for _, inside in self.sends if inside)

    def threads(self) -> set[int]:
        with self.lock:
            return {thread for thread, _ in self.sends}


class _Guarded(TracingProcessor):
    def __init__(self, inner: TracingProcessor, guard: RedisGuard) -> None:
        self.inner = inner
        self.guard = guard

    def _call(self, name: str, *args: Any) -> None:
        self.guard.local.inside = True
        try:
            getattr(self.inner, name)(*args)
        finally:
            self.guard.local.inside = False

    def on_trace_start(self, trace: Trace) -> None:
        self._call("on_trace_start", trace)

    def on_trace_end(self, trace: Trace) -> None:
        self._call("on_trace_end", trace)

    def on_span_start(self, span: Span[Any]) -> None:
        self._call("on_span_start", span)

    def on_span_end(self, span: Span[Any]) -> None:
        self._call("on_span_end", span)

    def force_flush(self) -> None:
        self._call("force_flush")

    def shutdown(self) -> None:
        self._call("shutdown")


def _agent_of(span: SpanRecord, by_id: dict[str, SpanRecord]) -> str | None:
    """The name of the nearest agent span above *span* (its own name for an agent span)."""
    current: SpanRecord | None = span
    while current is not None:
        if current.kind == "agent":
            return str(current.attrs["agent"])
        current = by_id.get(current.parent_id or "")
    return None


EXPECTED = {  # (kind, name) → (count, the agent it runs under)
    ("agent", "agent: triage"): (1, "triage"),
    ("agent", "agent: billing"): (1, "billing"),
    ("agent", "agent: refunds"): (1, "refunds"),
    ("generation", "generation: gpt-triage"): (1, "triage"),
    ("generation", "generation: gpt-refunds"): (1, "refunds"),
    ("response", "response: gpt-billing"): (3, "billing"),
    ("function", "function: lookup_order"): (1, "billing"),
    ("function", "function: broken_tool"): (1, "billing"),
    ("function", "function: refunds"): (1, "billing"),
    ("handoff", "handoff: triage → billing"): (1, "triage"),
}


def check_support_trace(
    spans: list[SpanRecord], trace_id: str, began: float, ended: float, root_parent: str | None
) -> None:
    """The support app's trace is whole: every span (by kind and name) with its parent, its
    start and end inside the run and inside its parent, error, usage, tool and handoff."""
    by_id = {span.span_id: span for span in spans}
    assert len(by_id) == len(spans)
    counts: dict[tuple[str, str], int] = {}
    for span in spans:
        assert span.trace_id == trace_id
        assert "unknown" not in span.name and span.name.startswith(span.kind)
        assert span.end is not None and began - 0.001 <= span.start <= span.end <= ended + 0.001
        parent = by_id.get(span.parent_id or "")
        if parent is None:
            assert span.parent_id == root_parent, span
        else:
            assert parent.start - 0.001 <= span.start and span.end <= (parent.end or 0) + 0.001
        key = (span.kind, span.name)
        if key in EXPECTED:
            counts[key] = counts.get(key, 0) + 1
            assert _agent_of(span, by_id) == EXPECTED[key][1], span
    assert counts == {key: count for key, (count, _) in EXPECTED.items()}
    _check_attrs(spans)


def _check_attrs(spans: list[SpanRecord]) -> None:
    for span in spans:
        if span.name == "function: broken_tool":
            assert span.status == "error" and span.error and "broken_tool" in span.error
        else:
            assert span.status == "ok" and span.error is None, span
        if span.kind == "generation":
            assert span.attrs["usage"] == {"input_tokens": 11, "output_tokens": 7}
            assert span.attrs["model"] in ("gpt-triage", "gpt-refunds")
        if span.kind == "response":
            assert span.attrs["usage"] == {"input_tokens": 23, "output_tokens": 5}
            assert span.attrs["model"] == "gpt-billing"
        if span.kind == "function":
            assert span.name == f"function: {span.attrs['tool']}"
        if span.kind == "handoff":
            assert (span.attrs["from"], span.attrs["to"]) == ("triage", "billing")
    lookup = next(s for s in spans if s.name == "function: lookup_order")
    assert lookup.attrs["output"] == "order 7: shipped"
