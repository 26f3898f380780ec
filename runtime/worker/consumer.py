"""The stream consumer: one per worker process, K entries in flight on one anyio loop.

Delivery contract (docs/delivery.md):

- an entry is read only when a slot is free (XREADGROUP COUNT = free slots), and an entry
  already in flight here is never admitted again (:mod:`runtime.worker.slots`);
- while it runs, its lease is renewed (XCLAIM … JUSTID every lease/3, at once after a blocked
  event loop), so a slow handler is never reclaimed; a worker that dies stops renewing, and a
  timer-driven reclaimer elsewhere takes the entry after one lease (:mod:`runtime.worker.intake`);
- it is acked and deleted only after its outcome is written (:mod:`runtime.worker.outcome`);
  an outcome that Redis refuses for a while (out of memory, loading…) is tried again, the
  entry kept in flight, until it is written (:mod:`runtime.worker.faults`);
- an entry that cannot be decoded, or that was delivered more than ``max_deliveries`` times,
  is dead-lettered with a reason code and its detail;
- on shutdown, reading stops, in-flight handlers get the grace period, and what is left is
  released (made claimable at once, the cancelled try not counted).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import redis.asyncio
import redis.exceptions
from anyio.abc import TaskStatus

from runtime.app import App, Handler, TaskContext
from runtime.envelope import Envelope, MalformedEntry, Reason, decode_entry
from runtime.errors import Defer, PermanentError, RetryLater
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.observability.telemetry import Telemetry
from runtime.observability.tracecontext import TraceParent
from runtime.scripts import Scripts
from runtime.settings.model import Settings
from runtime.worker.faults import UNREACHABLE, Faults, backoff, classify, retry_backoff
from runtime.worker.intake import Intake
from runtime.worker.invoke import (
    TimedOut,
    convert_payload,
    describe_error,
    error_text,
    invoke,
    payload_type_name,
)
from runtime.worker.leases import Leases
from runtime.worker.observe import Observer, worker_telemetry
from runtime.worker.outcome import Entry, Outcomes, WorkerStats
from runtime.worker.recycle import Recycler
from runtime.worker.settle import Settler
from runtime.worker.slots import Slots

__all__ = ["Worker", "WorkerStats"]

log = get_logger(__name__)

_CLEANUP_EVERY = 60.0
_SALVAGE_FACTOR = 4  # an oversized envelope up to 4 × the limit is decoded, kept whole


class Worker:
    """Consume the inboxes of *app*'s targets until :meth:`stop` is called.

    worker = Worker(app, settings, client, consumer="host-1:0")
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        ...
        worker.stop()

    *on_fault* hears Redis fault episodes (:mod:`runtime.worker.faults`): a short reason when
    one begins (Redis out of memory, loading, read-only, unreachable…), ``None`` when every
    call works again. :attr:`fault` holds the reason in the meantime. *on_busy* is called once,
    when the first handler starts (a process that dies after it died running work, not
    starting up). *telemetry* records its spans and metrics (:mod:`runtime.worker.observe`);
    by default the worker makes its own from the settings (none when both are off) and
    flushes it while it runs, once more as it stops.
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
        on_fault: Callable[[str | None], None] | None = None,
        on_busy: Callable[[], None] | None = None,
        telemetry: Telemetry | None = None,
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
        self._scripts = Scripts.register(client)
        self._targets = {self.keys.inbox(t).encode(): t for t in app.targets}
        self._slots = Slots(self._cfg.concurrency)
        self._faults = Faults(on_fault)
        self._on_busy = on_busy
        self.telemetry = telemetry or worker_telemetry(app, settings, self.keys, consumer)
        self._observer = Observer(self.telemetry, clock_offset=lambda: self._intake.clock_offset)
        self._leases = Leases(
            self._scripts,
            group=self._group,
            consumer=consumer,
            lease_seconds=self._cfg.lease_seconds,
            slots=self._slots,
            stats=self.stats,
        )
        self._outcomes = Outcomes(
            client,
            settings,
            keys=self.keys,
            consumer=consumer,
            targets=self._targets,
            stats=self.stats,
            faults=self._faults,
            on_acked=self._slots.acked,
            observer=self._observer,
        )
        self._intake = Intake(
            client,
            settings,
            keys=self.keys,
            consumer=consumer,
            targets=self._targets,
            slots=self._slots,
            outcomes=self._outcomes,
            stats=self.stats,
            renew_if_late=self._leases.renew_if_late,
            observer=self._observer,
        )
        self._settler = Settler(
            client,
            settings,
            keys=self.keys,
            outcomes=self._outcomes,
            faults=self._faults,
            leases=self._leases,
            handlers={s: app.handlers[t] for s, t in self._targets.items()},
            redis_now=self._now,
            observer=self._observer,
        )
        self._stopping = anyio.Event()
        self._grace = self._cfg.shutdown_grace_seconds
        self._drain_scope: anyio.CancelScope | None = None
        self._on_recycle = on_recycle
        self._recycler = Recycler(self._cfg, self.stats, self._recycle)

    # --- lifecycle ----------------------------------------------------------------------
    def stop(self, reason: str = "stop requested", *, grace: float | None = None) -> None:
        """Begin a graceful shutdown (idempotent).

        *grace* shortens how long handlers in flight may still run (default
        ``worker.shutdown_grace_seconds``), a drain under way included: its supervisor gone,
        a worker process stops at once.
        """
        if grace is not None and grace < self._grace:
            self._grace = grace
            if self._drain_scope is not None:
                deadline = anyio.current_time() + grace
                self._drain_scope.deadline = min(self._drain_scope.deadline, deadline)
        if not self._stopping.is_set():
            self.stop_reason = reason
            log.info("worker.stopping", consumer=self.consumer, reason=reason)
            self._stopping.set()

    @property
    def free_slots(self) -> int:
        return self._slots.free

    @property
    def fault(self) -> str | None:
        """The reason of the Redis fault episode in progress, ``None`` when there is none."""
        return self._faults.reason

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until stopped, then drain within the grace period and release the rest."""
        await self._start_up()
        self._leases.renewed_at = anyio.current_time()
        renewing = anyio.CancelScope()
        async with anyio.create_task_group() as services:
            if self.telemetry is not None:  # stopped last: its final flush has it all
                await services.start(self.telemetry.run, self.client)
            services.start_soon(self._outcomes.ack_loop)
            services.start_soon(self._renewing, renewing)
            async with anyio.create_task_group() as handlers:
                for _ in range(self._cfg.concurrency):
                    handlers.start_soon(self._handler_loop)
                async with anyio.create_task_group() as intake:
                    await self._intake.recover_own()
                    intake.start_soon(self._forever, "read", self._intake.read)
                    intake.start_soon(self._forever, "reclaim", self._intake.reclaim_all)
                    intake.start_soon(self._forever, "move_due", self._intake.move_due)
                    intake.start_soon(self._cleanup)
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
                renewing.cancel()  # a renewal after the release would undo it
                await self._outcomes.release_all()
                self._slots.inflight.clear()
                self._slots.acking.clear()
            services.cancel_scope.cancel()
        log.info("worker.stopped", consumer=self.consumer, **vars(self.stats))

    async def _start_up(self) -> None:
        """Create the groups, riding out a Redis that is loading, read-only or full (an
        unreachable one is an error at start-up)."""
        failures = 0
        while True:
            try:
                await self._intake.ensure_groups()
                await self._intake.sync_clock()
            except redis.exceptions.RedisError as exc:
                kind = classify(exc)
                if kind in (None, UNREACHABLE) or self._stopping.is_set():
                    raise
                failures += 1
                self._faults.failed("start", exc, kind)
                await anyio.sleep(backoff(failures))
            else:
                self._faults.succeeded("start")
                return

    async def _drain(self, handlers: anyio.CancelScope) -> None:
        """Start nothing new; give running handlers the grace period, then cancel them."""
        started = self._slots.started()
        log.info("worker.draining", in_flight=len(started), grace=self._grace)
        self._drain_scope = anyio.move_on_after(self._grace)
        with self._drain_scope:
            while self._slots.started():
                await self._slots.wait_freed()
        handlers.cancel()

    async def _forever(
        self, name: str, step: Callable[[], Awaitable[None]], *, once: bool = False
    ) -> None:
        """Run *step* again and again (with *once*, until it succeeded once); ride out Redis
        faults (backing off, with jitter) and a deleted inbox (its group made again) instead
        of dying. Other refusals are bugs or misconfiguration: raised."""
        failures = 0
        regroup = False
        while True:
            try:
                if regroup:
                    await self._intake.ensure_groups()  # the stream was deleted under us
                    regroup = False
                await step()
            except redis.exceptions.RedisError as exc:
                failures += 1
                if _is_nogroup(exc):
                    log.warning("group.recreated", loop=name, error=str(exc))
                    regroup = True
                    await anyio.sleep(backoff(failures - 1) / 10)
                    continue
                kind = classify(exc)
                if kind is None:
                    raise
                self._faults.failed(name, exc, kind)
                await anyio.sleep(backoff(failures))
            else:
                failures = 0
                self._faults.succeeded(name)
                if once:
                    return

    async def _renewing(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self._forever("renew", self._renew_leases)

    async def _cleanup(self) -> None:
        """Remove dead consumers every ``_CLEANUP_EVERY`` seconds; the wait is outside the
        fault-tracked step, so a fault episode ends when a removal works, not a period later."""
        min_idle_ms = max(10 * int(self._cfg.lease_seconds * 1000), 60_000)

        async def remove() -> None:
            await self.remove_dead_consumers(min_idle_ms)

        while True:
            await anyio.sleep(_CLEANUP_EVERY)
            await self._forever("cleanup", remove, once=True)

    async def remove_dead_consumers(self, min_idle_ms: int) -> list[str]:
        """Delete consumers idle for *min_idle_ms* that own no pending entry; return their names."""
        return await self._intake.remove_dead_consumers(min_idle_ms)

    # --- handling -----------------------------------------------------------------------
    async def _handler_loop(self) -> None:
        slots, stopping = self._slots, self._stopping
        while True:
            entry = slots.take(stopping)
            if entry is None:  # the hot path takes no await here
                await slots.wait_ready()
                continue
            try:
                await self._handle(entry)
            except Exception:
                # A refusal that is no fault (a bug): the entry stays pending and, no longer
                # renewed, is reclaimed after one lease.
                log.exception("entry.unsettled", entry=entry.entry_id.decode())
            # a cancellation (shutdown) skips this: the entry stays in flight to be released
            slots.done(entry)

    async def _handle(self, entry: Entry) -> None:
        if entry.lost:  # another worker took it while it waited for this loop: not ours
            return
        max_deliveries = self._cfg.max_deliveries
        # counted before decoding: an entry that breaks its worker is dead-lettered all the same
        worn_out = entry.deliveries > max_deliveries
        try:
            envelope = decode_entry(
                entry.fields,
                max_bytes=self.settings.streams.max_entry_bytes,
                max_attempt=max_deliveries,
            )
        except MalformedEntry as exc:
            salvaged = self._salvage(entry) if exc.code == Reason.OVERSIZED else None
            await self._settler.dead_letter(entry, salvaged, exc.code, exc.detail)
            return
        tries = envelope.attempt + entry.deliveries
        if worn_out or tries > max_deliveries:
            detail = (
                f"delivered {entry.deliveries} times without an outcome after "
                f"{envelope.attempt} failed attempts (worker.max_deliveries = {max_deliveries})"
            )
            error = envelope.last_error or "the worker running it died or hung"
            await self._settler.dead_letter(entry, envelope, Reason.MAX_DELIVERIES, detail, error)
            return
        refusal = self._refusal(entry, envelope)
        if refusal is not None:
            await self._settler.dead_letter(entry, envelope, *refusal)
            return
        handler = self.app.handlers[envelope.target]
        try:
            payload = convert_payload(envelope.payload, handler.payload_type)
        except Exception as exc:  # msgspec.ValidationError, or a payload too deep to convert
            detail = f"the payload does not convert to {payload_type_name(handler.payload_type)}"
            await self._settler.dead_letter(
                entry, envelope, Reason.INVALID_PAYLOAD, detail, error_text(exc)
            )
            return
        await self._run(entry, envelope, handler, payload, tries)

    def _salvage(self, entry: Entry) -> Envelope | None:
        """An oversized entry's envelope if it decodes (to keep it whole in the letter)."""
        try:
            return decode_entry(
                entry.fields,
                max_bytes=_SALVAGE_FACTOR * self.settings.streams.max_entry_bytes,
                max_attempt=self._cfg.max_deliveries,
            )
        except MalformedEntry:
            return None

    def _refusal(self, entry: Entry, envelope: Envelope) -> tuple[Reason, str] | None:
        """Why *envelope* must not run (reason and detail), or ``None``."""
        target = self._targets[entry.stream]
        if envelope.target != target:
            return Reason.UNKNOWN_TARGET, f"target {envelope.target!r} in the inbox of {target!r}"
        if envelope.deadline is not None and self._now() > envelope.deadline:
            return Reason.EXPIRED, "its deadline passed before it ran"
        return None

    def _now(self) -> float:
        """Unix time by Redis's clock (as last seen, no round trip): a deadline is compared
        with it, so every worker agrees whatever its own clock says."""
        return time.time() + self._intake.clock_offset

    def _busy(self) -> None:
        """Tell *on_busy* (once) that a handler started."""
        on_busy, self._on_busy = self._on_busy, None
        if on_busy is not None:
            on_busy()

    async def _run(
        self, entry: Entry, envelope: Envelope, handler: Handler, payload: Any, tries: int
    ) -> None:
        timeout = handler.timeout or self._cfg.task_timeout_seconds
        if envelope.deadline is not None:
            timeout = min(timeout, max(0.0, envelope.deadline - self._now()))
        self.stats.handled += 1
        self._busy()
        try:
            with self._observer.attempt(entry, envelope, tries, handler) as trace:
                ctx = self._context(entry, envelope, trace)
                await invoke(entry, handler, ctx, payload, limit=timeout)
        except TimedOut as exc:
            await self._failed(entry, envelope, tries, str(exc), None)
        except PermanentError as exc:
            await self._settler.dead_letter(
                entry, envelope, Reason.PERMANENT, "the handler raised PermanentError",
                describe_error(exc),
            )  # fmt: skip
        except RetryLater as exc:
            await self._failed(entry, envelope, tries, describe_error(exc), exc.delay)
        except Defer as exc:
            self.stats.handled -= 1  # not an attempt
            wait = exc.delay
            if not entry.lost:
                await self._settler.settle(
                    entry,
                    lambda: self._outcomes.retry(entry, envelope, None, wait, count=False),
                    self._settler.gone(entry),
                )
        except Exception as exc:
            log.warning("task.failed", target=envelope.target, task=envelope.id, error=repr(exc))
            await self._failed(entry, envelope, tries, describe_error(exc), None)
        else:
            if not entry.lost:  # a lost lease: the entry is not ours to settle
                self.stats.succeeded += 1
                self._outcomes.ack(entry)
        finally:
            self._recycler.after_entry()

    def _context(self, entry: Entry, envelope: Envelope, trace: TraceParent | None) -> TaskContext:
        return TaskContext(
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
            telemetry=self.telemetry,
            trace=trace,
        )

    async def _failed(
        self, entry: Entry, envelope: Envelope, tries: int, error: str, delay: float | None
    ) -> None:
        if entry.lost:
            return
        if tries >= self._cfg.max_deliveries:
            detail = f"failed {tries} times (worker.max_deliveries = {self._cfg.max_deliveries})"
            await self._settler.dead_letter(entry, envelope, Reason.FAILED, detail, error)
            return
        if delay is None:
            cfg = self._cfg
            delay = retry_backoff(
                envelope.attempt, cfg.retry_backoff_seconds, cfg.retry_backoff_max_seconds
            )
        await self._settler.settle(
            entry,
            lambda: self._outcomes.retry(entry, envelope, error, delay),
            self._settler.gone(entry),
        )

    def _recycle(self, reason: str) -> None:
        if self._stopping.is_set():
            return
        if self._on_recycle is not None:
            self._on_recycle(reason)
        self.stop(f"recycle: {reason}")

    # --- leases -------------------------------------------------------------------------
    async def _renew_leases(self) -> None:
        await self._leases.next_renewal()
        self._recycler.check_memory()


def _is_nogroup(exc: redis.exceptions.RedisError) -> bool:
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith("NOGROUP")
