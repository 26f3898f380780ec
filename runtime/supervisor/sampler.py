"""The supervisor's sampler: inbox gauges and the fleet heartbeat, every few seconds.

Every ``observability.sample_interval_seconds``, for each target the supervisor serves, it
reads the inbox's figures (:func:`runtime.streams.stream_status`) and records the gauges
``inbox_lag``, ``inbox_pending`` and ``inbox_oldest_pending_age`` (label ``target``) through
a :class:`~runtime.observability.metrics.MetricsRecorder` of its own (process = the
supervisor's instance name); then it publishes the supervisor's heartbeat (its workers with
their state, pid, start, runs done and resident memory: :mod:`runtime.observability.fleet`)
and marks its targets as served. A Redis outage skips the sample (logged once per episode);
it never stops the supervisor.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable

import anyio
import redis.asyncio
from anyio.abc import TaskStatus

from runtime.errors import RedisError
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.observability.fleet import (
    FleetMember,
    WorkerInfo,
    WorkerState,
    publish_member,
    remove_member,
    touch_targets,
)
from runtime.observability.metrics import MetricsRecorder
from runtime.settings.model import Settings
from runtime.streams import StreamStatus, stream_status
from runtime.supervisor.slot import Slot

__all__ = ["BEATS_PER_TTL", "Sampler", "inbox_gauges", "rss_mb", "worker_state"]

log = get_logger(__name__)

BEATS_PER_TTL = 3
"""A heartbeat lives this many sample intervals: a supervisor that stopped beating (killed)
leaves the fleet after them."""
_REMOVE_LIMIT = 2.0


class Sampler:
    """Samples one supervisor's inboxes and workers.

    sampler = Sampler(keys, settings, instance="web-1:ab12", targets=["triage"],
                      slots=lambda: supervisor_slots, stopping=lambda: False)
    await tg.start(sampler.run, client)          # until cancelled
    """

    def __init__(
        self,
        keys: Keys,
        settings: Settings,
        *,
        instance: str,
        targets: list[str],
        slots: Callable[[], Iterable[Slot]],
        stopping: Callable[[], bool],
        http: str | None = None,
    ) -> None:
        self.keys = keys
        self.settings = settings
        self.instance = instance
        self.targets = targets
        self.http = http
        self.started_at = time.time()
        self.recorder = MetricsRecorder(keys, settings, process=instance)
        self.failing = False
        self.samples = 0
        """Samples taken and written (for tests and the logs)."""
        self._slots = slots
        self._stopping = stopping

    async def run(
        self,
        client: redis.asyncio.Redis,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sample now, then every ``observability.sample_interval_seconds``, until cancelled;
        on the way out the supervisor leaves the fleet."""
        interval = self.settings.observability.sample_interval_seconds
        task_status.started()
        try:
            while True:
                await self.sample(client)
                await anyio.sleep(interval)
        finally:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(_REMOVE_LIMIT),
                contextlib.suppress(RedisError),
            ):
                await remove_member(client, self.keys, self.instance)

    async def sample(self, client: redis.asyncio.Redis) -> bool:
        """Take one sample and write it; False when Redis could not be read or written."""
        try:
            statuses = await stream_status(client, self.keys, self.targets)
            for name, value, target in inbox_gauges(statuses):
                self.recorder.gauge(name, value, target=target)
            await self.recorder.flush(client)
            await publish_member(client, self.keys, self.member(statuses), self.ttl)
            await touch_targets(client, self.keys, self.targets)
        except RedisError as exc:
            if not self.failing:
                log.warning("sampler.failed", error=str(exc))
            self.failing = True
            return False
        if self.failing:
            log.info("sampler.recovered")
            self.failing = False
        self.samples += 1
        return True

    @property
    def ttl(self) -> float:
        return BEATS_PER_TTL * self.settings.observability.sample_interval_seconds

    def member(self, statuses: Iterable[StreamStatus] = ()) -> FleetMember:
        """This supervisor as its heartbeat says it (*statuses*: who has entries in hand)."""
        pending: dict[str, int] = {}
        for status in statuses:
            for group in status.groups:
                for consumer in group.consumers:
                    pending[consumer.name] = pending.get(consumer.name, 0) + consumer.pending
        stopping = self._stopping()
        workers = [
            WorkerInfo(
                name=slot.consumer,
                pid=None if slot.process is None else slot.process.pid,
                state=worker_state(slot, stopping=stopping, pending=pending.get(slot.consumer, 0)),
                started_at=slot.started_at,
                runs=slot.runs,
                rss_mb=None if slot.process is None else rss_mb(slot.process.pid),
            )
            for slot in sorted(self._slots(), key=lambda s: s.index)
        ]
        host, _, _ = self.instance.rpartition(":")
        return FleetMember(
            instance=self.instance,
            host=host or self.instance,
            pid=os.getpid(),
            started_at=self.started_at,
            http=self.http,
            targets=list(self.targets),
            workers=workers,
            seen=time.time(),
        )


def inbox_gauges(statuses: Iterable[StreamStatus]) -> list[tuple[str, float, str]]:
    """``(gauge, value, target)`` of each inbox: lag (when Redis can tell), pending and the
    oldest pending entry's age (0 when nothing is pending)."""
    gauges: list[tuple[str, float, str]] = []
    for status in statuses:
        if status.lag is not None:
            gauges.append(("inbox_lag", float(status.lag), status.target))
        gauges.append(("inbox_pending", float(status.pending), status.target))
        age = status.oldest_pending_age_s or 0.0
        gauges.append(("inbox_oldest_pending_age", age, status.target))
    return gauges


def worker_state(slot: Slot, *, stopping: bool, pending: int) -> WorkerState:
    """The state of *slot*'s worker for the dashboard (*pending*: entries it has in hand)."""
    if slot.process is None:
        return "stopped"
    if stopping or slot.retiring:
        return "draining"
    if slot.paused is not None:
        return "paused"
    if slot.ready_at is None:
        return "starting"
    return "busy" if pending else "ready"


def rss_mb(pid: int) -> float | None:
    """Resident memory of *pid* in MiB (Linux ``/proc``), ``None`` when it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024), 1)
