"""The stream consumer: one per worker process, K entries in flight on one anyio loop.

Delivery contract (docs/delivery.md):

- an entry is read only when a slot is free (XREADGROUP COUNT = free slots);
- while it runs, its lease is renewed (XCLAIM … JUSTID every lease/3), so a slow handler is
  never reclaimed; a worker that dies stops renewing, and a timer-driven reclaimer elsewhere
  takes the entry after one lease (XAUTOCLAIM, cursor walked through the whole pending list);
- it is acked and deleted only after its outcome is written (:mod:`runtime.worker.outcome`);
- above ``max_deliveries`` tries it is dead-lettered with its reason and last error;
- on shutdown, reading stops, in-flight handlers get the grace period, and what is left is
  released (made claimable at once, the cancelled try not counted).
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import redis.asyncio
import redis.exceptions
from anyio.abc import TaskStatus

from runtime.app import App, DeadLetterContext, Handler, TaskContext
from runtime.envelope import Envelope, MalformedEntry, decode_entry
from runtime.errors import Defer, PermanentError, RetryLater
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.scripts import Scripts
from runtime.settings.model import Settings
from runtime.worker.outcome import Entry, Outcomes, WorkerStats

__all__ = ["Worker", "WorkerStats"]

log = get_logger(__name__)

_MAX_ERROR = 2000
_CLEANUP_EVERY = 60.0
_RENEW_BATCH = 500
_MAX_RECONNECT_DELAY = 5.0


@dataclass
class _Intake:
    """Streams this worker reads, their targets and reclaim cursors."""

    targets: dict[bytes, str]
    cursors: dict[bytes, bytes] = field(default_factory=dict)
    order: int = 0
    hot: list[bytes] = field(default_factory=list)
    """Streams that returned entries on the last read."""
    reads: int = 0


class Worker:
    """Consume the inboxes of *app*'s targets until :meth:`stop` is called.

    worker = Worker(app, settings, client, consumer="host-1:0")
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        ...
        worker.stop()
    """

    def __init__(
        self,
        app: App,
        settings: Settings,
        client: redis.asyncio.Redis,
        *,
        consumer: str,
        keys: Keys | None = None,
        on_recycle: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.client = client
        self.consumer = consumer
        self.keys = keys or Keys(settings.redis.key_prefix)
        self.stats = WorkerStats()
        self.stop_reason: str | None = None
        self._cfg = settings.worker
        self._group = settings.streams.group
        self._lease_ms = int(self._cfg.lease_seconds * 1000)
        self._scripts = Scripts.register(client)
        self._intake = _Intake({self.keys.inbox(t).encode(): t for t in app.targets})
        self._inflight: dict[tuple[bytes, bytes], Entry] = {}
        self._outcomes = Outcomes(
            client,
            settings,
            keys=self.keys,
            consumer=consumer,
            targets=self._intake.targets,
            stats=self.stats,
        )
        self._slot_freed: anyio.Event | None = None
        self._stopping = anyio.Event()
        self._on_recycle = on_recycle
        # Entries read but not started, and the idle handler loops waiting for one: each new
        # entry wakes one loop, not all of them (this hand-off is the hot path).
        self._queue: deque[Entry] = deque()
        self._idle: deque[anyio.Event] = deque()

    # --- lifecycle ----------------------------------------------------------------------
    def stop(self, reason: str = "stop requested") -> None:
        """Begin a graceful shutdown (idempotent)."""
        if not self._stopping.is_set():
            self.stop_reason = reason
            log.info("worker.stopping", consumer=self.consumer, reason=reason)
            self._stopping.set()

    @property
    def free_slots(self) -> int:
        return self._cfg.concurrency - len(self._inflight)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until stopped, then drain within the grace period and release the rest."""
        await self._ensure_groups()
        async with anyio.create_task_group() as services:
            services.start_soon(self._outcomes.ack_loop)
            services.start_soon(self._forever, "renew", self._renew_leases)
            async with anyio.create_task_group() as handlers:
                for _ in range(self._cfg.concurrency):
                    handlers.start_soon(self._handler_loop)
                async with anyio.create_task_group() as intake:
                    await self._recover_own()
                    intake.start_soon(self._forever, "read", self._read)
                    intake.start_soon(self._forever, "reclaim", self._reclaim_all)
                    intake.start_soon(self._forever, "move_due", self._move_due)
                    intake.start_soon(self._forever, "cleanup", self._cleanup)
                    log.info(
                        "worker.ready",
                        consumer=self.consumer,
                        targets=self.app.targets,
                        concurrency=self._cfg.concurrency,
                    )
                    task_status.started()
                    await self._stopping.wait()
                    intake.cancel_scope.cancel()
                await self._drain(handlers.cancel_scope)
            with anyio.CancelScope(shield=True):
                await self._outcomes.release_all()
                self._inflight.clear()
            services.cancel_scope.cancel()
        log.info("worker.stopped", consumer=self.consumer, **vars(self.stats))

    async def _drain(self, handlers: anyio.CancelScope) -> None:
        """Start nothing new; give running handlers the grace period, then cancel them."""
        started = [e for e in self._inflight.values() if e.scope is not None]
        log.info("worker.draining", in_flight=len(started), grace=self._cfg.shutdown_grace_seconds)
        with anyio.move_on_after(self._cfg.shutdown_grace_seconds):
            while any(e.scope is not None for e in self._inflight.values()):
                await self._wait_slot()
        handlers.cancel()

    # --- reading ------------------------------------------------------------------------
    async def _ensure_groups(self) -> None:
        for stream in self._intake.targets:
            try:
                await self.client.xgroup_create(stream, self._group, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _recover_own(self) -> None:
        """Take back at once what a predecessor with our name left pending."""
        for stream in self._intake.targets:
            if self.free_slots <= 0:
                return
            pending = await self.client.xpending_range(
                stream, self._group, min="-", max="+", count=self.free_slots,
                consumername=self.consumer,
            )  # fmt: skip
            if not pending:
                continue
            counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
            claimed: Any = await self.client.xclaim(
                stream, self._group, self.consumer, min_idle_time=0, message_ids=list(counts)
            )
            for entry_id, fields in claimed:
                if fields:
                    self._admit(stream, entry_id, fields, counts[entry_id] + 1)
            log.info("worker.recovered_own", stream=stream.decode(), entries=len(claimed))

    async def _read(self) -> None:
        """Read as many new entries as there are free slots (waiting for one if none is).

        XREADGROUP's COUNT applies to each stream, so a read over n inboxes asks each for
        free/n. To keep one busy inbox among idle ones from being read in small bites, the
        inboxes that had entries last time are read alone first, without blocking, sharing all
        free slots; every inbox is read (blocking) when they come back short, and every 8th
        read for fairness.
        """
        free = self.free_slots
        if free <= 0:
            await self._wait_slot()
            return
        intake = self._intake
        intake.reads += 1
        streams = list(intake.targets)
        hot = intake.hot
        if hot and len(hot) < len(streams) and intake.reads % 8:
            count = max(1, free // len(hot))
            got = await self._read_from(hot, count, block=None)
            if sum(got.values()) >= count:
                return
        # rotate which stream comes first, so no inbox starves another
        intake.order = (intake.order + 1) % len(streams)
        ordered = streams[intake.order :] + streams[: intake.order]
        got = await self._read_from(ordered, max(1, free // len(streams)), self._cfg.block_ms)
        intake.hot = [stream for stream, n in got.items() if n]

    async def _read_from(
        self, streams: list[bytes], count: int, block: int | None
    ) -> dict[bytes, int]:
        reply = await self.client.xreadgroup(
            self._group, self.consumer, dict.fromkeys(streams, ">"), count=count, block=block
        )
        got: dict[bytes, int] = {}
        for stream, entries in _stream_items(reply):
            for entry_id, fields in entries:
                self._admit(stream, entry_id, fields, 1)
            got[stream] = len(entries)
        if got:
            # let the woken handlers start before the next read is sent (latency)
            await anyio.lowlevel.checkpoint()
        return got

    async def _forever(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run *step* again and again; ride out Redis being away instead of dying."""
        failures = 0
        while True:
            try:
                await step()
                failures = 0
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                failures += 1
                delay = min(_MAX_RECONNECT_DELAY, 0.1 * 2**failures)
                log.warning("redis.unavailable", loop=name, error=str(exc), retry_in=delay)
                await anyio.sleep(delay)
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("group.recreated", loop=name, error=str(exc))
                await self._ensure_groups()  # the stream was deleted under us

    def _admit(self, stream: bytes, entry_id: bytes, fields: dict[bytes, bytes], n: int) -> None:
        entry = Entry(stream, entry_id, fields, n)
        self._inflight[(stream, entry_id)] = entry
        self._queue.append(entry)
        if self._idle:
            self._idle.popleft().set()

    async def _wait_slot(self) -> None:
        if self._slot_freed is None:
            self._slot_freed = anyio.Event()
        await self._slot_freed.wait()

    def _done(self, entry: Entry) -> None:
        self._inflight.pop((entry.stream, entry.entry_id), None)
        if self._slot_freed is not None:  # only when someone waits: no Event per entry
            self._slot_freed.set()
            self._slot_freed = None

    async def _reclaim_all(self) -> None:
        """Claim entries whose lease expired; runs on a timer, so an idle queue recovers too."""
        for stream in self._intake.targets:
            await self._reclaim(stream)
        await anyio.sleep(self._cfg.reclaim_interval_seconds)

    async def _reclaim(self, stream: bytes) -> None:
        while self.free_slots > 0:
            cursor = self._intake.cursors.get(stream, b"0-0")
            reply = await self.client.xautoclaim(
                stream, self._group, self.consumer, self._lease_ms,
                start_id=cursor, count=self.free_slots,
            )  # fmt: skip
            next_cursor, claimed = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            self._intake.cursors[stream] = next_cursor
            if deleted:  # trimmed or deleted while pending: nothing left to run
                await self.client.xack(stream, self._group, *deleted)
            live = [(i, f) for i, f in claimed if f]
            if live:
                counts = await self._delivery_counts(stream, [i for i, _ in live])
                for entry_id, fields in live:
                    self._admit(stream, entry_id, fields, counts.get(entry_id, 1))
                self.stats.reclaimed += len(live)
                log.info("worker.reclaimed", stream=stream.decode(), entries=len(live))
            if next_cursor in (b"0-0", "0-0"):
                return

    async def _delivery_counts(self, stream: bytes, ids: list[bytes]) -> dict[bytes, int]:
        async with self.client.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(stream, self._group, min=entry_id, max=entry_id, count=1)
            replies = await pipe.execute()
        return {r[0]["message_id"]: r[0]["times_delivered"] for r in replies if r}

    async def _move_due(self) -> None:
        """Move due retries and delayed entries into the inboxes, then wait for the next."""
        soonest = 1.0
        now_ms = int(time.time() * 1000)
        for stream, target in self._intake.targets.items():
            moved, next_score = await self._scripts.move_due(
                keys=[self.keys.delayed(target), stream], args=[now_ms, 500]
            )
            if moved >= 500:
                soonest = 0.0
            elif next_score is not None:
                soonest = min(soonest, max(0.0, float(next_score) / 1000 - time.time()))
        with anyio.move_on_after(soonest):
            await self._outcomes.retry_scheduled.wait()
            self._outcomes.retry_scheduled = anyio.Event()

    async def _cleanup(self) -> None:
        await anyio.sleep(_CLEANUP_EVERY)
        await self.remove_dead_consumers(max(10 * self._lease_ms, 60_000))

    async def remove_dead_consumers(self, min_idle_ms: int) -> list[str]:
        """Delete consumers idle for *min_idle_ms* that own no pending entry; return their names.

        The check and the delete are one script, so a consumer that took work in between is
        never deleted with its entries.
        """
        removed = []
        for stream in self._intake.targets:
            for info in await self.client.xinfo_consumers(stream, self._group):
                name = info["name"]
                name = name.decode() if isinstance(name, bytes) else str(name)
                if name == self.consumer or info["idle"] < min_idle_ms:
                    continue
                args = [self._group, name]
                if await self._scripts.delete_consumer(keys=[stream], args=args):
                    removed.append(name)
                    log.info("consumer.removed", stream=stream.decode(), consumer=name)
        return removed

    # --- handling -----------------------------------------------------------------------
    async def _handler_loop(self) -> None:
        while True:
            if not self._queue or self._stopping.is_set():
                # not started before shutdown: left in flight, released with the rest
                wake = anyio.Event()
                self._idle.append(wake)
                await wake.wait()
                continue
            entry = self._queue.popleft()
            try:
                await self._handle(entry)
            except Exception:
                # Redis failed while settling it: it stays pending and, no longer renewed,
                # is reclaimed after one lease.
                log.exception("entry.unsettled", entry=entry.entry_id.decode())
            # a cancellation (shutdown) skips this: the entry stays in flight to be released
            self._done(entry)

    async def _handle(self, entry: Entry) -> None:
        target = self._intake.targets[entry.stream]
        try:
            envelope = decode_entry(entry.fields, max_bytes=self.settings.streams.max_entry_bytes)
        except MalformedEntry as exc:
            await self._dead_letter(entry, None, exc.reason)
            return
        tries = envelope.attempt + entry.deliveries
        if tries > self._cfg.max_deliveries:
            await self._dead_letter(
                entry,
                envelope,
                f"delivered {entry.deliveries} times without an outcome after "
                f"{envelope.attempt} failed attempts (max_deliveries = {self._cfg.max_deliveries})",
                envelope.last_error or "the worker running it died or hung",
            )
            return
        if envelope.target != target:
            await self._dead_letter(
                entry, envelope, f"unknown target {envelope.target!r} in the inbox of {target!r}"
            )
            return
        if envelope.deadline is not None and time.time() > envelope.deadline:
            await self._dead_letter(entry, envelope, "expired: its deadline passed before it ran")
            return
        handler = self.app.handlers[target]
        try:
            payload = _convert(envelope.payload, handler.payload_type)
        except msgspec.ValidationError as exc:
            await self._dead_letter(entry, envelope, "invalid payload", str(exc))
            return
        await self._run(entry, envelope, handler, payload, tries)

    async def _run(
        self, entry: Entry, envelope: Envelope, handler: Handler, payload: Any, tries: int
    ) -> None:
        timeout = handler.timeout or self._cfg.task_timeout_seconds
        if envelope.deadline is not None:
            timeout = min(timeout, max(0.0, envelope.deadline - time.time()))
        self.stats.handled += 1
        try:
            await self._invoke(entry, envelope, handler, payload, limit=timeout)
        except _TimedOut as exc:
            await self._failed(entry, envelope, tries, str(exc), None)
        except PermanentError as exc:
            await self._dead_letter(entry, envelope, "permanent failure", _describe(exc))
        except RetryLater as exc:
            await self._failed(entry, envelope, tries, _describe(exc), exc.delay)
        except Defer as exc:
            self.stats.handled -= 1  # not an attempt
            if not entry.lost and not await self._outcomes.retry(
                entry, envelope, None, exc.delay, count=False
            ):
                self._lease_lost(entry)
        except Exception as exc:
            log.warning("task.failed", target=envelope.target, task=envelope.id, error=repr(exc))
            await self._failed(entry, envelope, tries, _describe(exc), None)
        else:
            if not entry.lost:  # a lost lease: the entry is not ours to settle
                self.stats.succeeded += 1
                self._outcomes.ack(entry)
        finally:
            self._maybe_recycle()

    async def _invoke(
        self, entry: Entry, envelope: Envelope, handler: Handler, payload: Any, *, limit: float
    ) -> None:
        """Call the handler; raise :class:`_TimedOut` when it runs past *limit* seconds."""
        ctx = TaskContext(
            task_id=envelope.id,
            target=envelope.target,
            attempt=envelope.attempt,
            deliveries=entry.deliveries,
            entry_id=entry.entry_id.decode(),
            created_at=envelope.created_at,
            deadline=envelope.deadline,
            headers=envelope.headers,
            traceparent=envelope.traceparent,
            consumer=self.consumer,
            redis=self.client,
            keys=self.keys,
            settings=self.settings,
            queue_ack=functools.partial(self._outcomes.queue_ack, entry),
        )
        # One cancel scope serves as the timeout and as the handle to cancel on a lost lease.
        scope = entry.scope = anyio.CancelScope(deadline=anyio.current_time() + limit)
        with scope:
            if handler.is_async:
                await handler.fn(ctx, payload)
            else:
                await anyio.to_thread.run_sync(handler.fn, ctx, payload, abandon_on_cancel=True)
        if scope.cancelled_caught and not entry.lost:
            raise _TimedOut(f"timed out after {limit:g} s")

    async def _failed(
        self, entry: Entry, envelope: Envelope, tries: int, error: str, delay: float | None
    ) -> None:
        if entry.lost:
            return
        if tries >= self._cfg.max_deliveries:
            await self._dead_letter(entry, envelope, f"failed {tries} times", error)
            return
        if delay is None:
            cfg = self._cfg
            delay = _backoff(
                envelope.attempt, cfg.retry_backoff_seconds, cfg.retry_backoff_max_seconds
            )
        if not await self._outcomes.retry(entry, envelope, error, delay):
            self._lease_lost(entry)

    async def _dead_letter(
        self, entry: Entry, envelope: Envelope | None, reason: str, error: str | None = None
    ) -> None:
        if entry.lost:
            return
        if not await self._outcomes.dead_letter(entry, envelope, reason, error):
            self._lease_lost(entry)
            return
        hook = self.app.handlers[self._intake.targets[entry.stream]].on_dead_letter
        if hook is not None and envelope is not None:
            try:
                await hook(
                    DeadLetterContext(
                        envelope, reason, error, self.client, self.keys, self.settings
                    )
                )
            except Exception:  # the letter is written; a failing hook must not undo that
                log.exception("dead_letter.hook_failed", target=envelope.target)

    def _lease_lost(self, entry: Entry) -> None:
        entry.lost = True
        self.stats.lost_leases += 1
        log.warning("lease.lost", stream=entry.stream.decode(), entry=entry.entry_id.decode())

    def _maybe_recycle(self) -> None:
        limit = self._cfg.max_entries
        if limit and self.stats.handled >= limit:
            self._recycle(f"handled {self.stats.handled} entries (worker.max_entries = {limit})")

    def _recycle(self, reason: str) -> None:
        if self._stopping.is_set():
            return
        if self._on_recycle is not None:
            self._on_recycle(reason)
        self.stop(f"recycle: {reason}")

    # --- leases and acks ----------------------------------------------------------------
    async def _renew_leases(self) -> None:
        await anyio.sleep(self._cfg.lease_seconds / 3)
        await self._renew()
        self._check_memory()

    async def _renew(self) -> None:
        by_stream: dict[bytes, list[bytes]] = {}
        for entry in self._inflight.values():
            if not entry.lost:
                by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        for stream, ids in by_stream.items():
            for start in range(0, len(ids), _RENEW_BATCH):
                batch = ids[start : start + _RENEW_BATCH]
                lost = await self._scripts.renew(
                    keys=[stream], args=[self._group, self.consumer, *batch]
                )
                for entry_id in lost:
                    gone = self._inflight.get((stream, entry_id))
                    # not pending because its handler acked it (TaskContext.ack_in) and has
                    # yet to return: done with, not lost
                    if gone is not None and not gone.acked_by_handler:
                        self._lease_lost(gone)
                        if gone.scope is not None:
                            gone.scope.cancel()

    def _check_memory(self) -> None:
        limit = self._cfg.max_rss_mb
        if limit:
            rss = _rss_mb()
            if rss > limit:
                self._recycle(f"resident memory {rss:.0f} MiB over worker.max_rss_mb = {limit}")


class _TimedOut(Exception):
    """The handler ran past its timeout (or the entry's deadline)."""


def _stream_items(reply: Any) -> Any:
    """(stream, entries) pairs of an XREADGROUP reply, whichever shape redis-py parsed."""
    if not reply:
        return ()
    return reply.items() if isinstance(reply, dict) else reply


def _convert(payload: Any, payload_type: Any) -> Any:
    if payload_type is Any:
        return payload
    return msgspec.convert(payload, payload_type)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: half fixed, half random."""
    ceiling = min(cap, base * (2.0**attempt))
    return ceiling / 2 + random.uniform(0.0, ceiling / 2)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
