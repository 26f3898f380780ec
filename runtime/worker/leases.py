"""Leases on the entries in flight: renewed every third of a lease, at once after a blocked
event loop, and lost only when another consumer took the entry.

A worker whose event loop was blocked past a lease (a sync call in a handler, a long GC
pause) renews before its reclaimer claims anything; an entry that its own reclaimer claimed
meanwhile stays the one copy in flight (:mod:`runtime.worker.slots`), and is not counted lost.
"""

from __future__ import annotations

import anyio

from runtime.log import get_logger
from runtime.scripts import Scripts
from runtime.worker.outcome import Entry, WorkerStats
from runtime.worker.slots import Slots

__all__ = ["Leases"]

log = get_logger(__name__)

_RENEW_BATCH = 500


class Leases:
    """Renews the leases of one consumer's entries in flight."""

    def __init__(
        self,
        scripts: Scripts,
        *,
        group: str,
        consumer: str,
        lease_seconds: float,
        slots: Slots,
        stats: WorkerStats,
    ) -> None:
        self._scripts = scripts
        self._group = group
        self._consumer = consumer
        self._slots = slots
        self._stats = stats
        self.every = lease_seconds / 3
        self.renewed_at = 0.0
        """Event-loop time of the last successful renewal (its start): a renewal that failed
        (Redis unreachable…) leaves it, so the next one, when Redis is back, comes at once."""

    async def next_renewal(self) -> None:
        """Wait for the next renewal (timed from the last one: a loop that woke up late renews
        at once), then renew."""
        await anyio.sleep_until(self.renewed_at + self.every)
        await self.renew()

    async def renew_if_late(self) -> None:
        """Renew at once when the last renewal is overdue (the event loop was blocked)."""
        late = anyio.current_time() - self.renewed_at - self.every
        if late > self.every / 2:
            log.warning("lease.renewal_late", late=late)
            await self.renew()

    async def renew(self) -> None:
        began = anyio.current_time()
        by_stream: dict[bytes, list[bytes]] = {}
        for entry in self._slots.held():
            if not entry.lost:
                by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        for stream, ids in by_stream.items():
            for start in range(0, len(ids), _RENEW_BATCH):
                batch = ids[start : start + _RENEW_BATCH]
                lost = await self._scripts.renew(
                    keys=[stream], args=[self._group, self._consumer, *batch]
                )
                for entry_id in lost:
                    gone = self._slots.get(stream, entry_id)
                    # not pending because it was acked (by its handler, TaskContext.ack_in,
                    # which has yet to return; or by an ack flush we have yet to hear of), or
                    # settled by an outcome whose reply we have yet to hear of (that outcome
                    # tells whether the lease was lost): done with, not lost
                    if gone is not None and not (
                        gone.acked_by_handler or gone.ack_queued or gone.settling
                    ):
                        self.lost(gone)
        self.renewed_at = began

    def lost(self, entry: Entry) -> None:
        """Another consumer owns *entry* now: settle nothing, stop its handler."""
        if entry.lost:
            return
        entry.lost = True
        self._stats.lost_leases += 1
        log.warning("lease.lost", stream=entry.stream.decode(), entry=entry.entry_id.decode())
        if entry.scope is not None:
            entry.scope.cancel()
