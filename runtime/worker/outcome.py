"""Writing the outcome of an entry: batched acks, retries, dead letters, releases.

Every outcome is written before (or atomically with) the ack: success is XACK + XDEL in one
script (which a Redis out of memory still runs, unlike MULTI); a retry and a dead letter are
each one fenced Lua script; a release makes what a worker still holds claimable at once. A
fenced script that finds the entry no longer ours returns ``False``: its lease was lost and
another worker owns it now.

A dead letter keeps the entry's original fields, bounded: an envelope that decodes as it was
(a replay needs it whole; the worker decodes an oversized one up to a few times the limit to
keep it); any other value cut to a
preview of :data:`PREVIEW_BYTES` followed by ``… (N bytes cut)``, with its original size in a
field ``<name>_bytes``; at most :data:`MAX_COPIED_FIELDS` fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import redis.asyncio
import redis.exceptions

from runtime.envelope import ENVELOPE_FIELD, Envelope, Reason, encode_within
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.scripts import Scripts
from runtime.settings.model import Settings
from runtime.worker.faults import Faults, backoff, classify

if TYPE_CHECKING:
    from runtime.observability.tracecontext import TraceParent
    from runtime.worker.observe import Observer

__all__ = ["MAX_COPIED_FIELDS", "PREVIEW_BYTES", "Entry", "Outcomes", "WorkerStats"]

log = get_logger(__name__)

PREVIEW_BYTES = 1024
"""A field of a dead-lettered entry longer than this is cut to a preview of this many bytes."""
MAX_COPIED_FIELDS = 32
"""Fields of the original entry a dead letter copies at most."""
_MAX_NAME = 200
_ACK_BATCH = 1000
# the letter's own fields; an original field of the same name is not copied
_RECORD_FIELDS = frozenset(
    {"reason", "detail", "error", "target", "task_id", "entry_id", "deliveries", "attempts",
     "consumer", "failed_at"}
)  # fmt: skip


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
    ack_queued: bool = False
    """It succeeded and its ack waits for the ack loop's next flush."""
    settling: bool = False
    """Its outcome is being written (whether its lease was lost, that write tells) or was
    written (its dead-letter hook may still run): a renewal that misses it is no lost lease."""
    trace: TraceParent | None = None
    """The context of its current attempt's span (a traced task): the parent of a retry's
    or a dead letter's span."""


