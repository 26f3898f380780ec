"""Settling an entry: writing its outcome through Redis faults, and the dead-letter hook.

An outcome is written with a fenced script (:mod:`runtime.worker.outcome`) and tried again
while Redis refuses it with a fault. A try whose reply was lost (the connection dropped or
timed out after the script was sent) is *ambiguous*: the script may have run, and the next
try then finds the entry no longer ours. That is told from a lost lease by looking for what
the first try wrote (for a dead letter: a letter with this entry id, written since the first
try began); found, the outcome is written (the ``on_dead_letter`` hook runs) and no lease was
lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import redis.asyncio
import redis.exceptions

from runtime.app import DeadLetterContext, Handler
from runtime.envelope import Envelope, Reason
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.settings.model import Settings
from runtime.worker.faults import UNREACHABLE, Faults, backoff, classify
from runtime.worker.leases import Leases
from runtime.worker.observe import Observer
from runtime.worker.outcome import Entry, Outcomes

__all__ = ["Settler"]

log = get_logger(__name__)

_LETTER_PAGE = 50
_LETTER_MARGIN_MS = 5_000
"""How far before the first try (by Redis's clock as last seen) a letter is looked for."""

Written = Callable[[int], Awaitable[bool]]
"""Whether an ambiguous try wrote the outcome, given Redis's time (ms) of the first try."""


class Settler:
    """Writes the outcomes of one worker's entries (see the module's docstring)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        settings: Settings,
        *,
        keys: Keys,
        outcomes: Outcomes,
        faults: Faults,
        leases: Leases,
        handlers: dict[bytes, Handler],
        redis_now: Callable[[], float],
        observer: Observer | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._keys = keys
        self._outcomes = outcomes
        self._faults = faults
        self._leases = leases
        self._handlers = handlers
        self._redis_now = redis_now
        self._observer = observer or Observer(None, clock_offset=lambda: 0.0)

    async def settle(
        self,
        entry: Entry,
        write: Callable[[], Awaitable[bool]],
        written: Written | None = None,
    ) -> bool:
        """Write an outcome with a fenced script; ``False`` when the lease was lost.

        While Redis refuses it with a fault (out of memory, loading…) it is tried again after
        a backoff, the entry kept in flight and its lease renewed, so nothing is lost and
        nothing runs twice; it ends when it is written, the lease is lost or shutdown cancels
        it (the entry is then released with the rest). After an ambiguous try, *written*
        tells whether that try wrote it.
        """
        caller = f"outcome {entry.entry_id.decode()}"
        began_ms = int(self._redis_now() * 1000)
        failures = 0
        ambiguous = settled = False
        entry.settling = True
        try:
            while not entry.lost:
                try:
                    settled = bool(await write())
                except redis.exceptions.RedisError as exc:
                    kind = classify(exc)
                    if kind is None:
                        raise
                    failures += 1
                    ambiguous = ambiguous or kind == UNREACHABLE
                    self._faults.failed(caller, exc, kind)
                    await anyio.sleep(backoff(failures))
                    continue
                self._faults.succeeded(caller)
                if not settled and ambiguous and written is not None:
                    settled = await written(began_ms)
                    log.info("outcome.ambiguous", entry=entry.entry_id.decode(), written=settled)
                if not settled:
                    self._leases.lost(entry)
                return settled
            return False
        finally:
            entry.settling = settled  # written: done with, whatever a renewal says after
            self._faults.forget(caller)

    async def dead_letter(
        self,
        entry: Entry,
        envelope: Envelope | None,
        reason: Reason,
        detail: str,
        error: str | None = None,
    ) -> None:
        """Dead-letter *entry* (nothing for a lost one), then run its target's hook."""
        if entry.lost:
            return

        async def write() -> bool:
            return await self._outcomes.dead_letter(entry, envelope, reason, detail, error)

        async def written(since_ms: int) -> bool:
            return await self._letter_written(entry, since_ms)

        if not await self.settle(entry, write, written):
            return
        handler = self._handlers[entry.stream]
        self._observer.dead_lettered(entry, handler, envelope, str(reason), detail, error)
        if handler.on_dead_letter is not None and envelope is not None:
            info = DeadLetterContext(
                envelope, str(reason), error, self._client, self._keys, self._settings, detail,
                self._observer.telemetry,
            )  # fmt: skip
            await _run_hook(handler.on_dead_letter, info)

    def gone(self, entry: Entry) -> Written:
        """Whether *entry* left its inbox: after an ambiguous retry, it was our retry that
        deleted it (or another worker's outcome), not a lease lost to a worker running it."""

        async def gone(_since_ms: int) -> bool:
            return not await self._client.xrange(entry.stream, entry.entry_id, entry.entry_id)

        return gone

    async def _letter_written(self, entry: Entry, since_ms: int) -> bool:
        """Whether the dead-letter stream of *entry*'s target holds a letter for it written
        since *since_ms* (less a margin), newest first: it was written a moment ago."""
        key = self._keys.dlq(self._handlers[entry.stream].name)
        low = f"{max(0, since_ms - _LETTER_MARGIN_MS)}-0"
        high = "+"
        while True:
            rows: Any = await self._client.xrevrange(key, high, low, count=_LETTER_PAGE)
            if any(fields.get(b"entry_id") == entry.entry_id for _, fields in rows):
                return True
            if len(rows) < _LETTER_PAGE:
                return False
            high = f"({rows[-1][0].decode()}"


async def _run_hook(
    hook: Callable[[DeadLetterContext], Awaitable[None]], info: DeadLetterContext
) -> None:
    """Run an ``on_dead_letter`` hook; once more after a Redis fault (raised by redis-py, or
    translated into :class:`runtime.errors.RedisError`). The letter is written: a failing
    hook must not undo that."""
    for attempt in (1, 2):
        try:
            await hook(info)
            return
        except Exception as exc:
            if attempt == 1 and _is_fault(exc):
                log.warning("dead_letter.hook_retried", target=info.envelope.target, error=str(exc))
                await anyio.sleep(backoff(1))
                continue
            log.exception("dead_letter.hook_failed", target=info.envelope.target)
            return


def _is_fault(exc: BaseException) -> bool:
    cause = exc.__cause__
    return classify(exc) is not None or (cause is not None and classify(cause) is not None)
