"""What the dashboard reads from Redis, each read bounded whatever the number of runs.

    reader = DashboardReader(state.client, state.keys, state.settings)
    page = await reader.runs(limit=50, status="failed")      # XREVRANGE … COUNT, ≤ 2,000 events
    detail = await reader.run("r-42")                         # one run's keys only

Bounds: the recent runs read at most ``RUNS_WINDOW`` lifecycle events (``XREVRANGE`` in
pages, :func:`runtime.observability.lifecycle.recent_runs`); a run's page reads its own record,
at most ``EVENTS_MAX`` of its events and at most ``SPANS_MAX`` of its trace's spans; the
inboxes are those of the targets the supervisors reported lately (``keys.targets()``, at most
``TARGETS_MAX``), never found with ``KEYS`` or ``SCAN``; a dead-letter stream shows its
``LETTERS_MAX`` oldest letters (the bounds are in :mod:`runtime.web.dashboard.bounds`).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import redis.asyncio

from runtime.agents.runs import RunStore, requeue_for_replay
from runtime.dlq import DeadLetters, Replayed
from runtime.errors import MissingModuleError
from runtime.keys import Keys
from runtime.observability.fleet import read_fleet, read_targets
from runtime.observability.lifecycle import recent_runs
from runtime.observability.timeseries import MetricsStore
from runtime.redis.connection import translate_errors
from runtime.settings.model import Settings
from runtime.streams import stream_status
from runtime.web.dashboard.bounds import LETTERS_MAX, RUNS_WINDOW, TARGETS_MAX
from runtime.web.dashboard.detail import letter_row, run_detail
from runtime.web.dashboard.views import (
    Charts,
    DlqTarget,
    DlqView,
    InboxRow,
    Overview,
    RunDetail,
    RunFilter,
    RunsPage,
)

__all__ = ["DashboardReader"]

TARGETS_HORIZON_MIN = 60.0
BUCKET_MS = 60_000
BUCKETS = 60
_COUNTERS = (
    "runs_submitted",
    "runs_started",
    "runs_completed",
    "runs_failed",
    "runs_cancelled",
    "retries",
    "dead_letters",
)


class DashboardReader:
    """Reads the views of the dashboard from Redis (and acts: replay, cancel)."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, settings: Settings) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.runs_store = RunStore(client, keys, settings.runs)
        self.metrics = MetricsStore(client, keys)
        self.letters = DeadLetters(client, keys=keys)
        self._no_module = False

    # --- overview ----------------------------------------------------------------------
    async def overview(self) -> Overview:
        """Supervisors and workers, every inbox's figures, and the fleet's counters."""
        fleet = await read_fleet(self.client, self.keys)
        targets = await self.targets()
        streams = await stream_status(self.client, self.keys, targets)
        inboxes = [
            InboxRow(
                target=s.target,
                length=s.length,
                lag=s.lag,
                pending=s.pending,
                oldest_pending_age_s=s.oldest_pending_age_s,
                delayed=s.delayed,
                dlq=s.dlq,
                consumers=sum(len(g.consumers) for g in s.groups),
            )
            for s in streams
        ]
        return Overview(fleet=fleet, inboxes=inboxes, totals=await self.totals())

    async def targets(self, *, recent: bool = True) -> list[str]:
        """The targets the supervisors report serving (never found by scanning).

        *recent*: only those a supervisor reported within :meth:`targets_horizon` (an inbox
        nobody serves any more leaves the overview); else every target reported in the last
        7 days (the targets set forgets older ones).
        """
        since = time.time() - self.targets_horizon() if recent else None
        return (await read_targets(self.client, self.keys, since=since))[:TARGETS_MAX]

    def targets_horizon(self) -> float:
        """Seconds a target stays listed after its last report: three samples, at least
        ``TARGETS_HORIZON_MIN`` (a supervisor reports its targets at every sample)."""
        interval = self.settings.observability.sample_interval_seconds
        return max(TARGETS_HORIZON_MIN, 3 * interval)

    async def totals(self) -> dict[str, float]:
        """Fleet-wide counters, summed over their labels."""
        sums = dict.fromkeys(_COUNTERS, 0.0)
        for total in await self.metrics.totals():
            if total.metric in sums:
                sums[total.metric] += total.value
        return sums

    # --- runs --------------------------------------------------------------------------
    async def head(self) -> str | None:
        """The id of the newest lifecycle event (what changes when any run changes)."""
        with translate_errors("read the run lifecycle feed"):
            rows: Any = await self.client.xrevrange(self.keys.events(), "+", "-", count=1)
        if not rows:
            return None
        entry_id = rows[0][0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def runs(
        self, *, limit: int = 50, status: str | None = None, agent: str | None = None
    ) -> RunsPage:
        """The latest runs, newest first, filtered over the newest ``RUNS_WINDOW``
        lifecycle events."""
        with translate_errors("read the recent runs"):
            rows = await recent_runs(
                self.client,
                self.keys,
                limit=limit,
                status=status,
                agent=agent,
                scan=RUNS_WINDOW,
            )
        return RunsPage(runs=rows, window=RUNS_WINDOW, filter=RunFilter(status=status, agent=agent))

    async def run(self, run_id: str) -> RunDetail:
        """One run's record, events and span waterfall (``run`` is ``None`` when unknown)."""
        return await run_detail(self.client, self.keys, run_id)

    async def cancel(self, run_id: str) -> bool:
        """Ask a queued or running run to stop; ``False`` when it is unknown or over."""
        return await self.runs_store.request_cancel(run_id)

    # --- charts ------------------------------------------------------------------------
    async def charts(self, now: float | None = None) -> Charts:
        """Runs completed and failed per minute, and their average latency, for the last
        hour, from TimeSeries (``history`` false, with the reason, when there is none)."""
        end_ms = int((time.time() if now is None else now) * 1000)
        start_ms = (end_ms // BUCKET_MS - (BUCKETS - 1)) * BUCKET_MS
        starts = [start_ms + i * BUCKET_MS for i in range(BUCKETS)]
        reason = await self._no_history()
        if reason is None:
            try:
                return await self._charts(starts, end_ms)
            except MissingModuleError:  # unloaded since the module list was read
                self._no_module = True
                reason = "this Redis has no TimeSeries module"
        return Charts(
            history=False,
            reason=reason,
            bucket_ms=BUCKET_MS,
            x=[],
            completed=[],
            failed=[],
            latency_ms=[],
        )

    async def _charts(self, starts: list[int], end_ms: int) -> Charts:
        first, bucket = starts[0], BUCKET_MS
        completed = await self.metrics.range(
            "runs_completed", first, end_ms, bucket_ms=bucket, reduce="sum"
        )
        failed = await self.metrics.range(
            "runs_failed", first, end_ms, bucket_ms=bucket, reduce="sum"
        )
        latency = await self.metrics.latency_range("run_latency", first, end_ms, bucket_ms=bucket)
        return Charts(
            history=True,
            bucket_ms=BUCKET_MS,
            x=[start / 1000 for start in starts],
            completed=[v or 0.0 for v in _align(completed, starts)],
            failed=[v or 0.0 for v in _align(failed, starts)],
            latency_ms=_align(latency, starts, add=False),
        )

    async def _no_history(self) -> str | None:
        """Why there are no charts (``None``: there are)."""
        if not self.settings.observability.metrics:
            return "metrics are off (observability.metrics)"
        if self._no_module or not await self.metrics.history_available():
            return "this Redis has no TimeSeries module"
        return None

    # --- dead letters ------------------------------------------------------------------
    async def dlq(self, target: str | None = None) -> DlqView:
        """Every target's dead-letter count; with *target*, its oldest letters too.

        Every target reported in the last 7 days is counted, served now or not: dead letters
        outlive the workers that wrote them."""
        targets = await self.targets(recent=False)
        if target and target not in targets:
            targets = sorted([*targets, target])
        with translate_errors("read the dead-letter streams"):
            async with self.client.pipeline(transaction=False) as pipe:
                for name in targets:
                    pipe.xlen(self.keys.dlq(name))
                sizes = await pipe.execute()
        counts = [DlqTarget(target=t, size=int(n)) for t, n in zip(targets, sizes, strict=True)]
        if not target:
            return DlqView(targets=counts, target=None, size=0, letters=[])
        letters = await self.letters.read(target, count=LETTERS_MAX)
        size = next(c.size for c in counts if c.target == target)
        rows = [letter_row(letter) for letter in letters]
        return DlqView(targets=counts, target=target, size=size, letters=rows)

    async def replay(self, target: str, ids: list[str] | None) -> Replayed:
        """Put letters (all when *ids* is ``None``) back into *target*'s inbox; an agent run's
        record says ``queued`` again (as ``agents-worker dlq replay`` does)."""
        requeue = functools.partial(requeue_for_replay, self.client, self.keys, self.settings.runs)
        return await self.letters.replay(target, ids, after_move=requeue)


def _align(
    points: list[tuple[int, float]], starts: list[int], *, add: bool = True
) -> list[float | None]:
    """*points* (timestamp ms, value) as one value per bucket of *starts* (``None`` where
    there is none); two points in one bucket are added (counts) or the later kept."""
    by_bucket: dict[int, float] = {}
    for at, value in points:
        bucket = int(at) // BUCKET_MS * BUCKET_MS
        by_bucket[bucket] = by_bucket.get(bucket, 0.0) + value if add else value
    return [by_bucket.get(start) for start in starts]
