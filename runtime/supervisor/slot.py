"""One worker process of the supervisor: spawn, READY handshake, status lines, signals.

The supervisor writes the effective settings as one JSON line on the worker's stdin and keeps
that pipe open while it lives: when the supervisor dies, even by SIGKILL, the worker sees EOF
and exits by itself (:mod:`runtime.worker.process`). The worker answers on its stdout:
``READY <pid>`` once it serves, then ``BUSY`` (its first handler started), ``RECYCLE <reason>``,
``PAUSED <reason>`` (Redis refuses work: full, read-only, loading…), ``RESUMED`` and
``RUNS <n>`` (the entries it handled so far, for the fleet's view).

A worker may report ``PAUSED`` before ``READY``: it waits for Redis, it is not failing to start,
so the ready timeout is suspended until it reports ``RESUMED``; one that then exits (status 75
after a Redis it could not reach, or killed) ended :attr:`WorkerExit.redis_unavailable`.

Signals go to the pid with :func:`os.kill`, never through :class:`subprocess.Popen`: Popen
polls (reaps) a child that already exited before it signals it, and asyncio's child watcher
then reports that child's status as 255 ("Unknown child process pid").
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from runtime.log import get_logger
from runtime.worker.process import EXIT_REDIS_UNAVAILABLE

__all__ = ["Slot", "WorkerExit", "describe_status", "run_worker", "send_signal"]

log = get_logger(__name__)


@dataclass
class Slot:
    """A place for one worker process; restarted workers keep its index (and name)."""

    index: int
    consumer: str
    process: Process | None = None
    started_at: float | None = None
    """When the running worker process was spawned (unix seconds); ``None`` while none runs."""
    runs: int = 0
    """Entries the running worker process handled, as it last reported (``RUNS <n>``)."""
    ready_at: float | None = None
    """Monotonic time of the worker's READY line; ``None`` until then."""
    paused: str | None = None
    """Why the worker is paused (a Redis fault), ``None`` while it serves."""
    busy: bool = False
    """The worker started running work (its ``BUSY`` line): a death after it is not a
    start-up failure."""
    retiring: bool = False
    recycle_reason: str | None = None
    crashes_in_a_row: int = 0
    redis_waits: int = 0
    """Workers in a row that ended waiting for Redis before READY (for the backoff)."""
    fault: str | None = None
    """The Redis fault this slot's workers reported, kept across their restarts until one
    reports READY with none: an outage is logged once, not once per restarted worker."""

    @property
    def ready(self) -> bool:
        return self.ready_at is not None


@dataclass(frozen=True)
class WorkerExit:
    """How a worker process ended."""

    status: int | None
    served: float | None
    """Seconds between READY and the exit; ``None``: it never reported READY."""
    late: bool = False
    """It did not report READY within ``supervisor.ready_timeout_seconds`` (and was killed)."""
    busy: bool = False
    """It had started running work (an entry may have killed it: its delivery count, not
    the crash-loop rule, deals with that)."""
    paused: str | None = None
    """The Redis fault it reported and had not recovered from when it ended."""

    @property
    def redis_unavailable(self) -> bool:
        """It ended before READY for want of Redis (exit status 75, or while paused): not a
        start-up failure of its own."""
        return self.served is None and (
            self.status == EXIT_REDIS_UNAVAILABLE or self.paused is not None
        )

    @property
    def reason(self) -> str:
        what = describe_status(self.status)
        if self.redis_unavailable:
            return f"{what} before READY, waiting for Redis ({self.paused or 'unavailable'})"
        if self.late:
            return f"did not report READY in time ({what})"
        if self.served is None:
            return f"{what} before READY" + (" (running work)" if self.busy else "")
        return what


def describe_status(status: int | None) -> str:
    """``exit status 3``, ``killed by SIGKILL``…"""
    if status is None:
        return "no exit status"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def send_signal(process: Process | None, signum: int) -> None:
    """Signal *process* if it still runs (by pid: see the module's docstring)."""
    if process is not None and process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)


