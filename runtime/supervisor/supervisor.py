"""The supervisor: keeps N worker processes running for one app.

- spawns each worker (``python -m runtime.worker``) in its own session, hands it the effective
  settings on stdin, keeps that pipe open as its liveness (a worker exits by itself when the
  supervisor is gone) and waits for its ``READY`` line (``supervisor.ready_timeout_seconds``);
- names each worker ``<host>:<instance>:<slot>``, the instance id made per start: a worker
  restarted in a slot takes back its reaped predecessor's entries at once, and another
  supervisor on the same host never shares a name (:mod:`runtime.worker.process`);
- restarts a worker that died, with exponential backoff; one that could not start for want of
  Redis (unreachable, loading, full…: it reports ``PAUSED`` before ``READY`` and is not held
  to the ready timeout meanwhile, or exits with status 75) is restarted with a backoff of at
  most 5 s and never counts as a crash: an outage pauses the fleet, it never stops it;
- gives up with a clear error only when
  workers crash *early* (before READY, or within ``crash_loop_min_uptime_seconds`` of it
  without having started any work) ``crash_loop_restarts`` times within
  ``crash_loop_window_seconds``: a worker that served and was killed (an operator, the OOM
  killer), or that an entry killed (its delivery count dead-letters it), is always restarted;
- replaces a worker that recycled itself (``worker.max_entries`` / ``worker.max_rss_mb``) at once;
- between ``min_workers`` and ``max_workers``, adds workers while the inboxes hold more than
  the running workers can take and removes one after ``scale_down_after_seconds`` of low backlog;
- serves ``/healthz``, ``/readyz`` (503 while no worker is ready or every ready one is paused
  by a Redis fault), ``/metrics`` (the fleet's figures from Redis and its own) and, with
  ``web.dashboard``, the dashboard (:mod:`runtime.web`); a port in use, or an address not of
  this host, is one clear error naming the setting at fault;
- samples its inboxes' lag, pending and oldest pending age and publishes its workers to the
  fleet every ``observability.sample_interval_seconds`` (:mod:`runtime.supervisor.sampler`);
- on SIGTERM/SIGINT passes SIGTERM on, waits for the workers to drain, and exits 0.
"""

from __future__ import annotations

import contextlib
import math
import signal
import socket
import sys
import time
from collections import deque

import anyio
import msgspec
import redis.asyncio

from runtime.app import load_app
from runtime.errors import RedisError, SupervisorError
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.redaction import redact_url
from runtime.redis.connection import open_redis, translate_errors
from runtime.settings.model import Settings
from runtime.supervisor.sampler import Sampler
from runtime.supervisor.slot import Slot, WorkerExit, run_worker, send_signal
from runtime.web import (
    Probe,
    SupervisorFigures,
    WebState,
    bind_sockets,
    create_app,
    serve,
    supervisor_endpoint,
)
from runtime.worker.process import consumer_name, new_instance_id

__all__ = ["Supervisor"]

log = get_logger(__name__)

_MAX_BACKOFF = 30.0
_REDIS_BACKOFF = 5.0
"""At most this long between restarts of a worker that waits for Redis: it serves again
soon after Redis is back."""
_KILL_MARGIN = 10.0


