"""A worker process: ``python -m runtime.worker --app module:object [--slot N]``.

Started by the supervisor, which writes the effective settings as JSON on its stdin and reads
status lines on its stdout (``READY``, ``RECYCLE <reason>``); the process's own output goes to
stderr. Run by hand (no ``--settings-stdin``) it loads settings like the CLI does.

Signals: the first SIGTERM or SIGINT drains gracefully and exits 0; a second exits at once.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import socket
import sys
from typing import TextIO

import anyio
import msgspec

from runtime.app import App, load_app
from runtime.errors import AgentsWorkerError
from runtime.log import configure_logging, get_logger
from runtime.redis.connection import open_redis
from runtime.settings import Settings, load_settings
from runtime.worker.consumer import Worker

__all__ = ["consumer_name", "main"]

log = get_logger(__name__)

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def consumer_name(slot: int) -> str:
    """Stable per host and slot, so a restarted worker recovers its predecessor's entries."""
    return f"{socket.gethostname()}:{slot}"


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
        # the supervisor may be gone; the work goes on until we are told to stop
        with contextlib.suppress(OSError):
            channel.write(line + "\n")


async def _serve(app: App, settings: Settings, consumer: str, channel: TextIO | None) -> int:
    async with open_redis(settings) as conn:
        worker = Worker(
            app,
            settings,
            conn.client,
            consumer=consumer,
            keys=conn.keys,
            on_recycle=lambda reason: _say(channel, f"RECYCLE {reason}"),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_signals, worker)
            async with anyio.create_task_group() as serving:
                await serving.start(worker.run)
                _say(channel, f"READY {os.getpid()}")
            tg.cancel_scope.cancel()  # worker.run returned: drained and released
    return 0


async def _watch_signals(worker: Worker) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        if _early_signal:
            worker.stop(f"signal {signal.Signals(_early_signal[0]).name} during start-up")
        async for signum in signals:
            if worker.stop_reason is None:
                worker.stop(f"signal {signal.Signals(signum).name}")
            else:
                log.warning("worker.exit_now", signal=signal.Signals(signum).name)
                os._exit(EXIT_INTERRUPTED)


_early_signal: list[int] = []


def _remember_signal(signum: int, frame: object) -> None:
    """A signal before the graceful handler is installed: acted on as soon as it is."""
    _early_signal.append(signum)


def main(argv: list[str] | None = None) -> int:
    # replaced by the graceful handler once the worker runs (_watch_signals)
    signal.signal(signal.SIGTERM, _remember_signal)
    signal.signal(signal.SIGINT, _remember_signal)
    parser = argparse.ArgumentParser(prog="python -m runtime.worker")
    parser.add_argument("--app", required=True, help="module:object of the App")
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--consumer", help="consumer name [default: <host>:<slot>]")
    parser.add_argument("--settings-stdin", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.settings_stdin:
            settings = msgspec.json.decode(sys.stdin.buffer.read(), type=Settings)
        else:
            settings = load_settings()
        configure_logging(settings.observability.log_level, settings.observability.log_format)
        app = load_app(args.app)
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
