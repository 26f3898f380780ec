"""A thread that writes a :class:`~runtime.observability.spans.TraceRecorder` to Redis, for
processes without an event loop of the runtime's (the standalone
:class:`~runtime.observability.tracing.RedisTracingProcessor`).

    writer = TraceWriterThread(recorder, settings, "redis://localhost:6379")
    writer.flush()        # blocks until what is buffered is written (raises RedisError)
    writer.stop(10.0)     # a last flush, then the thread ends
"""

from __future__ import annotations

import threading

import anyio
import redis.asyncio
from anyio.from_thread import BlockingPortal

from runtime.errors import ConfigError
from runtime.log import get_logger
from runtime.observability.spans import TraceRecorder
from runtime.redis.connection import create_client
from runtime.settings import Settings

__all__ = ["TraceWriterThread"]

log = get_logger(__name__)


class TraceWriterThread:
    """Runs the recorder's flusher in a daemon thread with its own event loop and Redis
    client. A daemon thread, so that a process that never stops it still exits (the SDK's
    exit handler then flushes through it: it runs while daemon threads still do)."""

    def __init__(self, recorder: TraceRecorder, settings: Settings, url: str) -> None:
        self.recorder = recorder
        self.settings = settings
        self.url = url
        self.portal: BlockingPortal | None = None
        self.client: redis.asyncio.Redis | None = None
        self._stop: anyio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._thread_main, name="aw-traces", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise ConfigError(f"the trace writer could not start: {self._failure}")

    def _thread_main(self) -> None:
        try:
            anyio.run(self._main)
        except BaseException as exc:  # reported to the constructor, or logged
            self._failure = exc
            log.exception("tracing.writer_failed")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        client = create_client(self.settings.redis, self.url)
        self._stop = anyio.Event()
        try:
            async with BlockingPortal() as portal, anyio.create_task_group() as tg:
                await tg.start(self.recorder.run, client)
                self.client, self.portal = client, portal
                self._ready.set()
                await self._stop.wait()
                tg.cancel_scope.cancel()  # recorder.run flushes once more on its way out
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    def flush(self) -> None:
        if self.portal is not None and self.client is not None:
            self.portal.call(self.recorder.flush, self.client)

    def stop(self, timeout: float) -> None:
        if self.portal is not None and self._stop is not None:
            self.portal.call(self._stop.set)
        self._thread.join(timeout)
