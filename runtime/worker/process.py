"""A worker process: ``python -m runtime.worker --app module:object [--slot N]``.

Started by the supervisor (``--settings-stdin``), which writes the effective settings as one
line of JSON on its stdin and then keeps that pipe open for as long as it lives: the pipe is
the supervisor's liveness. The worker reads status lines on its stdout to the supervisor
(``READY <pid>``, ``RECYCLE <reason>``, ``PAUSED <reason>``, ``RESUMED``, and ``RUNS <n>``:
the entries handled so far, every ``observability.sample_interval_seconds`` while it changes,
for the fleet's view); the process's own output goes to stderr. Run by hand (no
``--settings-stdin``) it loads settings like the CLI does and gets a consumer name of its own.

Signals: the first SIGTERM or SIGINT drains gracefully and exits 0; a second exits at once.

Redis down, or refusing work (loading, full, read-only…), while the worker starts: the worker
rides out the error replies (reporting ``PAUSED <reason>`` before ``READY``); when Redis cannot
be reached, or refuses a start-up step that is not retried, it reports ``PAUSED <reason>`` and
exits with :data:`EXIT_REDIS_UNAVAILABLE` (75, ``EX_TEMPFAIL``): the supervisor restarts it
with backoff and never counts that towards its crash loop.

Once the event loop has returned, the process exits at once (:func:`os._exit`): a thread still
running a plain handler (the thread pool's threads are not daemons) cannot hold a stopped or
recycled worker alive.

When the supervisor is gone (EOF on stdin, or SIGHUP, which Linux sends on the parent's death:
a backstop for a pipe whose other end leaked into another process), the worker stops at once:
it starts nothing new, cancels the handlers still running after
:data:`ORPHAN_GRACE_SECONDS`, releases what it holds for other workers to take at once, and
exits; whatever happens, it is gone :data:`ORPHAN_EXIT_SECONDS` after the supervisor.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import traceback
from typing import NoReturn, TextIO

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec

from runtime.app import App, load_app
from runtime.errors import AgentsWorkerError
from runtime.log import configure_logging, get_logger
from runtime.redis.connection import open_redis
from runtime.settings import Settings, load_settings
from runtime.worker.consumer import Worker
from runtime.worker.faults import classify, describe

__all__ = [
    "EXIT_REDIS_UNAVAILABLE",
    "ORPHAN_EXIT_SECONDS",
    "ORPHAN_GRACE_SECONDS",
    "consumer_name",
    "main",
    "new_instance_id",
]

log = get_logger(__name__)

EXIT_FAILED = 1
EXIT_ORPHANED = 1
EXIT_INTERRUPTED = 130
EXIT_REDIS_UNAVAILABLE = 75
"""Redis could not be reached, or refused the start-up, before READY (``EX_TEMPFAIL``)."""

ORPHAN_GRACE_SECONDS = 0.5
"""Once the supervisor is gone, handlers in flight get this long before they are cancelled."""
ORPHAN_EXIT_SECONDS = 2.0
"""Once the supervisor is gone, the process exits within this long, even with a blocked loop."""

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def new_instance_id() -> str:
    """A random id for one supervisor start (or one worker started by hand)."""
    return secrets.token_hex(4)


def consumer_name(slot: int, instance: str | None = None) -> str:
    """``<host>:<instance>:<slot>``: unique among live processes.

    The supervisor makes *instance* once per start (:func:`new_instance_id`), so a worker it
    restarts in a slot, after reaping the dead one before it, takes that one's pending entries
    back at once (under the same name); the workers of another supervisor on the same host
    (blue/green, a second Procfile line, the orphans of a killed supervisor) never share a
    name. Without *instance* a fresh one is made: a worker started by hand is unique too.
    """
    return f"{socket.gethostname()}:{instance or new_instance_id()}:{slot}"


def _status_channel(use_stdout: bool) -> TextIO | None:
    """Keep stdout for status lines; point fd 1 at stderr so stray prints cannot corrupt them."""
    if not use_stdout:
        return None
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def _say(channel: TextIO | None, line: str) -> None:
    if channel is not None:
        # the supervisor may be gone: the liveness pipe tells us, not a failed write
        with contextlib.suppress(OSError, ValueError):
            channel.write(" ".join(line.split()) + "\n")  # one line whatever the reason holds


def _fault_line(reason: str | None) -> str:
    return "RESUMED" if reason is None else f"PAUSED {reason}"


class _Liveness:
    """The supervisor's liveness: EOF on our stdin (or SIGHUP) means it is gone."""

    def __init__(self) -> None:
        self.gone = anyio.Event()
        self._exit_armed = threading.Lock()

    def watch(self, fd: int) -> None:
        """Block a daemon thread on *fd*; at EOF arm the exit and wake the event loop."""
        token = anyio.lowlevel.current_token()
        thread = threading.Thread(
            target=self._wait_eof, args=(fd, token), name="supervisor-liveness", daemon=True
        )
        thread.start()

    def _wait_eof(self, fd: int, token: anyio.lowlevel.EventLoopToken) -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):
                pass
        self.arm_exit()  # before waking the loop: it may be blocked by a handler
        with contextlib.suppress(anyio.RunFinishedError):
            anyio.from_thread.run_sync(self.gone.set, token=token)

    def arm_exit(self) -> None:
        """Exit the process :data:`ORPHAN_EXIT_SECONDS` from now, whatever the loop does."""
        if self._exit_armed.acquire(blocking=False):
            timer = threading.Timer(ORPHAN_EXIT_SECONDS, _exit_orphaned)
            timer.daemon = True
            timer.start()


