"""When a worker process makes way for a fresh one: after ``worker.max_entries`` entries
handled, or once its resident memory is over ``worker.max_rss_mb`` (checked with every lease
renewal). The worker then stops gracefully and the supervisor starts another in its slot.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from runtime.settings.model import WorkerSettings
from runtime.worker.outcome import WorkerStats

__all__ = ["Recycler", "rss_mb"]


class Recycler:
    """Tells *recycle* (with the reason) when one of the limits of *cfg* is reached."""

    def __init__(
        self, cfg: WorkerSettings, stats: WorkerStats, recycle: Callable[[str], None]
    ) -> None:
        self._cfg = cfg
        self._stats = stats
        self._recycle = recycle

    def after_entry(self) -> None:
        """An entry was handled: recycle after ``worker.max_entries``."""
        limit = self._cfg.max_entries
        if limit and self._stats.handled >= limit:
            self._recycle(f"handled {self._stats.handled} entries (worker.max_entries = {limit})")

    def check_memory(self) -> None:
        """Recycle when the resident memory is over ``worker.max_rss_mb``."""
        limit = self._cfg.max_rss_mb
        if limit:
            rss = rss_mb()
            if rss > limit:
                self._recycle(f"resident memory {rss:.0f} MiB over worker.max_rss_mb = {limit}")


def rss_mb() -> float:
    """This process's resident memory in MiB (0 where ``/proc`` cannot tell)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
