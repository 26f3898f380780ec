"""The in-flight table of one worker: its K slots and the hand-off of entries to handlers.

An entry is *in flight* from the moment it is admitted (read, reclaimed or recovered) until
its handler loop is done with it; its lease is renewed all that time and it fills a slot.
An entry already in flight is never admitted again: a reclaim that returns one (the event
loop was blocked past the lease, so our own reclaimer found it idle) leaves the running copy
alone. The check is a dict lookup, with no round trip.
"""

from __future__ import annotations

from collections import deque

import anyio

from runtime.worker.outcome import Entry

__all__ = ["Slots"]


class Slots:
    """Entries in flight, the queue of those not started yet, and the idle handler loops."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.inflight: dict[tuple[bytes, bytes], Entry] = {}
        # Entries read but not started, and the idle handler loops waiting for one: each new
        # entry wakes one loop, not all of them (this hand-off is the hot path).
        self._queue: deque[Entry] = deque()
        self._idle: deque[anyio.Event] = deque()
        self._freed: anyio.Event | None = None

    @property
    def free(self) -> int:
        return self.concurrency - len(self.inflight)

    def get(self, stream: bytes, entry_id: bytes) -> Entry | None:
        """The entry in flight under this id, if any."""
        return self.inflight.get((stream, entry_id))

    def admit(
        self, stream: bytes, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
    ) -> bool:
        """Queue a delivered entry for a handler; ``False`` (nothing done) when it is in
        flight already."""
        key = (stream, entry_id)
        if key in self.inflight:
            return False
        entry = Entry(stream, entry_id, fields, deliveries)
        self.inflight[key] = entry
        self._queue.append(entry)
        if self._idle:
            self._idle.popleft().set()
        return True

    async def next(self, stopping: anyio.Event) -> Entry:
        """The next entry to start (waits for one; none once *stopping* is set: an entry not
        started before shutdown stays in flight and is released with the rest)."""
        while not self._queue or stopping.is_set():
            wake = anyio.Event()
            self._idle.append(wake)
            await wake.wait()
        return self._queue.popleft()

    def done(self, entry: Entry) -> None:
        """*entry* is settled (or given up): its slot is free."""
        self.inflight.pop((entry.stream, entry.entry_id), None)
        if self._freed is not None:  # only when someone waits: no Event per entry
            self._freed.set()
            self._freed = None

    async def wait_freed(self) -> None:
        """Wait until a slot is freed."""
        if self._freed is None:
            self._freed = anyio.Event()
        await self._freed.wait()

    def started(self) -> list[Entry]:
        """Entries whose handler has started."""
        return [e for e in self.inflight.values() if e.scope is not None]