class Supervisor:
    """Run *app_spec* (``module:object``) in worker processes until told to stop."""

    def __init__(self, app_spec: str, settings: Settings, *, python: str = sys.executable) -> None:
        self.app_spec = app_spec
        self.settings = settings
        self.python = python
        self.restarts = 0
        self.backlog = 0
        self.http_port: int | None = None
        self.sampler: Sampler | None = None
        """Samples the inboxes and publishes the fleet heartbeat (set once it runs)."""
        self.instance = new_instance_id()
        """This start's part of the workers' consumer names."""
        self._slots: dict[int, Slot] = {}
        self._crashes: deque[float] = deque()
        self._failure: str | None = None
        self._unclean_exits = 0
        self._stopping = anyio.Event()
        self._started = anyio.Event()
        self._ready_changed = anyio.Event()
        self._child_settings = b""
        self._targets: list[str] = []
        sup = settings.supervisor
        self.min_workers = sup.min_workers if sup.min_workers is not None else sup.workers
        self.max_workers = sup.max_workers if sup.max_workers is not None else sup.workers
        self.min_workers = min(self.min_workers, self.max_workers)
        self.initial = min(max(sup.workers, self.min_workers), self.max_workers)

    # --- public -------------------------------------------------------------------------
    @property
    def ready_workers(self) -> int:
        return sum(1 for slot in self._slots.values() if slot.ready)

    @property
    def paused_workers(self) -> int:
        """Ready workers that Redis faults (full, read-only, loading…) hold paused."""
        return sum(1 for slot in self._slots.values() if slot.ready and slot.paused is not None)

    @property
    def worker_pids(self) -> list[int]:
        return [s.process.pid for s in self._slots.values() if s.process is not None]

    def stop(self) -> None:
        """Begin a graceful stop (idempotent)."""
        self._stopping.set()

    async def run(self) -> int:
        """Supervise until stopped; returns the exit status (0 after a clean drain).

        Raises:
            SupervisorError: workers crashed in a loop, or the HTTP port cannot be bound.
            AppError: the app cannot be loaded.
        """
        app = load_app(self.app_spec)  # fail here, once, rather than in every worker
        self._targets = app.targets
        sup = self.settings.supervisor
        # bound before anything starts: a port in use is one clear error, not a traceback
        endpoint = supervisor_endpoint(self.settings.web.dashboard)
        sockets = bind_sockets(sup.http_host, sup.http_port, endpoint) if sup.http_port else None
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(_close, sockets or [])
            conn = await stack.enter_async_context(open_redis(self.settings))
            if conn.started_embedded:
                log.info("supervisor.embedded_redis", url=redact_url(conn.url))
            redis_settings = msgspec.structs.replace(self.settings.redis, url=conn.url)
            self._child_settings = msgspec.json.encode(
                msgspec.structs.replace(self.settings, redis=redis_settings)
            )
            clean = await self._supervise(conn.client, conn.keys, sockets)
        if self._failure is not None:
            raise SupervisorError(self._failure)
        return 0 if clean else 1

    async def wait_started(self) -> None:
        """Wait until the first set of workers was spawned (for embedding and tests)."""
        await self._started.wait()

    async def wait_ready(self, count: int) -> None:
        """Wait until *count* workers have reported READY."""
        while self.ready_workers < count:
            self._ready_changed = anyio.Event()
            await self._ready_changed.wait()

    # --- supervision --------------------------------------------------------------------
    async def _supervise(
        self,
        client: redis.asyncio.Redis,
        keys: Keys,
        sockets: list[socket.socket] | None,
    ) -> bool:
        async with anyio.create_task_group() as services:
            services.start_soon(self._watch_signals)
            if sockets is not None:
                self.http_port = await services.start(self._serve_http, client, keys, sockets)
            self.sampler = self._sampler(keys)
            await services.start(self.sampler.run, client)
            log.info(
                "supervisor.started",
                app=self.app_spec,
                instance=self.instance,
                targets=self._targets,
                workers=self.initial,
                concurrency=self.settings.worker.concurrency,
                autoscale=f"{self.min_workers}..{self.max_workers}",
            )
            async with anyio.create_task_group() as slots:
                for _ in range(self.initial):
                    self._add_slot(slots)
                if self.max_workers > self.min_workers:
                    services.start_soon(self._autoscale, slots, client, keys)
                self._started.set()
                await self._stopping.wait()
                services.start_soon(self._kill_stragglers)
                for slot in self._slots.values():
                    send_signal(slot.process, signal.SIGTERM)
            services.cancel_scope.cancel()
        clean = self._failure is None and self._unclean_exits == 0
        log.info("supervisor.stopped", clean=clean, restarts=self.restarts)
        return clean

    async def _serve_http(
        self,
        client: redis.asyncio.Redis,
        keys: Keys,
        sockets: list[socket.socket],
        *,
        task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        probe = Probe(self._alive, self._not_ready, self._figures)
        app = create_app(WebState(client, keys, self.settings, probe))
        host, port = self.settings.supervisor.http_host, self.settings.supervisor.http_port
        await serve(app, host, port, sockets, task_status=task_status)

    def _sampler(self, keys: Keys) -> Sampler:
        http = None
        if self.http_port is not None:
            http = f"{self.settings.supervisor.http_host}:{self.http_port}"
        return Sampler(
            keys,
            self.settings,
            instance=f"{socket.gethostname()}:{self.instance}",
            targets=self._targets,
            slots=lambda: list(self._slots.values()),
            stopping=self._stopping.is_set,
            http=http,
        )

    def _add_slot(self, group: anyio.abc.TaskGroup) -> Slot:
        index = next(i for i in range(len(self._slots) + 1) if i not in self._slots)
        slot = Slot(index, consumer_name(index, self.instance))
        self._slots[index] = slot
        group.start_soon(self._run_slot, slot)
        return slot

    async def _run_slot(self, slot: Slot) -> None:
        try:
            while not self._stopping.is_set() and not slot.retiring:
                ended = await self._run_worker(slot)
                if self._stopping.is_set() or slot.retiring:
                    # one still starting (not READY) held no work of its own yet
                    if ended.status != 0 and ended.served is not None:
                        self._unclean_exits += 1
                        log.warning("worker.unclean_exit", slot=slot.index, reason=ended.reason)
                    return
                if slot.recycle_reason is not None and ended.status == 0:
                    log.info("worker.recycled", slot=slot.index, reason=slot.recycle_reason)
                    slot.recycle_reason = None
                    continue
                if ended.redis_unavailable:
                    await self._wait_for_redis(slot, ended)
                    continue
                slot.redis_waits = 0
                await self._crashed(slot, ended)
        finally:
            self._slots.pop(slot.index, None)

    async def _crashed(self, slot: Slot, ended: WorkerExit) -> None:
        """Restart after a backoff; give up only on a loop of early crashes."""
        self.restarts += 1
        sup = self.settings.supervisor
        # a worker that died running work was not failing to start: an entry that kills its
        # worker is dead-lettered by its delivery count, and the fleet goes on meanwhile
        early = not ended.busy and (
            ended.served is None or ended.served < sup.crash_loop_min_uptime_seconds
        )
        slot.crashes_in_a_row = slot.crashes_in_a_row + 1 if early else 1
        log.warning(
            "worker.crashed",
            slot=slot.index,
            status=ended.status,
            reason=ended.reason,
            served_s=None if ended.served is None else round(ended.served, 1),
            crash_loop=early,
        )
        if early and self._crash_loop(slot, ended):
            return
        base = sup.restart_backoff_seconds
        delay = min(_MAX_BACKOFF, base * 2 ** (slot.crashes_in_a_row - 1))
        with anyio.move_on_after(delay):
            await self._stopping.wait()

    async def _wait_for_redis(self, slot: Slot, ended: WorkerExit) -> None:
        """Restart a worker that ended waiting for Redis, after a backoff: never a crash.

        Its ``PAUSED`` line was logged (``worker.paused``) once for the slot's outage; each
        restart while it lasts is logged at debug level only.
        """
        slot.redis_waits += 1
        base = self.settings.supervisor.restart_backoff_seconds
        delay = min(_REDIS_BACKOFF, base * 2 ** (slot.redis_waits - 1))
        log.debug("worker.redis_unavailable", slot=slot.index, reason=ended.reason, retry_s=delay)
        with anyio.move_on_after(delay):
            await self._stopping.wait()

    def _crash_loop(self, slot: Slot, ended: WorkerExit) -> bool:
        """Count an early crash; past the limit, stop with the reason and return True."""
        now = time.monotonic()
        self._crashes.append(now)
        window = self.settings.supervisor.crash_loop_window_seconds
        while self._crashes and now - self._crashes[0] > window:
            self._crashes.popleft()
        if len(self._crashes) < self.settings.supervisor.crash_loop_restarts:
            return False
        self._failure = (
            f"worker processes crashed {len(self._crashes)} times within {window:g} s "
            f"before or soon after READY (last: slot {slot.index}, {ended.reason}); giving "
            "up. The workers' own messages are above; fix the cause and run again."
        )
        self.stop()
        return True

    async def _run_worker(self, slot: Slot) -> WorkerExit:
        command = [
            self.python, "-m", "runtime.worker", "--app", self.app_spec,
            "--slot", str(slot.index), "--consumer", slot.consumer, "--settings-stdin",
        ]  # fmt: skip
        timeout = self.settings.supervisor.ready_timeout_seconds
        return await run_worker(
            slot,
            command,
            self._child_settings,
            timeout,
            self._on_ready,
            stopping=lambda: self._stopping.is_set() or slot.retiring,
        )

    def _on_ready(self) -> None:
        self._ready_changed.set()  # the event of the moment: wait_ready() makes new ones

    async def _kill_stragglers(self) -> None:
        await anyio.sleep(self.settings.worker.shutdown_grace_seconds + _KILL_MARGIN)
        for slot in self._slots.values():
            if slot.process is not None and slot.process.returncode is None:
                log.warning("worker.killed", slot=slot.index, pid=slot.process.pid)
                send_signal(slot.process, signal.SIGKILL)

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self._stopping.is_set():
                    log.info("supervisor.stopping", signal=name)
                    self.stop()
                else:
                    log.warning("supervisor.stop_now", signal=name)
                    for slot in self._slots.values():
                        # a second signal makes the workers exit at once
                        send_signal(slot.process, signal.SIGTERM)

    # --- autoscaling --------------------------------------------------------------------
    async def _autoscale(
        self, group: anyio.abc.TaskGroup, client: redis.asyncio.Redis, keys: Keys
    ) -> None:
        sup = self.settings.supervisor
        low_since: float | None = None
        failing = False
        while True:
            await anyio.sleep(sup.scale_interval_seconds)
            if self._stopping.is_set():
                return  # a slot added now would end at once, and be added again
            try:
                self.backlog = await _backlog(client, keys, self._targets)
            except RedisError as exc:
                # an error reply (OOM, LOADING…) or Redis away: keep the workers as they are
                if not failing:
                    log.warning("autoscale.read_failed", error=str(exc))
                failing = True
                continue
            if failing:
                log.info("autoscale.read_recovered", backlog=self.backlog)
                failing = False
            low_since = self._scale(group, low_since)

    def _scale(self, group: anyio.abc.TaskGroup, low_since: float | None) -> float | None:
        """Add or retire workers for the last backlog; returns when it was first low."""
        active = sorted(i for i, s in self._slots.items() if not s.retiring)
        wanted = math.ceil(self.backlog / self.settings.worker.concurrency)
        desired = min(self.max_workers, max(self.min_workers, wanted))
        if desired > len(active):
            for _ in range(desired - len(active)):
                slot = self._add_slot(group)
                log.info("autoscale.up", slot=slot.index, backlog=self.backlog)
            return None
        if desired == len(active):
            return None
        now = time.monotonic()
        if low_since is None:
            return now
        if now - low_since < self.settings.supervisor.scale_down_after_seconds:
            return low_since
        slot = self._slots[active[-1]]
        slot.retiring = True
        send_signal(slot.process, signal.SIGTERM)
        log.info("autoscale.down", slot=slot.index, backlog=self.backlog)
        return now

    # --- probes -------------------------------------------------------------------------
    def _alive(self) -> bool:
        return self._failure is None

    def _not_ready(self) -> str | None:
        """Why /readyz says 503, or None when it says 200."""
        if self._stopping.is_set():
            return "stopping"
        ready = [slot for slot in self._slots.values() if slot.ready]
        if not ready:
            return "no worker is ready"
        paused = [slot.paused for slot in ready if slot.paused is not None]
        if len(paused) == len(ready):
            return f"every worker is paused: {paused[0]}"
        return None

    def _figures(self) -> SupervisorFigures:
        return SupervisorFigures(
            ready=self.ready_workers,
            running=len(self.worker_pids),
            paused=self.paused_workers,
            restarts=self.restarts,
            backlog=self.backlog,
        )


def _close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


async def _backlog(client: redis.asyncio.Redis, keys: Keys, targets: list[str]) -> int:
    """Entries waiting or in flight: work entries are deleted on ack, so XLEN is the backlog."""
    with translate_errors("read the backlog"):
        async with client.pipeline(transaction=False) as pipe:
            for target in targets:
                pipe.xlen(keys.inbox(target))
            return sum(int(n) for n in await pipe.execute())
