"""How entries reach a worker: reading new ones, reclaiming expired leases, recovering its
own, moving due delayed entries into the inboxes, and removing dead consumers.

Every path admits through :class:`~runtime.worker.slots.Slots`, which never admits an entry
already in flight here. Times that cross processes (when a delayed entry is due, whether a
deadline passed) are Redis's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import redis.asyncio
import redis.exceptions

from runtime.keys import Keys
from runtime.log import get_logger
from runtime.scripts import Scripts
from runtime.settings.model import Settings
from runtime.worker.observe import Observer
from runtime.worker.outcome import Entry, Outcomes, WorkerStats
from runtime.worker.slots import Slots

__all__ = ["Intake"]

log = get_logger(__name__)

_MOVE_LIMIT = 500
_MOVER_MAX_WAIT = 1.0


@dataclass
class _Streams:
    """Streams this worker reads, their targets and reclaim cursors."""

    targets: dict[bytes, str]
    cursors: dict[bytes, bytes] = field(default_factory=dict)
    order: int = 0
    hot: list[bytes] = field(default_factory=list)
    """Streams that returned entries on the last read."""
    reads: int = 0


class Intake:
    """The reading side of one worker (``consumer``)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        settings: Settings,
        *,
        keys: Keys,
        consumer: str,
        targets: dict[bytes, str],
        slots: Slots,
        outcomes: Outcomes,
        stats: WorkerStats,
        renew_if_late: Callable[[], Awaitable[None]],
        observer: Observer | None = None,
    ) -> None:
        self._client = client
        self._observer = observer
        self._cfg = settings.worker
        self._group = settings.streams.group
        self._lease_ms = int(settings.worker.lease_seconds * 1000)
        self._keys = keys
        self._consumer = consumer
        self._streams = _Streams(targets)
        self._slots = slots
        self._outcomes = outcomes
        self._stats = stats
        self._renew_if_late = renew_if_late
        self._scripts = Scripts.register(client)
        self.clock_offset = 0.0
        """Redis's clock less this host's (seconds), as the mover last saw it (about once a
        second): deadlines are compared with ``time.time() + clock_offset``."""

    async def ensure_groups(self) -> None:
        """Create the consumer group of every inbox that lacks one. Looked up first: Redis
        refuses XGROUP CREATE when out of memory, even for a group that exists."""
        for stream in self._streams.targets:
            if await self._has_group(stream):
                continue
            try:
                await self._client.xgroup_create(stream, self._group, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def sync_clock(self) -> None:
        """Measure :attr:`clock_offset` (the mover keeps it up to date afterwards)."""
        seconds, micros = await self._client.time()
        self.clock_offset = seconds + micros / 1e6 - time.time()

    async def _has_group(self, stream: bytes) -> bool:
        try:
            groups: Any = await self._client.xinfo_groups(stream)
        except redis.exceptions.ResponseError:  # no such key
            return False
        mine = self._group.encode()
        return any(_text_bytes(group["name"]) == mine for group in groups)

    # --- recovering and reclaiming ----------------------------------------------------------
    async def recover_own(self) -> None:
        """Take back at once what a predecessor with our name left pending (not what is in
        flight here)."""
        for stream in self._streams.targets:
            if self._slots.free <= 0:
                return
            pending: Any = await self._client.xpending_range(
                stream, self._group, min="-", max="+", count=self._slots.free,
                consumername=self._consumer,
            )  # fmt: skip
            counts: dict[bytes, int] = {
                p["message_id"]: int(p["times_delivered"])
                for p in pending
                if self._slots.get(stream, p["message_id"]) is None
            }
            if not counts:
                continue
            claimed: Any = await self._client.xclaim(
                stream, self._group, self._consumer, min_idle_time=0, message_ids=list(counts)
            )
            for entry_id, fields in claimed:
                if fields:
                    self._slots.admit(stream, entry_id, fields, counts[entry_id] + 1)
            log.info("worker.recovered_own", stream=stream.decode(), entries=len(claimed))

    async def reclaim_all(self) -> None:
        """Claim entries whose lease expired; runs on a timer, so an idle queue recovers too.

        When the event loop was blocked (a sync call in a handler), the leases of entries in
        flight here are renewed first, before anything is claimed.
        """
        await self._renew_if_late()
        for stream in self._streams.targets:
            await self._reclaim(stream)
        await anyio.sleep(self._cfg.reclaim_interval_seconds)

    async def _reclaim(self, stream: bytes) -> None:
        while self._slots.free > 0:
            cursor = self._streams.cursors.get(stream, b"0-0")
            reply = await self._client.xautoclaim(
                stream, self._group, self._consumer, self._lease_ms,
                start_id=cursor, count=self._slots.free,
            )  # fmt: skip
            next_cursor, claimed = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            self._streams.cursors[stream] = next_cursor
            if deleted:  # trimmed or deleted while pending: nothing left to run
                await self._client.xack(stream, self._group, *deleted)
            await self._admit_claimed(stream, [(i, f) for i, f in claimed if f])
            if next_cursor in (b"0-0", "0-0"):
                return

    async def _admit_claimed(self, stream: bytes, live: list[tuple[bytes, Any]]) -> None:
        # Sorted out as the reply comes, before any await: an entry held here now was held
        # when Redis claimed it; one that is not may have been acked since the claim, so it
        # is admitted only if XPENDING (sent after) still shows it pending for us. A held
        # entry whose lease was lost (another worker took it) is no copy running here: its
        # claim, and the deliveries counted meanwhile, stand; it is reclaimed once let go.
        held = [e for i, _ in live if (e := self._slots.get(stream, i)) is not None]
        running = [e for e in held if not e.lost]
        new = [(i, f) for i, f in live if self._slots.get(stream, i) is None]
        if running:
            await self._keep_running(stream, running)
        if not new:
            return
        counts = await self._delivery_counts(stream, [i for i, _ in new])
        admitted = 0
        for entry_id, fields in new:
            if entry_id in counts:
                admitted += self._slots.admit(stream, entry_id, fields, counts[entry_id])
        if admitted:
            self._stats.reclaimed += admitted
            if self._observer is not None:
                self._observer.reclaimed(self._streams.targets[stream], admitted)
            log.info("worker.reclaimed", stream=stream.decode(), entries=admitted)

    async def _keep_running(self, stream: bytes, running: list[Entry]) -> None:
        """Our own reclaimer claimed entries held here (the loop was blocked past their
        lease): they are ours again; keep the copies held, admit no second one, and undo the
        delivery the claim counted."""
        args: list[Any] = [self._group, self._consumer, 0]
        for entry in running:
            args += [entry.entry_id, entry.deliveries]
        await self._scripts.release(keys=[stream], args=args)
        log.warning("lease.reclaimed_own", stream=stream.decode(), entries=len(running))

    async def _delivery_counts(self, stream: bytes, ids: list[bytes]) -> dict[bytes, int]:
        """Delivery counts of those *ids* that are pending for us."""
        async with self._client.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(stream, self._group, min=entry_id, max=entry_id, count=1)
            replies = await pipe.execute()
        mine = self._consumer.encode()
        return {
            r[0]["message_id"]: r[0]["times_delivered"]
            for r in replies
            if r and _text_bytes(r[0]["consumer"]) == mine
        }

    # --- reading ----------------------------------------------------------------------------
    async def read(self) -> None:
        """Read as many new entries as there are free slots (waiting for one if none is).

        XREADGROUP's COUNT applies to each stream, so a read over n inboxes asks each for
        free/n. To keep one busy inbox among idle ones from being read in small bites, the
        inboxes that had entries last time are read alone first, without blocking, sharing all
        free slots; every inbox is read (blocking) when they come back short, and every 8th
        read for fairness.
        """
        free = self._slots.free
        if free <= 0:
            await self._slots.wait_freed()
            return
        streams = self._streams
        streams.reads += 1
        names = list(streams.targets)
        hot = streams.hot
        if hot and len(hot) < len(names) and streams.reads % 8:
            count = max(1, free // len(hot))
            got = await self._read_from(hot, count, block=None)
            if sum(got.values()) >= count:
                return
        # rotate which stream comes first, so no inbox starves another
        streams.order = (streams.order + 1) % len(names)
        ordered = names[streams.order :] + names[: streams.order]
        got = await self._read_from(ordered, max(1, free // len(names)), self._cfg.block_ms)
        streams.hot = [stream for stream, n in got.items() if n]

    async def _read_from(
        self, streams: list[bytes], count: int, block: int | None
    ) -> dict[bytes, int]:
        reply = await self._client.xreadgroup(
            self._group, self._consumer, dict.fromkeys(streams, ">"), count=count, block=block
        )
        got: dict[bytes, int] = {}
        for stream, entries in _stream_items(reply):
            for entry_id, fields in entries:
                self._slots.admit(stream, entry_id, fields, 1)
            got[stream] = len(entries)
        if got:
            # let the woken handlers start before the next read is sent (latency)
            await anyio.lowlevel.checkpoint()
        return got

    # --- delayed entries --------------------------------------------------------------------
    async def move_due(self) -> None:
        """Move due retries and delayed entries into the inboxes, then wait for the next.

        Due means due by Redis's clock (the script reads TIME); how long to wait for the next
        one is its score less Redis's "now", never this host's clock.
        """
        soonest = _MOVER_MAX_WAIT
        for stream, target in self._streams.targets.items():
            moved, next_score, now_ms = await self._scripts.move_due(
                keys=[self._keys.delayed(target), stream], args=[_MOVE_LIMIT]
            )
            self.clock_offset = int(now_ms) / 1000 - time.time()
            if moved >= _MOVE_LIMIT:
                soonest = 0.0
            elif next_score is not None:
                soonest = min(soonest, max(0.0, (float(next_score) - int(now_ms)) / 1000))
        with anyio.move_on_after(soonest):
            await self._outcomes.retry_scheduled.wait()
            self._outcomes.retry_scheduled = anyio.Event()

    # --- dead consumers ---------------------------------------------------------------------
    async def remove_dead_consumers(self, min_idle_ms: int) -> list[str]:
        """Delete consumers idle for *min_idle_ms* that own no pending entry; return their names.

        The check and the delete are one script, so a consumer that took work in between is
        never deleted with its entries.
        """
        removed = []
        for stream in self._streams.targets:
            for info in await self._client.xinfo_consumers(stream, self._group):
                name = info["name"]
                name = name.decode() if isinstance(name, bytes) else str(name)
                if name == self._consumer or info["idle"] < min_idle_ms:
                    continue
                args = [self._group, name]
                if await self._scripts.delete_consumer(keys=[stream], args=args):
                    removed.append(name)
                    log.info("consumer.removed", stream=stream.decode(), consumer=name)
        return removed


def _stream_items(reply: Any) -> Any:
    """(stream, entries) pairs of an XREADGROUP reply, whichever shape redis-py parsed."""
    if not reply:
        return ()
    return reply.items() if isinstance(reply, dict) else reply


def _text_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
