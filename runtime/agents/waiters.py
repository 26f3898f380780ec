"""Waiting on many runs with one connection: one reader per AgentClient, no background task.

Every wait on a run's events (``RunHandle.result()``, ``RunHandle.events()``, the rest of
``AgentClient.run_and_wait()``) registers the run's event stream and its position. One of
the waiting tasks is the *reader*: it blocks on every registered stream at once (``XREAD
BLOCK … STREAMS k1 … kn``), hands each waiter what it read and wakes it. When its own wait
ends it hands the role to a task still waiting. So a thousand waits hold one connection, not
a thousand (a pool of ``redis.max_connections`` would be exhausted at the 65th).

A wait that joins while the reader is blocked wakes it with an entry on this client's
wake-up stream (``Keys.run_waiters``, read in the same XREAD): the reader returns at once
and reads again with the new stream in, so no wait is served a block period late.

A client other than ``redis.asyncio.Redis`` (a cluster client: run streams live in
different slots, and one XREAD cannot span slots) reads each wait on its own.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
import anyio.lowlevel
import redis.asyncio
import redis.exceptions

from runtime.agents.protocol import RunEvent
from runtime.agents.records import decode_events
from runtime.agents.runs import RunStore
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.redis.connection import Batch, first_error, run_batch, translate_errors

__all__ = ["COUNT", "RunWaiters"]

COUNT = 500
"""Events read per stream at a time: a batch of this many may be cut short (more follow)."""
log = get_logger(__name__)

BLOCK_MS = 1000
"""The longest single blocked read."""
_WAKE_TTL = 60  # seconds the wake-up stream outlives its last wake-up


def _position(stream_id: str) -> tuple[int, int] | None:
    """A stream id (``"1700000000000-3"`` or ``"17"``) as a comparable pair; ``None`` when
    it is not one (``"$"``, garbage: such a wait reads on its own, Redis judges the id)."""
    first, _, second = stream_id.partition("-")
    if not first.isdigit() or not (second.isdigit() or second == ""):
        return None
    return int(first), int(second or 0)


class _Wait:
    """One task waiting for events of one run after *after*."""

    __slots__ = ("after", "deadline", "events", "key", "more", "position", "signal")

    def __init__(self, key: str, after: str, position: tuple[int, int], deadline: float) -> None:
        self.key = key
        self.after = after
        self.position = position
        self.deadline = deadline
        self.events: list[RunEvent] | None = None  # set when served
        self.more = False  # the batch served was cut at COUNT: more events follow at once
        # set when served, or asked to take the reader's role (made when it first waits)
        self.signal: anyio.Event | None = None


class RunWaiters:
    """The waits of one AgentClient on its runs' event streams, served by one reader."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, store: RunStore) -> None:
        self._client = client
        self._keys = keys
        self._store = store
        self._shared = isinstance(client, redis.asyncio.Redis)
        self._wake_key = keys.run_waiters(uuid.uuid4().hex)
        self._wake_after = "0-0"
        self._waits: dict[_Wait, None] = {}  # in arrival order
        self._reader: _Wait | None = None
        # the read in flight: the position it reads each stream from (empty: none in flight)
        self._reading: dict[str, tuple[int, int]] = {}
        self._woken = False  # a wake-up was sent for the read in flight

    async def next(
        self, run_id: str, after: str = "0-0", *, within: float
    ) -> tuple[list[RunEvent], bool]:
        """The events of *run_id* after the id *after*, waiting up to *within* seconds for
        one (none when none came), and whether more follow at once (the batch was cut)."""
        position = _position(after)
        if not self._shared or position is None:
            return await self._read_alone(run_id, after, within)
        deadline = time.monotonic() + within  # the event loop's clock
        wait = _Wait(self._keys.run_events(run_id), after, position, deadline)
        self._waits[wait] = None
        try:
            while wait.events is None and time.monotonic() < deadline:
                if self._reader is None:
                    await self._read(wait)
                    continue
                wait.signal = anyio.Event()
                await self._wake(wait)
                with anyio.move_on_after(deadline - time.monotonic()):
                    await wait.signal.wait()
        finally:
            del self._waits[wait]
            if self._reader is None:
                self._pass_on()
        return wait.events or [], wait.more

    async def _read_alone(
        self, run_id: str, after: str, within: float
    ) -> tuple[list[RunEvent], bool]:
        block_ms = max(1, int(within * 1000))
        events = await self._store.read_events(run_id, after, block_ms=block_ms, count=COUNT)
        return events, len(events) >= COUNT

    def _pass_on(self) -> None:
        """Hand the reader's role to the waiting task with the most time left (it reads when
        it runs): a reader whose time is nearly up would read briefly and hand on again."""
        waiting = [(w.deadline, w.signal) for w in self._waits if w.events is None and w.signal]
        if waiting:
            max(waiting, key=lambda pair: pair[0])[1].set()

    async def _read(self, me: _Wait) -> None:
        """Be the reader until *me* is served or its time is up."""
        self._reader = me
        try:
            while True:
                left = me.deadline - time.monotonic()
                if left <= 0:
                    return
                await self._read_once(max(1, min(BLOCK_MS, int(left * 1000))))
                if me.events is not None:
                    return
                # the waiters just served register again before the next read
                await anyio.lowlevel.checkpoint()
        finally:
            self._reader = None

    async def _read_once(self, block_ms: int) -> None:
        """One blocked read of every waiting stream (each from its earliest position) and
        of the wake-up stream; what it brings is handed to the waits."""
        streams: dict[str, tuple[tuple[int, int], str]] = {}
        for wait in self._waits:
            if wait.events is None:
                known = streams.get(wait.key)
                if known is None or wait.position < known[0]:
                    streams[wait.key] = (wait.position, wait.after)
        batch = Batch()
        ids = {key: after for key, (_, after) in streams.items()}
        batch.xread({**ids, self._wake_key: self._wake_after}, count=COUNT, block=block_ms)
        self._reading = {key: position for key, (position, _) in streams.items()}
        self._woken = False
        try:
            with translate_errors("read run events"):
                (reply,) = await run_batch(self._client, batch)
                first_error([reply])
            self._deliver(reply, {key: position for key, (position, _) in streams.items()})
        finally:
            self._reading = {}

    def _deliver(self, reply: Any, read_from: dict[str, tuple[int, int]]) -> None:
        """Hand each waiting wait the events read after its position, if the read covered
        it (its stream, from no later than its position)."""
        read: dict[str, tuple[list[RunEvent], bool]] = {}
        for stream, entries in _pairs(reply):
            key = stream.decode()
            if key == self._wake_key:
                self._wake_after = entries[-1][0].decode()
            else:
                read[key] = (decode_events([(stream, entries)]), len(entries) >= COUNT)
        for wait in self._waits:
            if wait.events is not None or wait.key not in read:
                continue
            if wait.position < read_from[wait.key]:
                continue  # joined later from an earlier position: the next read serves it
            events, cut = read[wait.key]
            if wait.position != read_from[wait.key]:
                events = [e for e in events if (_position(e.id or "") or (0, 0)) > wait.position]
            if events:
                wait.events, wait.more = events, cut
                if wait.signal is not None:
                    wait.signal.set()

    async def _wake(self, wait: _Wait) -> None:
        """Make a blocked read that does not cover *wait* return now (once per read)."""
        if not self._reading or self._woken:
            return
        covered = self._reading.get(wait.key)
        if covered is not None and covered <= wait.position:
            return  # the read in flight returns when this stream has news, and serves it
        self._woken = True
        batch = Batch()
        batch.xadd(self._wake_key, {"wake": 1}, maxlen=1, approximate=False)
        batch.expire(self._wake_key, _WAKE_TTL)
        try:
            first_error(await run_batch(self._client, batch))
        except redis.exceptions.RedisError as exc:
            # a full or read-only Redis refuses the write, but reading still works: the read
            # in flight returns within its block period and the next one covers this wait
            self._woken = False
            log.info("runs.reader_not_woken", error=str(exc))


def _pairs(reply: Any) -> Any:
    """(stream, entries) pairs of an XREAD reply as Redis sent it (RESP2 list, RESP3 map)."""
    if not reply:
        return ()
    return reply.items() if isinstance(reply, dict) else reply