# KEYS: inbox. ARGV: group, entry id. A script with flags (the shebang line, none given): Redis
# refuses it as a whole on a server out of memory (no ``allow-oom``), read-only or busy, as it
# refuses the outcome written before it in the same pipeline, so the two fail together.
ACK_IN = """#!lua
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""


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
        faults: Faults | None = None,
        on_acked: Callable[[bytes, list[bytes]], None] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._client = client
        self._faults = faults or Faults()
        self._observer = observer
        self._on_acked = on_acked
        self._scripts = Scripts.register(client)
        self._keys = keys
        self._consumer = consumer
        self._targets = targets
        self._stats = stats
        self._group = settings.streams.group
        self._dlq_maxlen = settings.streams.dlq_maxlen
        self._max_bytes = settings.streams.max_entry_bytes
        self._lease_ms = int(settings.worker.lease_seconds * 1000)
        self._acks: dict[bytes, list[bytes]] = {}
        self._ack_wanted = anyio.Event()
        self.retry_scheduled = anyio.Event()
        """Set when a retry was written, so the mover of due entries looks again."""

    # --- success ------------------------------------------------------------------------
    def queue_ack(self, entry: Entry, pipe: Any) -> bool:
        """Queue the ack of *entry* (XACK + XDEL) on a handler's pipeline (not for a lost
        entry: another worker may own it).

        The ack is a script Redis refuses whenever it refuses the writes queued before it on
        a full (OOM), read-only, busy or misconfigured server (:data:`ACK_IN`): plain XACK
        and XDEL would still run there, acking an entry whose outcome was refused.
        """
        if entry.lost:
            return False
        pipe.eval(ACK_IN, 1, entry.stream, self._group, entry.entry_id)
        entry.acked_by_handler = True
        return True

    def ack(self, entry: Entry) -> None:
        """Queue the ack of a succeeded entry; the ack loop writes queued acks in one MULTI.

        Nothing to do when its handler acked it already (:meth:`queue_ack`)."""
        if entry.acked_by_handler:
            return
        entry.ack_queued = True
        self._acks.setdefault(entry.stream, []).append(entry.entry_id)
        self._ack_wanted.set()

    async def ack_loop(self) -> None:
        """Flush acks as they come: at once when idle, batched under load; a failed flush
        keeps its acks and is tried again after a backoff."""
        failures = 0
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted = anyio.Event()
            try:
                await self.flush()
            except redis.exceptions.RedisError as exc:
                failures += 1
                kind = classify(exc)
                if kind is None:
                    log.warning("ack.failed", error=str(exc))
                else:
                    self._faults.failed("ack", exc, kind)
                self._ack_wanted.set()
                await anyio.sleep(backoff(failures))
            else:
                failures = 0
                self._faults.succeeded("ack")

    async def flush(self) -> None:
        if not self._acks:
            return
        acks, self._acks = self._acks, {}
        try:
            for stream in list(acks):
                ids = acks[stream]
                for start in range(0, len(ids), _ACK_BATCH):
                    batch = ids[start : start + _ACK_BATCH]
                    await self._scripts.ack(keys=[stream], args=[self._group, *batch])
                del acks[stream]
                if self._on_acked is not None:
                    self._on_acked(stream, ids)
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

        With ``count=False`` (a deferral) the attempt counter is left as it is. *error*
        becomes the envelope's ``last_error``, cut (or dropped) so that the envelope stays
        within ``streams.max_entry_bytes``: one the producer accepted is never refused as
        ``oversized`` for having failed.
        """
        retry = (
            msgspec.structs.replace(envelope, attempt=envelope.attempt + 1, last_error=error)
            if count
            else envelope
        )
        delay_ms = max(0, int(delay * 1000))  # from now by Redis's clock, not this host's
        raw = encode_within(retry, self._max_bytes)
        settled = await self._scripts.retry(
            keys=[entry.stream, self._keys.delayed(envelope.target)],
            args=[self._group, entry.entry_id, self._consumer, delay_ms, raw],
        )
        if settled:
            if count:
                self._stats.retried += 1
                if self._observer is not None:
                    self._observer.retried(entry, envelope, error, delay)
            self.retry_scheduled.set()
        return bool(settled)

    async def dead_letter(
        self,
        entry: Entry,
        envelope: Envelope | None,
        reason: Reason,
        detail: str,
        error: str | None = None,
    ) -> bool:
        """Copy the entry to the DLQ with *reason* (a code), *detail* and *error*; ack and
        delete it. For an entry that could not be decoded (*envelope* ``None``) the task id is
        ``""`` and ``attempts`` equals ``deliveries``."""
        target = self._targets[entry.stream]
        record: dict[str, Any] = {
            "reason": str(reason),
            "detail": detail,
            "error": error or "",
            "target": target,
            "task_id": envelope.id if envelope else "",
            "entry_id": entry.entry_id,
            "deliveries": entry.deliveries,
            "attempts": (envelope.attempt if envelope else 0) + entry.deliveries,
            "consumer": self._consumer,
        }
        record.update(_copied_fields(entry.fields, keep_envelope=envelope is not None))
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
                reason=str(reason),
                detail=detail,
                error=error,
            )
        return bool(settled)

    # --- shutdown -----------------------------------------------------------------------
    async def release_all(self) -> None:
        """Make everything still pending for us claimable by other workers at once.

        Reads our pending list rather than our in-memory view, so entries delivered by a read
        that shutdown interrupted are released too; the cancelled try is not counted. Acks are
        flushed first; entries whose ack that flush could not write are not released (they
        succeeded) and their acks are tried once more at the end. A failing flush or stream
        does not keep the other streams from being released.
        """
        await self._flush_logged()
        for stream in self._targets:
            try:
                await self._release(stream)
            except redis.exceptions.RedisError as exc:
                log.warning("release.failed", stream=stream.decode(), error=str(exc))
        if self._acks:
            await self._flush_logged()

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except redis.exceptions.RedisError as exc:
            log.warning("ack.failed", error=str(exc))

    async def _release(self, stream: bytes) -> None:
        pending: Any = await self._client.xpending_range(
            stream, self._group, min="-", max="+", count=100_000, consumername=self._consumer
        )
        unacked = set(self._acks.get(stream, ()))
        args: list[Any] = [self._group, self._consumer, self._lease_ms]
        for item in pending:
            if item["message_id"] not in unacked:
                args += [item["message_id"], max(0, item["times_delivered"] - 1)]
        if len(args) == 3:
            return
        released = int(await self._scripts.release(keys=[stream], args=args))
        self._stats.released += released
        log.info("worker.released", stream=stream.decode(), entries=released)


def _copied_fields(fields: dict[bytes, bytes], *, keep_envelope: bool) -> dict[str, Any]:
    """The original fields a dead letter keeps, bounded (see the module's docstring)."""
    copied: dict[str, Any] = {}
    names = [name for name in fields if name.decode(errors="replace") not in _RECORD_FIELDS]
    for raw_name in names[:MAX_COPIED_FIELDS]:
        value = fields[raw_name]
        name = raw_name.decode(errors="replace")[:_MAX_NAME]
        if len(value) > PREVIEW_BYTES and not (keep_envelope and raw_name == ENVELOPE_FIELD):
            cut = len(value) - PREVIEW_BYTES
            value = value[:PREVIEW_BYTES] + f"… ({cut} bytes cut)".encode()
            copied[f"{name}_bytes"] = len(fields[raw_name])
        copied.setdefault(name, value)
    if len(names) > MAX_COPIED_FIELDS:
        copied["fields_cut"] = len(names) - MAX_COPIED_FIELDS
    return copied
