"""The live feed of a page: server-sent events, one reader per connection.

    GET /api/stream                    overview, runs, charts   (the overview page)
    GET /api/stream?status=failed      … with the runs table filtered
    GET /api/stream?run=<id>           run                      (a run's page)
    GET /api/stream?dlq=<target>       dlq                      (the dead-letter page)

Each connection has one loop on the server that reads Redis at most once per
``TICK_SECONDS`` and sends a section (``event: <name>``, ``data: <json>``) only when its bytes
changed since it was last sent; the browser holds one ``EventSource`` and never polls. A read
that fails sends a ``problem`` event (the page shows it) and the next good read sends every
section again. The recent runs are read again only when the lifecycle feed's newest entry
changed; the charts at most every :data:`CHARTS_SECONDS`, or every
:data:`CHARTS_IDLE_SECONDS` when no run changed (the minute buckets move on).

A read that fails for another reason (a bug, data no reader expected) is a ``problem`` event
too, never the end of the stream (the browser would reconnect every few seconds); each problem
is logged once, when it begins or changes. A run's page is compared without its clock
(``now``): a run that is running but not changing sends nothing. When the server shuts down
(``WebState.closing``) the feed ends at once, and with it the response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

import anyio
import msgspec

from runtime.errors import AgentsWorkerError
from runtime.log import get_logger
from runtime.web.dashboard.bounds import TICK_SECONDS
from runtime.web.dashboard.readers import DashboardReader
from runtime.web.dashboard.views import encode

__all__ = ["CHARTS_IDLE_SECONDS", "CHARTS_SECONDS", "KEEPALIVE_SECONDS", "Feed", "FeedQuery"]

log = get_logger(__name__)

CHARTS_SECONDS = 5.0
CHARTS_IDLE_SECONDS = 30.0
KEEPALIVE_SECONDS = 15.0
"""A comment line is sent after this long without an event (proxies close idle streams)."""

Sections = dict[str, bytes]
Section = tuple[bytes, bytes]
"""What is compared to tell a change (the view without its clock), and what is sent."""


class FeedQuery(msgspec.Struct, frozen=True, kw_only=True):
    """What one page follows."""

    run: str | None = None
    dlq: str | None = None
    """A target ("" for the counts only): the dead-letter page."""
    status: str | None = None
    agent: str | None = None
    limit: int = 50


class Feed:
    """The events of one connection (iterate :meth:`events`; it ends when cancelled, or at
    the next tick once *closing* is set: the server is shutting down)."""

    running: ClassVar[int] = 0
    """Feeds of this process reading now (one per open connection)."""

    def __init__(
        self,
        reader: DashboardReader,
        query: FeedQuery,
        *,
        tick: float = TICK_SECONDS,
        closing: anyio.Event | None = None,
    ) -> None:
        self.reader = reader
        self.query = query
        self.tick = tick
        self.closing = closing
        self.reads = 0
        """Ticks that read Redis (for tests: at most one per *tick*)."""
        self._head: str | None = None
        self._runs: bytes | None = None
        self._charts_at = -CHARTS_IDLE_SECONDS
        self._charts_head: str | None = None
        self._problem: bytes | None = None
        """The problem last logged (and sent): a problem goes on, silently."""

    async def events(self) -> AsyncIterator[bytes]:
        """``retry``, then each changed section as it changes, and keep-alive comments."""
        Feed.running += 1
        try:
            yield b"retry: 3000\n\n"
            sent: Sections = {}
            quiet_since = anyio.current_time()
            while not self._closing():
                began = anyio.current_time()
                changed = await self._changes(sent)
                for name, body in changed.items():
                    yield b"event: " + name.encode() + b"\ndata: " + body + b"\n\n"
                if changed:
                    quiet_since = began
                elif began - quiet_since >= KEEPALIVE_SECONDS:
                    quiet_since = began
                    yield b": keep-alive\n\n"
                await self._pause(self.tick - (anyio.current_time() - began))
        finally:
            Feed.running -= 1

    def _closing(self) -> bool:
        return self.closing is not None and self.closing.is_set()

    async def _pause(self, delay: float) -> None:
        """Wait *delay* seconds, or until the server closes."""
        if self.closing is None:
            await anyio.sleep(max(0.0, delay))
            return
        with anyio.move_on_after(max(0.0, delay)):
            await self.closing.wait()

    async def _changes(self, sent: Sections) -> Sections:
        """The sections whose bytes differ from those last *sent* (updated in place: *sent*
        holds what was compared, the view without its clock)."""
        self.reads += 1
        try:
            sections = await self._read()
        except Exception as exc:  # whatever it is, the page says so and the feed goes on
            problem = encode({"message": _message(exc)})
            if problem != self._problem:  # logged once, when the problem begins or changes
                if isinstance(exc, AgentsWorkerError):
                    log.warning("dashboard.read_failed", error=str(exc))
                else:
                    log.exception("dashboard.read_failed", error=repr(exc))
            return self._failed(sent, problem)
        self._problem = None
        sent.pop("problem", None)
        changed = {}
        for name, (same, body) in sections.items():
            if sent.get(name) != same:
                sent[name] = same
                changed[name] = body
        return changed

    def _failed(self, sent: Sections, problem: bytes) -> Sections:
        """The ``problem`` section (nothing when it is the problem last sent)."""
        if problem == self._problem:
            return {}
        self._problem = problem
        sent.clear()  # everything goes again once the page can be read
        self._runs = None
        self._charts_at = -CHARTS_IDLE_SECONDS
        sent["problem"] = problem
        return {"problem": problem}

    async def _read(self) -> dict[str, Section]:
        query = self.query
        if query.run is not None:
            detail = await self.reader.run(query.run)
            return {"run": (encode(msgspec.structs.replace(detail, now=0.0)), encode(detail))}
        if query.dlq is not None:
            return {"dlq": _same(encode(await self.reader.dlq(query.dlq or None)))}
        sections = {"overview": _same(encode(await self.reader.overview()))}
        head = await self.reader.head()
        if self._runs is None or head != self._head:
            page = await self.reader.runs(limit=query.limit, status=query.status, agent=query.agent)
            self._runs = encode(page)
        sections["runs"] = _same(self._runs)
        charts = await self._charts(head)
        if charts is not None:
            sections["charts"] = _same(charts)
        self._head = head
        return sections

    async def _charts(self, head: str | None) -> bytes | None:
        """The charts when due (``None``: keep what was sent)."""
        now = anyio.current_time()
        age = now - self._charts_at
        due = age >= CHARTS_IDLE_SECONDS or (head != self._charts_head and age >= CHARTS_SECONDS)
        if not due:
            return None
        self._charts_at, self._charts_head = now, head
        return encode(await self.reader.charts())


def _same(body: bytes) -> Section:
    return body, body


def _message(exc: Exception) -> str:
    if isinstance(exc, AgentsWorkerError):
        return f"cannot read Redis: {exc}"
    return f"cannot show this page ({type(exc).__name__}: {exc}); the server's log has more"
