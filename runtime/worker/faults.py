"""Redis faults: error replies and outages a worker rides out instead of dying.

A *fault* is a state of the server that ends by itself or by an operator's hand: out of
memory (``OOM``, maxmemory reached), read-only (``READONLY``, a failover made this node a
replica), loading its data (``LOADING``, after a restart), unable to persist (``MISCONF``), busy
running a script (``BUSY``), a replica without its master (``MASTERDOWN``), a cluster in
transition (``TRYAGAIN``, ``CLUSTERDOWN``), too few replicas (``NOREPLICAS``), a blocked read
cut by a role change (``UNBLOCKED``), a flushed script cache (``NOSCRIPT``), or no answer at
all (connection refused or timed out). Anything else Redis refuses is a bug or a
misconfiguration and is raised.

A worker meeting a fault backs off with jitter and tries again; :class:`Faults` turns the
failures of its many loops into *episodes*: ``redis.fault`` is logged once when the first
call fails, ``redis.recovered`` once every failing call has succeeded again, and the worker's
``on_fault`` callback hears the same (a short reason, then ``None``). Within an episode, a
fault of another kind (a restarting Redis is first unreachable, then loading) updates the
reason: ``redis.fault_changed`` is logged and ``on_fault`` hears the new reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import redis.exceptions

from runtime.log import get_logger

__all__ = ["Faults", "backoff", "classify", "retry_backoff"]

log = get_logger(__name__)

# The first word of an error reply → what it means, for the fault's reason.
_REPLIES = {
    "OOM": "out of memory (maxmemory reached)",
    "READONLY": "read-only (a failover made it a replica)",
    "LOADING": "loading its data set",
    "MISCONF": "refusing writes: it cannot persist (MISCONF)",
    "BUSY": "busy running a script",
    "MASTERDOWN": "a replica that lost its master",
    "TRYAGAIN": "resharding (TRYAGAIN)",
    "CLUSTERDOWN": "a cluster that is down",
    "NOREPLICAS": "short of replicas (min-replicas-to-write)",
    "UNBLOCKED": "changing its role (a blocked call was cut)",
    "NOSCRIPT": "without our scripts (SCRIPT FLUSH or a restart)",
}
UNREACHABLE = "UNREACHABLE"

# redis-py strips the code of the replies it maps to a class of its own; the others keep it.
_CLASSES: tuple[tuple[type[Exception], str], ...] = (
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.NoScriptError, "NOSCRIPT"),
    (redis.exceptions.MasterDownError, "MASTERDOWN"),
    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
)

_BASE_DELAY = 0.1
_MAX_DELAY = 5.0


def classify(exc: BaseException) -> str | None:
    """The kind of Redis fault *exc* is (``"OOM"``, ``"LOADING"``, ``"UNREACHABLE"``…), or
    ``None`` when it is not one (a refused command that trying again cannot fix)."""
    for cls, kind in _CLASSES:
        if isinstance(exc, cls):
            return kind
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return UNREACHABLE
    if isinstance(exc, redis.exceptions.ResponseError):
        word = str(exc).split(" ", 1)[0]
        if word in _REPLIES:
            return word
    return None


def describe(kind: str) -> str:
    """A short reason for a fault of *kind*, e.g. ``redis OOM: out of memory (…)``."""
    what = _REPLIES.get(kind, "unreachable (connection refused, lost or timed out)")
    return f"redis {kind}: {what}"


def backoff(failures: int) -> float:
    """Seconds to wait after *failures* failures in a row: exponential, capped, with jitter
    (half fixed, half random), so a fleet does not retry in step."""
    ceiling = min(_MAX_DELAY, _BASE_DELAY * 2.0 ** min(failures, 16))
    return ceiling / 2 + random.uniform(0.0, ceiling / 2)


def retry_backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before the next attempt of a task that failed *attempt* times before this
    one (``worker.retry_backoff_seconds``, ``…_max_seconds``): exponential, capped, with
    equal jitter (half fixed, half random)."""
    ceiling = min(cap, base * (2.0**attempt))
    return ceiling / 2 + random.uniform(0.0, ceiling / 2)


class Faults:
    """The fault episodes of one worker.

    Each caller names itself (a loop, or the outcome of one entry). An episode begins when
    the first caller reports a fault and ends when every caller that reported one has
    succeeded since (or was :meth:`forget`-ed): a call that works under a fault (reads do
    while Redis is out of memory) does not end an episode another call is still in.
    """

    def __init__(self, on_fault: Callable[[str | None], None] | None = None) -> None:
        self._on_fault = on_fault
        self._failing: dict[str, str] = {}
        self.reason: str | None = None
        """The reason of the episode in progress, ``None`` between episodes."""

    def failed(self, caller: str, exc: BaseException, kind: str) -> None:
        """*caller*'s call failed with a fault of *kind*."""
        self._failing[caller] = kind
        if self.reason is None:
            self.reason = describe(kind)
            log.warning("redis.fault", kind=kind, caller=caller, error=str(exc), reason=self.reason)
        elif self.reason != describe(kind):
            self.reason = describe(kind)
            log.info("redis.fault_changed", kind=kind, caller=caller, reason=self.reason)
        else:
            return
        self._tell(self.reason)

    def succeeded(self, caller: str) -> None:
        """*caller*'s call succeeded (cheap when it was not failing: one dict lookup)."""
        if caller in self._failing:
            del self._failing[caller]
            if not self._failing:
                self._end("redis.recovered")

    def forget(self, caller: str) -> None:
        """*caller* stopped trying (shut down, or its entry is no longer ours)."""
        if self._failing.pop(caller, None) is not None and not self._failing:
            self._end("redis.fault_ended")

    def _end(self, event: str) -> None:
        if self.reason is None:
            return
        log.info(event, reason=self.reason)
        self.reason = None
        self._tell(None)

    def _tell(self, reason: str | None) -> None:
        if self._on_fault is not None:
            try:
                self._on_fault(reason)
            except Exception:  # a broken callback must not stop the worker
                log.exception("redis.fault_callback_failed")
