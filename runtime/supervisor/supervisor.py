"""The supervisor: keeps N worker processes running for one app.

- spawns each worker (``python -m runtime.worker``) in its own session, hands it the effective
  settings on stdin and waits for its ``READY`` line (``supervisor.ready_timeout_seconds``);
- restarts a worker that died, with exponential backoff, and gives up with a clear error when
  workers crash ``crash_loop_restarts`` times within ``crash_loop_window_seconds``;
- replaces a worker that recycled itself (``worker.max_entries`` / ``worker.max_rss_mb``) at once;
- between ``min_workers`` and ``max_workers``, adds workers while the inboxes hold more than
  the running workers can take and removes one after ``scale_down_after_seconds`` of low backlog;
- serves ``/healthz``, ``/readyz`` and ``/metrics``;
- on SIGTERM/SIGINT passes SIGTERM on, waits for the workers to drain, and exits 0.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass

import anyio
import msgspec
import redis.asyncio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from runtime.app import load_app
from runtime.errors import SupervisorError
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.redaction import redact_url
from runtime.redis.connection import open_redis, translate_errors
from runtime.settings.model import Settings
from runtime.supervisor.health import HealthServer, Probe
from runtime.worker.process import consumer_name

__all__ = ["Supervisor"]

log = get_logger(__name__)

_MAX_BACKOFF = 30.0
_STABLE_AFTER = 30.0  # a worker that ran this long resets the backoff
_KILL_MARGIN = 10.0


@dataclass
class _Slot:
    index: int
    process: Process | None = None
    ready: bool = False
    retiring: bool = False
    recycle_reason: str | None = None
    crashes_in_a_row: int = 0


class Supervisor:
    """Run *app_spec* (``module:object``) in worker processes until told to stop."""

    def __init__(self, app_spec: str, settings: Settings, *, python: str = sys.executable) -> None:
        self.app_spec = app_spec
        self.settings = settings
        self.python = python
        self.restarts = 0
        self.backlog = 0
        self.http_port: int | None = None
        self._slots: dict[int, _Slot] = {}
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
    def worker_pids(self) -> list[int]:
        return [s.process.pid for s in self._slots.values() if s.process is not None]

    def stop(self) -> None:
        """Begin a graceful stop (idempotent)."""
        self._stopping.set()

    async def run(self) -> int:
        """Supervise until stopped; returns the exit status (0 after a clean drain).

        Raises:
            SupervisorError: workers crashed in a loop.
            AppError: the app cannot be loaded.
        """
        app = load_app(self.app_spec)  # fail here, once, rather than in every worker
        self._targets = app.targets
        async with open_redis(self.settings) as conn:
            if conn.started_embedded:
                log.info("supervisor.embedded_redis", url=redact_url(conn.url))
            redis_settings = msgspec.structs.replace(self.settings.redis, url=conn.url)
            self._child_settings = msgspec.json.encode(
                msgspec.structs.replace(self.settings, redis=redis_settings)
            )
            clean = await self._supervise(conn.client, conn.keys)
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
    async def _supervise(self, client: redis.asyncio.Redis, keys: Keys) -> bool:
        async with anyio.create_task_group() as services:
            services.start_soon(self._watch_signals)
            sup = self.settings.supervisor
            if sup.http_port:
                probe = Probe(self._alive, self._ready, self._metrics)
                server = HealthServer(probe, sup.http_host, sup.http_port)
                self.http_port = await services.start(server.serve)
            log.info(
                "supervisor.started",
                app=self.app_spec,
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
                    _terminate(slot)
            services.cancel_scope.cancel()
        clean = self._failure is None and self._unclean_exits == 0
        log.info("supervisor.stopped", clean=clean, restarts=self.restarts)
        return clean

    def _add_slot(self, group: anyio.abc.TaskGroup) -> _Slot:
        index = next(i for i in range(len(self._slots) + 1) if i not in self._slots)
        slot = _Slot(index)
        self._slots[index] = slot
        group.start_soon(self._run_slot, slot)
        return slot

    async def _run_slot(self, slot: _Slot) -> None:
        try:
            while not self._stopping.is_set() and not slot.retiring:
                began = time.monotonic()
                status, why = await self._run_worker(slot)
                if self._stopping.is_set() or slot.retiring:
                    # one still starting (not READY) held no work of its own yet
                    starting = not why.startswith("exit status")
                    if status != 0 and not starting:
                        self._unclean_exits += 1
                        log.warning("worker.unclean_exit", slot=slot.index, status=status)
                    return
                if slot.recycle_reason is not None and status == 0:
                    log.info("worker.recycled", slot=slot.index, reason=slot.recycle_reason)
                    slot.recycle_reason = None
                    continue
                await self._crashed(slot, status, why, time.monotonic() - began)
        finally:
            self._slots.pop(slot.index, None)

    async def _crashed(self, slot: _Slot, status: int | None, why: str, ran: float) -> None:
        self.restarts += 1
        now = time.monotonic()
        self._crashes.append(now)
        window = self.settings.supervisor.crash_loop_window_seconds
        while self._crashes and now - self._crashes[0] > window:
            self._crashes.popleft()
        slot.crashes_in_a_row = 1 if ran > _STABLE_AFTER else slot.crashes_in_a_row + 1
        log.warning(
            "worker.crashed", slot=slot.index, status=status, reason=why, ran_s=round(ran, 1)
        )
        if len(self._crashes) >= self.settings.supervisor.crash_loop_restarts:
            self._failure = (
                f"worker processes crashed {len(self._crashes)} times within {window:g} s "
                f"(last: slot {slot.index}, {why}); giving up. The workers' own messages "
                "are above; fix the cause and run again."
            )
            self.stop()
            return
        base = self.settings.supervisor.restart_backoff_seconds
        delay = min(_MAX_BACKOFF, base * 2 ** (slot.crashes_in_a_row - 1))
        with anyio.move_on_after(delay):
            await self._stopping.wait()

    async def _run_worker(self, slot: _Slot) -> tuple[int | None, str]:
        command = [
            self.python, "-m", "runtime.worker", "--app", self.app_spec,
            "--slot", str(slot.index), "--consumer", consumer_name(slot.index),
            "--settings-stdin",
        ]  # fmt: skip
        process = await anyio.open_process(
            command, stdin=-1, stdout=-1, stderr=None, start_new_session=True
        )
        slot.process = process
        try:
            assert process.stdin is not None and process.stdout is not None
            await process.stdin.send(self._child_settings)
            await process.stdin.aclose()
            lines = BufferedByteReceiveStream(process.stdout)
            with anyio.move_on_after(self.settings.supervisor.ready_timeout_seconds):
                while not slot.ready:
                    line = await _read_line(lines)
                    if line is None:
                        break
                    slot.ready = line.startswith("READY")
            if not slot.ready:
                if process.returncode is None:
                    process.kill()
                status = await process.wait()
                return status, "it exited or did not report READY in time"
            log.info("worker.ready", slot=slot.index, pid=process.pid)
            self._ready_changed.set()
            while (line := await _read_line(lines)) is not None:
                if line.startswith("RECYCLE "):
                    slot.recycle_reason = line[len("RECYCLE ") :]
            status = await process.wait()
            return status, f"exit status {status}"
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            slot.ready = False
            slot.process = None
            await process.aclose()

    async def _kill_stragglers(self) -> None:
        await anyio.sleep(self.settings.worker.shutdown_grace_seconds + _KILL_MARGIN)
        for slot in self._slots.values():
            if slot.process is not None and slot.process.returncode is None:
                log.warning("worker.killed", slot=slot.index, pid=slot.process.pid)
                slot.process.kill()

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
                        _terminate(slot)  # a second signal makes the workers exit at once

    # --- autoscaling --------------------------------------------------------------------
    async def _autoscale(
        self, group: anyio.abc.TaskGroup, client: redis.asyncio.Redis, keys: Keys
    ) -> None:
        sup = self.settings.supervisor
        low_since: float | None = None
        while True:
            await anyio.sleep(sup.scale_interval_seconds)
            try:
                self.backlog = await _backlog(client, keys, self._targets)
            except Exception as exc:
                log.warning("autoscale.read_failed", error=str(exc))
                continue
            active = sorted(i for i, s in self._slots.items() if not s.retiring)
            per_worker = self.settings.worker.concurrency
            wanted = math.ceil(self.backlog / per_worker)
            desired = min(self.max_workers, max(self.min_workers, wanted))
            if desired > len(active):
                low_since = None
                for _ in range(desired - len(active)):
                    slot = self._add_slot(group)
                    log.info("autoscale.up", slot=slot.index, backlog=self.backlog)
            elif desired < len(active):
                now = time.monotonic()
                if low_since is None:
                    low_since = now
                elif now - low_since >= sup.scale_down_after_seconds:
                    slot = self._slots[active[-1]]
                    slot.retiring = True
                    _terminate(slot)
                    log.info("autoscale.down", slot=slot.index, backlog=self.backlog)
                    low_since = now
            else:
                low_since = None

    # --- probes -------------------------------------------------------------------------
    def _alive(self) -> bool:
        return self._failure is None

    def _ready(self) -> bool:
        return not self._stopping.is_set() and self.ready_workers > 0

    def _metrics(self) -> str:
        lines = [
            "# HELP agents_worker_workers Worker processes by state.",
            "# TYPE agents_worker_workers gauge",
            f'agents_worker_workers{{state="ready"}} {self.ready_workers}',
            f'agents_worker_workers{{state="running"}} {len(self.worker_pids)}',
            "# HELP agents_worker_worker_restarts_total Worker processes restarted after a crash.",
            "# TYPE agents_worker_worker_restarts_total counter",
            f"agents_worker_worker_restarts_total {self.restarts}",
            "# HELP agents_worker_backlog Entries waiting or in flight (last autoscaler reading).",
            "# TYPE agents_worker_backlog gauge",
            f"agents_worker_backlog {self.backlog}",
        ]
        return "\n".join(lines) + "\n"


async def _backlog(client: redis.asyncio.Redis, keys: Keys, targets: list[str]) -> int:
    """Entries waiting or in flight: work entries are deleted on ack, so XLEN is the backlog."""
    with translate_errors("read the backlog"):
        async with client.pipeline(transaction=False) as pipe:
            for target in targets:
                pipe.xlen(keys.inbox(target))
            return sum(int(n) for n in await pipe.execute())


async def _read_line(lines: BufferedByteReceiveStream) -> str | None:
    try:
        return (await lines.receive_until(b"\n", 65536)).decode(errors="replace").strip()
    except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
        return None


def _terminate(slot: _Slot) -> None:
    if slot.process is not None and slot.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            slot.process.send_signal(signal.SIGTERM)
