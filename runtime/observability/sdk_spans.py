"""Converting the Agents SDK's spans into :class:`~runtime.observability.spans.SpanRecord` s
(names, kinds, times, parents, attributes with usage, errors), for
:mod:`runtime.observability.tracing`, which alone imports this module.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from agents.tracing import Span, SpanData
from agents.tracing.span_data import ResponseSpanData

from runtime.observability.trace_model import SpanRecord, SpanStatus, clip
from runtime.observability.tracecontext import trace_id_of

__all__ = ["span_record", "trace_hex"]


@functools.lru_cache(maxsize=4096)
def trace_hex(sdk_trace_id: str) -> str:
    """Our 32-hex trace id for an SDK trace id: its hex part (``trace_<32 hex>``), else a
    stable hash of the whole id (a user may pick any id)."""
    return (
        trace_id_of(sdk_trace_id)
        or hashlib.blake2b(sdk_trace_id.encode(), digest_size=16).hexdigest()
    )


def _unix(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if moment.tzinfo is None:  # the SDK writes UTC; a provider of a user's may not say so
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _label(data: SpanData) -> str:
    """The type's own name field: agent/function/guardrail/custom name, model, server…"""
    kind = data.type
    if kind == "handoff":
        return (
            f"{getattr(data, 'from_agent', None) or '?'} → {getattr(data, 'to_agent', None) or '?'}"
        )
    if kind == "turn":
        return f"{getattr(data, 'turn', '?')} ({getattr(data, 'agent_name', '?')})"
    if isinstance(data, ResponseSpanData):
        response = data.response
        return str(response.model) if response is not None else ""
    for attr in ("name", "model", "server"):
        value = getattr(data, attr, None)
        if value:
            return str(value)
    return ""


def _usage(data: SpanData) -> dict[str, Any] | None:
    usage = getattr(data, "usage", None)
    if isinstance(data, ResponseSpanData) and data.response is not None:
        got = data.response.usage
        if got is not None:
            return {"input_tokens": got.input_tokens, "output_tokens": got.output_tokens}
    if isinstance(usage, Mapping):
        keep = ("input_tokens", "output_tokens", "requests", "total_tokens")
        return {k: usage[k] for k in keep if k in usage}
    return None


def _agent_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    tools, handoffs = exported.get("tools"), exported.get("handoffs")
    return {"agent": data.name, "tools": tools, "handoffs": handoffs}


def _function_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    return {"tool": data.name, "input": data.input, "output": data.output}


def _handoff_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    return {"from": data.from_agent, "to": data.to_agent}


def _model_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    if isinstance(data, ResponseSpanData) and data.response is not None:
        return {"model": data.response.model, "response_id": data.response.id}
    return {"model": exported.get("model")}


def _turn_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    return {"turn": data.turn, "agent": data.agent_name}


def _task_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    return {"task": data.name}


def _other_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in exported.items() if k != "type"}


_ATTRS = {
    "agent": _agent_attrs,
    "function": _function_attrs,
    "handoff": _handoff_attrs,
    "generation": _model_attrs,
    "response": _model_attrs,
    "turn": _turn_attrs,
    "task": _task_attrs,
}


def _data_attrs(data: SpanData) -> dict[str, Any]:
    """Attributes of the span's data (model usage included), cut to a bounded size."""
    attrs = _ATTRS.get(data.type, _other_attrs)(data, data.export() or {})
    usage = _usage(data)
    if usage:
        attrs["usage"] = usage
    kept: dict[str, Any] = clip({k: v for k, v in attrs.items() if v is not None})
    return kept


def _error_text(span: Span[Any]) -> str | None:
    error = span.error
    if not error:
        return None
    message = str(error.get("message") or "error")
    data = error.get("data")
    text: str = clip(f"{message}: {data}" if data else message)
    return text


def span_record(
    span: Span[Any],
    *,
    ended: bool,
    parent_id: str | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> SpanRecord:
    """The :class:`SpanRecord` of an SDK span (started, or *ended*); *parent_id* is used for
    a span without a parent of its own (a root), *attrs* are added to the span's. A started
    span carries *attrs* only: the data's own (usage, tool output…) come with its end."""
    data = span.span_data
    label = _label(data)
    start = _unix(span.started_at) or time.time()
    end = (_unix(span.ended_at) or time.time()) if ended else None
    error = _error_text(span) if ended else None
    status: SpanStatus = "running" if not ended else "error" if error else "ok"
    return SpanRecord(
        trace_id=trace_hex(span.trace_id),
        span_id=span.span_id,
        parent_id=span.parent_id or parent_id,
        name=f"{data.type}: {label}" if label else data.type,
        kind=data.type,
        start=start,
        end=end,
        status=status,
        error=error,
        attrs={**(attrs or {}), **_data_attrs(data)} if ended else dict(attrs or {}),
    )
