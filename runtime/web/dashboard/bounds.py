"""How much one request of the dashboard reads at most, whatever the number of runs in Redis."""

from __future__ import annotations

__all__ = ["EVENTS_MAX", "LETTERS_MAX", "RUNS_WINDOW", "SPANS_MAX", "TARGETS_MAX", "TICK_SECONDS"]

RUNS_WINDOW = 2000
"""Lifecycle events (the newest) the recent-runs table reads and filters."""
EVENTS_MAX = 500
"""Events of one run its page shows (the first ones)."""
SPANS_MAX = 2000
"""Spans of one trace its waterfall draws."""
TARGETS_MAX = 200
"""Targets whose inbox the overview shows."""
LETTERS_MAX = 100
"""Letters of one dead-letter stream the page lists (the oldest)."""
TICK_SECONDS = 1.0
"""A live feed reads Redis at most this often (one connection, one reader)."""
