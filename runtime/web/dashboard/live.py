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


class FeedQuery(msgspec.Struct, frozen=True, kw_only=True):
    """What one page follows."""

    run: str | None = None
    dlq: str | None = None
    """A target ("" for the counts only): the dead-letter page."""
    status: str | None = None
    agent: str | None = None
    limit: int = 50


class Feed:
    """The events of one connection (iterate :meth:`events`; it ends when cancelled)."""

    running: ClassVar[int] = 0
    """Feeds of this process reading now (one per open connection)."""

    def __init__(
        self, reader: DashboardReader, query: FeedQuery, *, tick: float = TICK_SECONDS
    ) -> None:
        self.reader = reader
        self.query = query
        self.tick = tick
        self.reads = 0
        """Ticks that read Redis (for tests: at most one per *tick*)."""
        self._head: str | None = None
        self._runs: bytes | None = None
        self._charts_at = -CHARTS_IDLE_SECONDS
        self._charts_head: str | None = None

    async def events(self) -> AsyncIterator[bytes]:
        """``retry``, then each changed section as it changes, and keep-alive comments."""
        Feed.running += 1
        try:
            yield b"retry: 3000\n\n"
            sent: Sections = {}
            quiet_since = anyio.current_time()
            while True:
                began = anyio.current_time()
                changed = await self._changes(sent)
                for name, body in changed.items():
                    yield b"event: " + name.encode() + b"\ndata: " + body + b"\n\n"
                if changed:
                    quiet_since = began
                elif began - quiet_since >= KEEPALIVE_SECONDS:
                    quiet_since = began
                    yield b": keep-alive\n\n"
                await anyio.sleep(max(0.0, self.tick - (anyio.current_time() - began)))
        finally:
            Feed.running -= 1

    async def _changes(self, sent: Sections) -> Sections:
        """The sections whose bytes differ from those last *sent* (updated in place)."""
        self.reads += 1
        try:
            sections = await self._read()
        except AgentsWorkerError as exc:
            log.warning("dashboard.read_failed", error=str(exc))
            problem = encode({"message": f"cannot read Redis: {exc}"})
            if sent.get("problem") == problem:
                return {}
            sent.clear()  # everything goes again once Redis answers
            self._runs = None
            self._charts_at = -CHARTS_IDLE_SECONDS
            sent["problem"] = problem
            return {"problem": problem}
        sent.pop("problem", None)
        changed = {name: body for name, body in sections.items() if sent.get(name) != body}
        sent.update(changed)
        return changed

    async def _read(self) -> Sections:
        query = self.query
        if query.run is not None:
            return {"run": encode(await self.reader.run(query.run))}
        if query.dlq is not None:
            return {"dlq": encode(await self.reader.dlq(query.dlq or None))}
        sections = {"overview": encode(await self.reader.overview())}
        head = await self.reader.head()
        if self._runs is None or head != self._head:
            page = await self.reader.runs(limit=query.limit, status=query.status, agent=query.agent)
            self._runs = encode(page)
        sections["runs"] = self._runs
        charts = await self._charts(head)
        if charts is not None:
            sections["charts"] = charts
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
