"""One run at a time per conversation, in submit order.

When a run is submitted for a session it draws a number (``seq``) from the session's turns
hash. A worker runs it only when ``next == seq`` and it holds the session lease (a key with a
per-attempt token and a TTL, renewed while the run lasts; the token fences the session's
writes). When it ends, ``next`` moves on. A run that is not yet due waits a moment and is then
deferred (put back with a short delay, not counted as a failure), so waiting runs never hold
every worker slot while the run that is due sits unread.

A run that can never come (its record is gone, or it was submitted but never enqueued) would
block the conversation: such a run is skipped after ``ORPHAN_AFTER`` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
import redis.asyncio

from runtime.agents.protocol import TERMINAL_STATUS
from runtime.agents.runs import RunStore
from runtime.errors import Defer
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.redis.connection import translate_errors

__all__ = ["ORPHAN_AFTER", "SessionTurns", "Turn"]

log = get_logger(__name__)

ORPHAN_AFTER = 30.0
_POLL = 0.02
_WAIT_WINDOW = 1.0
_DEFER = 0.1

# KEYS: turns. ARGV: run id, now → seq
_ASSIGN = """
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'run:' .. seq, ARGV[1], 'at:' .. seq, ARGV[2])
if not redis.call('HGET', KEYS[1], 'next') then redis.call('HSET', KEYS[1], 'next', 1) end
return seq
"""

# KEYS: turns, lease, session items. ARGV: seq, token, lease ms
# → {state, next, blocking run id, its assign time, items held now}
_TRY = """
local nxt = tonumber(redis.call('HGET', KEYS[1], 'next') or '1')
local seq = tonumber(ARGV[1])
if seq > nxt then
  return {'wait', nxt, redis.call('HGET', KEYS[1], 'run:' .. nxt) or '',
          redis.call('HGET', KEYS[1], 'at:' .. nxt) or '0', 0}
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return {'busy', nxt, '', '0', 0} end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
local held = redis.call('LLEN', KEYS[3])
if seq < nxt then return {'passed', nxt, '', '0', held} end
return {'ok', nxt, '', '0', held}
"""

# KEYS: turns. ARGV: n → move next past n, only if it is still n.
_SKIP = """
if tonumber(redis.call('HGET', KEYS[1], 'next') or '1') == tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'next', ARGV[1] + 1)
  redis.call('HDEL', KEYS[1], 'run:' .. ARGV[1], 'at:' .. ARGV[1])
  return 1
end
return 0
"""

# KEYS: turns, lease. ARGV: seq, token, advance (1/0). Moves the turn on only for the holder
# (or when the lease lapsed): an attempt that lost the conversation to another changes nothing.
_FINISH = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return 0 end
if ARGV[3] == '1' then
  if tonumber(redis.call('HGET', KEYS[1], 'next') or '1') == tonumber(ARGV[1]) then
    redis.call('HSET', KEYS[1], 'next', ARGV[1] + 1)
  end
  redis.call('HDEL', KEYS[1], 'run:' .. ARGV[1], 'at:' .. ARGV[1])
end
if holder then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS: lease. ARGV: token, ms → 1 while ours
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


@dataclass(frozen=True)
class Turn:
    """A held turn: the session lease key and this attempt's token (the write fence)."""

    session_id: str
    seq: int | None
    lease_key: str
    token: str
    items_before: int = 0
    """Items the conversation held when the turn began (a retry rolls back to them)."""

    @property
    def fence(self) -> tuple[str, str]:
        return self.lease_key, self.token


class SessionTurns:
    """Assign, wait for, hold and release the turns of conversations."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, *, lease_seconds: float) -> None:
        self._client = client
        self._keys = keys
        self._lease_ms = int(lease_seconds * 1000)
        self.lease_seconds = lease_seconds
        self._assign = client.register_script(_ASSIGN)
        self._try = client.register_script(_TRY)
        self._skip = client.register_script(_SKIP)
        self._finish = client.register_script(_FINISH)
        self._renew = client.register_script(_RENEW)

    async def assign(self, session_id: str, run_id: str) -> int:
        """Draw the next number of *session_id* for *run_id* (at submit)."""
        with translate_errors("order a run in its conversation"):
            seq = await self._assign(
                keys=[self._keys.session_turns(session_id)], args=[run_id, time.time()]
            )
        return int(seq)

    async def acquire(self, session_id: str, seq: int | None, token: str, runs: RunStore) -> Turn:
        """Wait (briefly) until it is this run's turn and take the session lease.

        Raises:
            Defer: not its turn within the wait window; the entry is put back for later.
        """
        turns, lease = self._keys.session_turns(session_id), self._keys.session_lease(session_id)
        order = seq if seq is not None else 0  # no number: only the lease matters
        deadline = time.monotonic() + _WAIT_WINDOW
        while True:
            with translate_errors("take a conversation's turn"):
                reply: Any = await self._try(
                    keys=[turns, lease, self._keys.session_items(session_id)],
                    args=[order, token, self._lease_ms],
                )
            state, nxt, blocker, assigned_at, held = (_text(x) for x in reply)
            if state in ("ok", "passed"):
                if state == "passed" and seq is not None:
                    log.warning("turn.passed", session=session_id, seq=seq, next=nxt)
                return Turn(session_id, seq, lease, token, items_before=int(held))
            if state == "wait":
                why = await self._over(blocker, float(assigned_at), runs)
                if why is not None:
                    # "finished": its worker is releasing the turn right now; "orphaned": it
                    # can never come
                    if why == "orphaned":
                        log.warning("turn.skipped", session=session_id, seq=nxt, run=blocker)
                    with translate_errors("skip a turn"):
                        await self._skip(keys=[turns], args=[int(nxt)])
                    continue
            if time.monotonic() >= deadline:
                raise Defer(f"waiting for turn {nxt} of session {session_id!r}", delay=_DEFER)
            await anyio.sleep(_POLL)

    async def _over(self, run_id: str, assigned_at: float, runs: RunStore) -> str | None:
        """Why the run holding up the turn will not take it: "finished", "orphaned" or None."""
        old = time.time() - assigned_at > ORPHAN_AFTER
        status = await runs.status(run_id) if run_id else {}
        if status.get("status") in TERMINAL_STATUS:
            return "finished"
        if not status:  # no record: never submitted completely, or long expired
            return "orphaned" if old else None
        submitted = float(status.get("submitted_at") or 0)
        never_enqueued = status.get("status") == "queued" and "enqueued" not in status
        return "orphaned" if never_enqueued and time.time() - submitted > ORPHAN_AFTER else None

    async def renew(self, turn: Turn) -> bool:
        """Extend the lease; ``False`` when it was lost (another attempt holds the session)."""
        with translate_errors("renew a conversation's lease"):
            return bool(await self._renew(keys=[turn.lease_key], args=[turn.token, self._lease_ms]))

    async def release(self, turn: Turn, *, advance: bool = True, pipe: Any = None) -> None:
        """End the turn: free the lease and, with *advance*, let the next run start.

        Without *advance* (a retry is coming) the run keeps its place in the conversation.
        With *pipe* the release is only queued on that pipeline.
        """
        turns = self._keys.session_turns(turn.session_id)
        order = turn.seq if turn.seq is not None else 0
        args: list[Any] = [order, turn.token, 1 if advance else 0]
        if pipe is not None:
            await self._finish(keys=[turns, turn.lease_key], args=args, client=pipe)
            return
        with translate_errors("end a conversation's turn"):
            await self._finish(keys=[turns, turn.lease_key], args=args)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
