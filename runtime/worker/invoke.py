"""Calling a handler under its time limit (and the helpers around a call: its payload
converted to the declared type, its error described).

An ``async def`` handler is cancelled at its next ``await`` when its time is up (or its
lease was lost). A plain ``def`` handler runs in a worker thread, and Python cannot stop a
thread: its entry stays in flight — lease renewed, slot busy — until the thread has really
returned, so that no other try of the entry starts while it still runs; only then is the
attempt settled as timed out.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import anyio
import msgspec

from runtime.app import Handler, TaskContext
from runtime.log import get_logger
from runtime.worker.outcome import Entry

__all__ = [
    "TimedOut",
    "convert_payload",
    "describe_error",
    "error_text",
    "invoke",
    "payload_type_name",
]

log = get_logger(__name__)

_MAX_ERROR = 2000


class TimedOut(Exception):
    """The handler ran past its timeout (or the entry's deadline)."""


async def invoke(
    entry: Entry, handler: Handler, ctx: TaskContext, payload: Any, *, limit: float
) -> None:
    """Call *handler*; raise :class:`TimedOut` when it runs past *limit* seconds."""
    # One cancel scope serves as the timeout and as the handle to cancel on a lost lease.
    scope = entry.scope = anyio.CancelScope(deadline=anyio.current_time() + limit)
    if handler.is_async:
        with scope:
            await handler.fn(ctx, payload)
    else:
        returned = _Returned()
        with scope:
            await anyio.to_thread.run_sync(
                _call_and_flag, handler.fn, ctx, payload, returned, abandon_on_cancel=True
            )
        if scope.cancelled_caught and not returned.abandon():
            await _wait_for_thread(entry, returned)
    if scope.cancelled_caught and not entry.lost:
        raise TimedOut(f"timed out after {limit:g} s")


class _Returned:
    """Set by a handler's thread when it has really returned, seen from either side; and
    whether the call may still start (a cancel can come before the thread does: a tiny time
    limit, a full thread pool, a lost lease)."""

    def __init__(self) -> None:
        self.flag = threading.Event()
        self.event = anyio.Event()
        self._lock = threading.Lock()
        self._started = False
        self._abandoned = False

    def start(self) -> bool:
        """In the thread: ``True`` when the handler may run (it was not abandoned first)."""
        with self._lock:
            self._started = not self._abandoned
            return self._started

    def abandon(self) -> bool:
        """On the loop, after a cancel: ``True`` when there is no thread to wait for (it has
        returned, or it never started and now never will)."""
        with self._lock:
            if not self._started:
                self._abandoned = True
                return True
            return self.flag.is_set()


async def _wait_for_thread(entry: Entry, returned: _Returned) -> None:
    """Hold the entry (in flight, leased, its slot busy) until its thread has returned."""
    log.warning("task.thread_still_running", entry=entry.entry_id.decode())
    began = anyio.current_time()
    if not returned.flag.is_set():
        await returned.event.wait()
    took = anyio.current_time() - began
    log.info("task.thread_returned", entry=entry.entry_id.decode(), after=took)


def _call_and_flag(
    fn: Callable[[TaskContext, Any], Any], ctx: TaskContext, payload: Any, returned: _Returned
) -> None:
    """Run a plain handler in its thread; *returned* tells when it has really returned."""
    try:
        if returned.start():
            fn(ctx, payload)
    finally:
        returned.flag.set()
        with contextlib.suppress(RuntimeError):  # the event loop is gone (exiting)
            anyio.from_thread.run_sync(returned.event.set)


def convert_payload(payload: Any, payload_type: Any) -> Any:
    """*payload* as the handler's declared type (raises msgspec.ValidationError)."""
    if payload_type is Any:
        return payload
    return msgspec.convert(payload, payload_type)


def payload_type_name(payload_type: Any) -> str:
    return str(getattr(payload_type, "__name__", payload_type))


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of a handler's exception, bounded."""
    return error_text(exc, type_name=True)


def error_text(exc: BaseException, *, type_name: bool = False) -> str:
    text = f"{type(exc).__name__}: {exc}" if type_name else str(exc)
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"