def _exit_orphaned() -> None:
    log.warning("worker.orphan_exit", pid=os.getpid())
    os._exit(EXIT_ORPHANED)


def _set_parent_death_signal() -> None:
    """Have Linux send SIGHUP when our parent (the supervisor) dies; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGHUP), 0, 0, 0)


async def _serve(app: App, settings: Settings, consumer: str, channel: TextIO | None) -> int:
    liveness: _Liveness | None = None
    if channel is not None:
        liveness = _Liveness()
        liveness.watch(sys.stdin.fileno())
    ready: list[bool] = []
    try:
        return await _work(app, settings, consumer, channel, liveness, ready)
    except Exception as exc:  # an ExceptionGroup too: the start-up runs in task groups
        reason = None if ready else _redis_fault(exc)
        if reason is None:
            raise
    _say(channel, f"PAUSED {reason}")
    (log.debug if channel is not None else log.warning)(
        "worker.redis_unavailable", reason=reason, exit_status=EXIT_REDIS_UNAVAILABLE
    )
    return EXIT_REDIS_UNAVAILABLE


def _redis_fault(exc: BaseException) -> str | None:
    """The reason, when *exc* (each exception of a group) is a Redis fault; else ``None``."""
    if isinstance(exc, BaseExceptionGroup):
        reasons = [_redis_fault(inner) for inner in exc.exceptions]
        return reasons[0] if reasons and None not in reasons else None
    # translated at the edge (runtime.errors.RedisError): the cause is redis-py's error
    kind = classify(exc) or (None if exc.__cause__ is None else classify(exc.__cause__))
    return None if kind is None else describe(kind)


async def _work(
    app: App,
    settings: Settings,
    consumer: str,
    channel: TextIO | None,
    liveness: _Liveness | None,
    ready: list[bool],
) -> int:
    async with open_redis(settings) as conn:
        worker = Worker(
            app,
            settings,
            conn.client,
            consumer=consumer,
            keys=conn.keys,
            on_recycle=lambda reason: _say(channel, f"RECYCLE {reason}"),
            on_fault=lambda reason: _say(channel, _fault_line(reason)),
            on_busy=lambda: _say(channel, "BUSY"),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_signals, worker, liveness)
            if channel is not None:
                every = settings.observability.sample_interval_seconds
                tg.start_soon(_report_runs, worker, channel, every)
            if liveness is not None:
                tg.start_soon(_stop_when_orphaned, worker, liveness)
            async with anyio.create_task_group() as serving:
                await serving.start(worker.run)
                ready.append(True)
                _say(channel, f"READY {os.getpid()}")
            tg.cancel_scope.cancel()  # worker.run returned: drained and released
    return 0


async def _report_runs(worker: Worker, channel: TextIO, every: float) -> None:
    """``RUNS <n>`` (entries handled so far) every *every* seconds while it changes."""
    said = 0
    while True:
        await anyio.sleep(every)
        if worker.stats.handled != said:
            said = worker.stats.handled
            _say(channel, f"RUNS {said}")


async def _stop_when_orphaned(worker: Worker, liveness: _Liveness) -> None:
    await liveness.gone.wait()
    liveness.arm_exit()
    log.warning("worker.orphaned", consumer=worker.consumer, exit_within=ORPHAN_EXIT_SECONDS)
    worker.stop("supervisor gone", grace=ORPHAN_GRACE_SECONDS)


async def _watch_signals(worker: Worker, liveness: _Liveness | None) -> None:
    watched = [signal.SIGTERM, signal.SIGINT]
    if liveness is not None:
        watched.append(signal.SIGHUP)  # the parent-death signal
    with anyio.open_signal_receiver(*watched) as signals:
        if _early_signal:
            worker.stop(f"signal {signal.Signals(_early_signal[0]).name} during start-up")
        async for signum in signals:
            if signum == signal.SIGHUP and liveness is not None:
                liveness.arm_exit()
                liveness.gone.set()
            elif worker.stop_reason is None:
                worker.stop(f"signal {signal.Signals(signum).name}")
            else:
                log.warning("worker.exit_now", signal=signal.Signals(signum).name)
                os._exit(EXIT_INTERRUPTED)


_early_signal: list[int] = []


def _remember_signal(signum: int, frame: object) -> None:
    """A signal before the graceful handler is installed: acted on as soon as it is."""
    _early_signal.append(signum)


def _read_settings_line() -> Settings:
    """The supervisor's settings: one line of JSON (the pipe then stays open, unread)."""
    line = sys.stdin.buffer.readline()
    if not line.endswith(b"\n"):
        raise AgentsWorkerError("no settings on stdin: the supervisor is gone")
    return msgspec.json.decode(line, type=Settings)