async def run_worker(
    slot: Slot,
    command: list[str],
    settings_line: bytes,
    ready_timeout: float,
    on_ready: Callable[[], None],
    stopping: Callable[[], bool],
) -> WorkerExit:
    """Run one worker process in *slot* until it exits; keep the slot's state current.

    *stopping* says whether the slot should stop (the supervisor stops, or retires the slot):
    a worker spawned while the supervisor signalled the others gets its SIGTERM too.
    """
    process = await anyio.open_process(
        command, stdin=-1, stdout=-1, stderr=None, start_new_session=True
    )
    slot.process = process
    slot.started_at = time.time()
    slot.runs = 0
    if stopping():  # the stop signals went out while it was being spawned
        send_signal(process, signal.SIGTERM)
    try:
        assert process.stdin is not None and process.stdout is not None
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            # stdin stays open: it is the liveness pipe the worker watches
            await process.stdin.send(settings_line + b"\n")
        lines = BufferedByteReceiveStream(process.stdout)
        late = await _await_ready(slot, lines, ready_timeout)
        if slot.ready_at is None:
            send_signal(process, signal.SIGKILL)
            status = await process.wait()
            return WorkerExit(status, None, late=late, busy=slot.busy, paused=slot.paused)
        log.info("worker.ready", slot=slot.index, pid=process.pid, consumer=slot.consumer)
        on_ready()
        while (line := await _read_line(lines)) is not None:
            _status_line(slot, line)
        status = await process.wait()
        served = time.monotonic() - slot.ready_at
        return WorkerExit(status, served, busy=slot.busy, paused=slot.paused)
    finally:
        with anyio.CancelScope(shield=True):
            send_signal(process, signal.SIGKILL)
            await process.wait()
            slot.ready_at = None
            slot.paused = None
            slot.busy = False
            slot.process = None
            slot.started_at = None
            await process.aclose()


async def _await_ready(slot: Slot, lines: BufferedByteReceiveStream, limit: float) -> bool:
    """Read status lines until READY or the end; returns whether the timeout ran out.

    The timeout runs only while the worker is not paused: one that waits for Redis to
    come back (reporting PAUSED) is not failing to start.
    """
    with anyio.move_on_after(limit) as waiting:
        while slot.ready_at is None:
            line = await _read_line(lines)
            if line is None:
                break
            if line.startswith("READY"):
                slot.ready_at = time.monotonic()
                if slot.paused is None and slot.fault is not None:
                    log.info("worker.resumed", slot=slot.index)
                    slot.fault = None
                continue
            _status_line(slot, line)  # BUSY: it recovered its predecessor's entries first
            if line.startswith(("PAUSED", "RESUMED")):
                paused = slot.paused is not None
                waiting.deadline = math.inf if paused else anyio.current_time() + limit
    return waiting.cancelled_caught


def _status_line(slot: Slot, line: str) -> None:
    word, _, rest = line.partition(" ")
    if word == "RECYCLE":
        slot.recycle_reason = rest
    elif word == "BUSY":
        slot.busy = True
    elif word == "RUNS":
        with contextlib.suppress(ValueError):
            slot.runs = int(rest)
    elif word == "PAUSED":
        if slot.fault is None:
            log.warning("worker.paused", slot=slot.index, reason=rest)
        slot.paused = slot.fault = rest or "paused"
    elif word == "RESUMED":
        if slot.fault is not None:
            log.info("worker.resumed", slot=slot.index)
        slot.paused = slot.fault = None


async def _read_line(lines: BufferedByteReceiveStream) -> str | None:
    try:
        return (await lines.receive_until(b"\n", 65536)).decode(errors="replace").strip()
    except (
        anyio.EndOfStream,
        anyio.IncompleteRead,
        anyio.BrokenResourceError,
        anyio.DelimiterNotFound,  # a line over 64 KiB: the channel is broken
    ):
        return None
