"""A TCP proxy in front of the test Redis that cuts a connection in the middle of a batch.

The tests of runs that must survive a dropped connection use it: the proxy lets Redis run
the first *k* commands of a chosen write (or all of them), waits for Redis to answer them,
and then closes the client's connection without passing the answers on — exactly what a
network failure at that point does: the client cannot know what ran.

    async with FaultyProxy(redis_url) as proxy:
        client = redis.asyncio.Redis.from_url(proxy.url)
        proxy.cut(b"run-7", after=2)   # the next write that names run-7: 2 commands run
        proxy.cut(b"run-7", b"run.completed")  # the write of its result: all of it runs
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import hiredis

__all__ = ["FaultyProxy"]


@dataclass
class _Cut:
    markers: tuple[bytes, ...]  # all of them are in the write
    after: int | None  # None: every command of the write

    def matches(self, commands: list[list[bytes]]) -> bool:
        return all(any(m in part for cmd in commands for part in cmd) for m in self.markers)


class FaultyProxy:
    """Forwards connections to Redis; :meth:`cut` arms one fault."""

    def __init__(self, redis_url: str) -> None:
        parts = urlsplit(redis_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._server: asyncio.Server | None = None
        self._armed: _Cut | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.fired = 0
        """How many faults happened."""
        self.url = ""

    async def __aenter__(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self, *markers: bytes, after: int | None = None) -> None:
        """The next client write that holds every one of *markers*: let Redis run its first
        *after* commands (all when ``None``), then close that connection unanswered."""
        self._armed = _Cut(markers, after)

    @property
    def armed(self) -> bool:
        return self._armed is not None

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        writers = [cwriter]
        try:
            sreader, swriter = await asyncio.open_connection(*self._target)
            writers.append(swriter)
            await _Link(self, creader, cwriter, sreader, swriter).run()
        except (ConnectionError, OSError):
            pass  # either side went away: so does the other
        finally:
            for writer in writers:
                writer.close()
            self._tasks.discard(task)

    def _take(self, commands: list[list[bytes]]) -> _Cut | None:
        cut = self._armed
        if cut is None or not cut.matches(commands):
            return None
        self._armed = None
        self.fired += 1
        return cut


class _Link:
    """One client connection and its connection to Redis."""

    def __init__(
        self,
        proxy: FaultyProxy,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        sreader: asyncio.StreamReader,
        swriter: asyncio.StreamWriter,
    ) -> None:
        self._proxy = proxy
        self._creader, self._cwriter = creader, cwriter
        self._sreader, self._swriter = sreader, swriter

    async def run(self) -> None:
        down = asyncio.ensure_future(self._replies())
        try:
            await self._requests()
        finally:
            down.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await down

    async def _requests(self) -> None:
        parser = hiredis.Reader()
        while data := await self._creader.read(1 << 16):
            parser.feed(data)
            commands = []
            while (command := parser.gets()) is not False:
                commands.append(command)
            cut = self._proxy._take(commands)
            if cut is None:
                self._swriter.write(b"".join(hiredis.pack_command(tuple(c)) for c in commands))
                await self._swriter.drain()
                continue
            sent = commands if cut.after is None else commands[: cut.after]
            self._swallow = len(sent)
            self._swallowed = asyncio.Event()
            if sent:
                self._swriter.write(b"".join(hiredis.pack_command(tuple(c)) for c in sent))
                await self._swriter.drain()
                await self._swallowed.wait()  # Redis ran them: their answers are dropped
            return  # the connection closes: the client gets no answer

    _swallow = 0
    _swallowed: asyncio.Event | None = None

    async def _replies(self) -> None:
        parser = hiredis.Reader()
        while data := await self._sreader.read(1 << 16):
            if not self._swallow:
                self._cwriter.write(data)
                await self._cwriter.drain()
                continue
            parser.feed(data)
            while self._swallow and parser.gets() is not False:
                self._swallow -= 1
            if not self._swallow and self._swallowed is not None:
                self._swallowed.set()
                return
