"""Writing the outcome of an entry: batched acks, retries, dead letters, releases.

Every outcome is written before (or atomically with) the ack: success is XACK + XDEL in one
MULTI; a retry and a dead letter are each one fenced Lua script; a release makes what a worker
still holds claimable at once. A fenced script that finds the entry no longer ours returns
``False``: its lease was lost and another worker owns it now.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
import redis.asyncio
import redis.exceptions

from runtime.envelope import Envelope, encode_envelope
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.scripts import Scripts
from runtime.settings.model import Settings

__all__ = ["Entry", "Outcomes", "WorkerStats"]

log = get_logger(__name__)


@dataclass
class WorkerStats:
    """Counters of one worker process."""

    handled: int = 0
    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    released: int = 0
    lost_leases: int = 0


@dataclass
class Entry:
    """A stream entry this worker holds."""

    stream: bytes
    entry_id: bytes
    fields: dict[bytes, bytes]
    deliveries: int
    scope: anyio.CancelScope | None = None
    """Set once its handler started; cancelled when the lease is lost."""
    lost: bool = False
    """Its lease expired and another worker may own it: settle nothing."""
    acked_by_handler: bool = False
    """Its handler queued the ack with its own last write (:meth:`TaskContext.ack_in`)."""


class Outcomes:
    """Writes outcomes for one worker (``consumer``) over the inboxes in *targets*."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        settings: Settings,
        *,
        keys: Keys,
        consumer: str,
        targets: dict[bytes, str],
        stats: WorkerStats,
    ) -> None:
        self._client = client
        self._scripts = Scripts.register(client)
        self._keys = keys
        self._consumer = consumer
        self._targets = targets
        self._stats = stats
        self._group = settings.streams.group
        self._dlq_maxlen = settings.streams.dlq_maxlen
        self._lease_ms = int(settings.worker.lease_seconds * 1000)
        self._acks: dict[bytes, list[bytes]] = {}
        self._ack_wanted = anyio.Event()
        self.retry_scheduled = anyio.Event()
        """Set when a retry was written, so the mover of due entries looks again."""

    # --- success ------------------------------------------------------------------------
    def queue_ack(self, entry: Entry, pipe: Any) -> bool:
        """Queue the ack of *entry* (XACK + XDEL) on a handler's pipeline (not for a lost
        entry: another worker may own it)."""
        if entry.lost:
            return False
        pipe.xack(entry.stream, self._group, entry.entry_id)
        pipe.xdel(entry.stream, entry.entry_id)
        entry.acked_by_handler = True
        return True

    def ack(self, entry: Entry) -> None:
        """Queue the ack of a succeeded entry; the ack loop writes queued acks in one MULTI.

        Nothing to do when its handler acked it already (:meth:`queue_ack`)."""
        if entry.acked_by_handler:
            return
        self._acks.setdefault(entry.stream, []).append(entry.entry_id)
        self._ack_wanted.set()

    async def ack_loop(self) -> None:
        """Flush acks as they come: at once when idle, batched under load."""
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted = anyio.Event()
            try:
                await self.flush()
            except redis.exceptions.RedisError as exc:
                log.warning("ack.failed", error=str(exc))
                self._ack_wanted.set()
                await anyio.sleep(0.5)

    async def flush(self) -> None:
        if not self._acks:
            return
        acks, self._acks = self._acks, {}
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                for stream, ids in acks.items():
                    pipe.xack(stream, self._group, *ids)
                    pipe.xdel(stream, *ids)
                await pipe.execute()
        except BaseException:
            for stream, ids in acks.items():  # keep them for the next flush
                self._acks.setdefault(stream, []).extend(ids)
            raise

    # --- failure ------------------------------------------------------------------------
    async def retry(
        self,
        entry: Entry,
        envelope: Envelope,
        error: str | None,
        delay: float,
        *,
        count: bool = True,
    ) -> bool:
        """Schedule the next attempt after *delay* seconds; ack and delete this entry.

        With ``count=False`` (a deferral) the attempt counter is left as it is.
        """
        retry = (
            msgspec.structs.replace(envelope, attempt=envelope.attempt + 1, last_error=error)
            if count
            else envelope
        )
        run_at_ms = int((time.time() + delay) * 1000)
        settled = await self._scripts.retry(
            keys=[entry.stream, self._keys.delayed(envelope.target)],
            args=[self._group, entry.entry_id, self._consumer, run_at_ms, encode_envelope(retry)],
        )
        if settled:
            if count:
                self._stats.retried += 1
            self.retry_scheduled.set()
        return bool(settled)

    async def dead_letter(
        self, entry: Entry, envelope: Envelope | None, reason: str, error: str | None
    ) -> bool:
        """Copy the entry with *reason* and *error* to the DLQ; ack and delete it."""
        target = self._targets[entry.stream]
        record: dict[str, Any] = {
            "reason": reason,
            "error": error or "",
            "target": target,
            "task_id": envelope.id if envelope else "",
            "entry_id": entry.entry_id,
            "deliveries": entry.deliveries,
            "attempts": (envelope.attempt if envelope else 0) + entry.deliveries,
            "consumer": self._consumer,
            "failed_at": f"{time.time():.3f}",
        }
        for raw_name, value in entry.fields.items():  # the original fields, as they were
            record.setdefault(raw_name.decode(errors="replace"), value)
        args: list[Any] = [self._group, entry.entry_id, self._consumer, self._dlq_maxlen]
        for name, value in record.items():
            args += [name, value]
        settled = await self._scripts.dead_letter(
            keys=[entry.stream, self._keys.dlq(target)], args=args
        )
        if settled:
            self._stats.dead_lettered += 1
            log.warning(
                "task.dead_lettered",
                target=target,
                entry=entry.entry_id.decode(),
                reason=reason,
                error=error,
            )
        return bool(settled)

    # --- shutdown -----------------------------------------------------------------------
    async def release_all(self) -> None:
        """Make everything still pending for us claimable by other workers at once.

        Reads our pending list rather than our in-memory view, so entries delivered by a read
        that shutdown interrupted are released too; the cancelled try is not counted. Acks are
        flushed first.
        """
        try:
            await self.flush()
            for stream in self._targets:
                pending: Any = await self._client.xpending_range(
                    stream, self._group, min="-", max="+", count=100_000,
                    consumername=self._consumer,
                )  # fmt: skip
                if not pending:
                    continue
                args: list[Any] = [self._group, self._consumer, self._lease_ms]
                for item in pending:
                    args += [item["message_id"], max(0, item["times_delivered"] - 1)]
                released = int(await self._scripts.release(keys=[stream], args=args))
                self._stats.released += released
                log.info("worker.released", stream=stream.decode(), entries=released)
        except redis.exceptions.RedisError as exc:
            log.warning("release.failed", error=str(exc))
