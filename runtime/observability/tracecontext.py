"""W3C trace context: trace and span ids, the ``traceparent`` header, the SDK's trace ids.

Trace ids are the 32 lower-case hex digits of the W3C trace id everywhere in Redis and in the
API; the Agents SDK's id for the same trace is ``"trace_" + trace_id``::

    >>> tp = TraceParent("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    >>> tp.header()
    '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
    >>> parse_traceparent(tp.header()) == tp
    True
    >>> sdk_trace_id("0af7651916cd43dd8448eb211c80319c")
    'trace_0af7651916cd43dd8448eb211c80319c'

A context that says *not sampled* (flags ``00``, from an app whose OpenTelemetry sampler
dropped its span) is remembered, per process and bounded, by its trace id: the OpenTelemetry
bridge leaves that trace's spans unsampled too (:func:`is_sampled`).

This module imports no SDK; :func:`current_traceparent` reads OpenTelemetry's API lazily.
"""

from __future__ import annotations

import random
import re
import secrets
import threading

import msgspec

__all__ = [
    "TraceParent",
    "current_traceparent",
    "is_sampled",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
    "sdk_trace_id",
    "trace_id_of",
]

_HEADER = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_SDK_PREFIX = "trace_"
# Trace ids seen in a context that was not sampled, oldest forgotten first beyond the bound.
_MAX_UNSAMPLED = 10_000
_unsampled: dict[str, None] = {}
_unsampled_lock = threading.Lock()


class TraceParent(msgspec.Struct, frozen=True):
    """The context of one span: its trace id (32 hex), span id (16 hex) and sampled flag."""

    trace_id: str
    span_id: str
    sampled: bool = True

    def header(self) -> str:
        """The W3C ``traceparent`` header value, ``00-<trace>-<span>-<flags>``."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The context in a ``traceparent`` header; None for anything invalid (never raises)."""
    if not isinstance(value, str):
        return None
    match = _HEADER.fullmatch(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    sampled = bool(int(flags, 16) & 1)
    if not sampled:
        _note_unsampled(trace_id)
    return TraceParent(trace_id, span_id, sampled)


def _note_unsampled(trace_id: str) -> None:
    if trace_id in _unsampled:
        return
    with _unsampled_lock:
        _unsampled[trace_id] = None
        while len(_unsampled) > _MAX_UNSAMPLED:
            del _unsampled[next(iter(_unsampled))]


def is_sampled(trace_id: str) -> bool:
    """False for a trace this process saw in a context that was not sampled (a
    ``traceparent`` with flags ``00``, or the app's current span); True otherwise."""
    return trace_id not in _unsampled


def new_trace_id() -> str:
    """A random W3C trace id (32 lower-case hex digits)."""
    return secrets.token_hex(16)


def new_span_id() -> str:
    """A random span id (16 lower-case hex digits, never all zeros: W3C's invalid id). Made
    on the worker's hot path: Python's own generator, not the OS's (an id, not a secret)."""
    return f"{random.getrandbits(64) or 1:016x}"


def sdk_trace_id(trace_id: str) -> str:
    """The Agents SDK's id of the trace *trace_id* (``trace_<32 hex>``)."""
    return _SDK_PREFIX + trace_id


def trace_id_of(sdk_id: str) -> str | None:
    """The 32-hex trace id in an SDK id (``trace_<hex>``) or a bare one; None when the id
    holds no 32-hex trace id (e.g. the SDK's own random ids, which are also 32 hex)."""
    if not isinstance(sdk_id, str):
        return None
    candidate = sdk_id[len(_SDK_PREFIX) :] if sdk_id.startswith(_SDK_PREFIX) else sdk_id
    candidate = candidate.lower()
    return candidate if _HEX32.fullmatch(candidate) else None


def current_traceparent() -> str | None:
    """The active OpenTelemetry span's context as a ``traceparent`` header, or None when no
    valid span is active (or opentelemetry-api is not installed)."""
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - opentelemetry-sdk is a dependency
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    sampled = bool(context.trace_flags & 1)
    trace_id = format(context.trace_id, "032x")
    if not sampled:
        _note_unsampled(trace_id)
    return TraceParent(trace_id, format(context.span_id, "016x"), sampled).header()
