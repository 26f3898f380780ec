"""The in-flight table of one worker: its K slots and the hand-off of entries to handlers.

An entry is *in flight* from the moment it is admitted (read, reclaimed or recovered) until
its handler loop is done with it; its lease is renewed all that time and it fills a slot.
A succeeded entry whose ack waits for the ack loop's next flush is *acking*: its slot is free,
but it is still held (its lease renewed) until the ack is written.

An entry held either way is never admitted again: a reclaim that returns one (the event loop
was blocked past the lease, so our own reclaimer found it idle) leaves it alone. The check is
a dict lookup, with no round trip.
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
        self.acking: dict[tuple[bytes, bytes], Entry] = {}
        # Entries read but not started, and the idle handler loops waiting for one: each new
        # entry wakes one loop, not all of them (this hand-off is the hot path).
        self._queue: deque[Entry] = deque()
        self._idle: deque[anyio.Event] = deque()
        self._freed: anyio.Event | None = None

    @property
    def free(self) -> int:
        return self.concurrency - len(self.inflight)

    def get(self, stream: bytes, entry_id: bytes) -> Entry | None:
        """The entry held under this id (in flight or acking), if any."""
        key = (stream, entry_id)
        return self.inflight.get(key) or self.acking.get(key)

    def held(self) -> list[Entry]:
        """Every entry held: in flight or acking."""
        return [*self.inflight.values(), *self.acking.values()]

    def admit(
        self, stream: bytes, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
    ) -> bool:
        """Queue a delivered entry for a handler; ``False`` (nothing done) when it is in
        flight already."""
        key = (stream, entry_id)
        if key in self.inflight or key in self.acking:
            return False
        entry = Entry(stream, entry_id, fields, deliveries)
        self.inflight[key] = entry
        self._queue.append(entry)
        if self._idle:
            self._idle.popleft().set()
        return True

    def take(self, stopping: anyio.Event) -> Entry | None:
        """The next entry to start, or ``None`` (then :meth:`wait_ready`); none once
        *stopping* is set: an entry not started before shutdown stays in flight and is
        released with the rest."""
        if self._queue and not stopping.is_set():
            return self._queue.popleft()
        return None

    async def wait_ready(self) -> None:
        """Wait until an entry is admitted (one waiting loop is woken per entry)."""
        wake = anyio.Event()
        self._idle.append(wake)
        await wake.wait()

    def done(self, entry: Entry) -> None:
        """*entry* is settled (or given up, or its ack is queued): its slot is free."""
        key = (entry.stream, entry.entry_id)
        self.inflight.pop(key, None)
        if entry.ack_queued:
            self.acking[key] = entry
        if self._freed is not None:  # only when someone waits: no Event per entry
            self._freed.set()
            self._freed = None

    def acked(self, stream: bytes, ids: list[bytes]) -> None:
        """The acks of *ids* are written: no longer held."""
        for entry_id in ids:
            self.acking.pop((stream, entry_id), None)

    async def wait_freed(self) -> None:
        """Wait until a slot is freed."""
        if self._freed is None:
            self._freed = anyio.Event()
        await self._freed.wait()

    def started(self) -> list[Entry]:
        """Entries whose handler has started."""
        return [e for e in self.inflight.values() if e.scope is not None]