def main(argv: list[str] | None = None) -> NoReturn:
    """Run a worker process; never returns: the process exits with the worker's status."""
    try:
        code = _main(argv)
    except SystemExit as exc:  # argparse: --help, a bad argument
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILED
    except BaseException:
        traceback.print_exc()
        code = EXIT_FAILED
    # anyio's worker threads are not daemons: one still running a plain handler (past its
    # grace period) would keep a stopped process alive after the loop returned
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def _main(argv: list[str] | None) -> int:
    # replaced by the graceful handler once the worker runs (_watch_signals)
    signal.signal(signal.SIGTERM, _remember_signal)
    signal.signal(signal.SIGINT, _remember_signal)
    parser = argparse.ArgumentParser(prog="python -m runtime.worker")
    parser.add_argument("--app", required=True, help="module:object of the App")
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--consumer", help="consumer name [default: <host>:<random>:<slot>]")
    parser.add_argument(
        "--settings-stdin",
        action="store_true",
        help="read the settings as one JSON line on stdin, then exit when stdin closes",
    )
    args = parser.parse_args(argv)
    try:
        if args.settings_stdin:
            _set_parent_death_signal()  # SIGHUP's default action kills us until we run
            settings = _read_settings_line()
        else:
            settings = load_settings()
        app = load_app(args.app)
        # after the app: a logging setup of its own, made at import, is kept (not overridden)
        configure_logging(settings.observability.log_level, settings.observability.log_format)
        # The app and its libraries are loaded for good: keep the collector from walking them
        # again and again (full collections of the SDK's objects stall runs for 100+ ms).
        gc.freeze()
        channel = _status_channel(args.settings_stdin)
        consumer = args.consumer or consumer_name(args.slot)
        return anyio.run(_serve, app, settings, consumer, channel)
    except AgentsWorkerError as exc:
        sys.stderr.write(f"worker {args.slot}: error: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
