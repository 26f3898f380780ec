"""One run at a time per conversation, in submit order, and its turn written atomically.

When a run is submitted for a session it draws a number (``seq``) from the session's turns
hash, in the round trip that enqueues it (the hash maps the run's id to its number, so the
number need not travel in the entry). A worker runs it only when ``next == seq`` and it holds
the session lease (a key with a per-attempt token and a TTL, renewed while the run lasts). The
script that takes the turn also reads the conversation's history, and the script that ends
the turn writes everything the run added (:class:`~runtime.agents.conversation.TurnSession`)
and moves ``next`` on: one round trip each, and a turn is in the history entirely or not at
all. A run that is not yet due waits a moment and is then deferred (put back with a short
delay, not counted as a failure), so waiting runs never hold every worker slot while the run
that is due sits unread.

A run that can never come (its record is gone, or it was submitted but never enqueued) would
block the conversation: such a run is skipped after ``ORPHAN_AFTER`` seconds.

Drawing a number is idempotent by run id (a submit sent again keeps its number), and the end
of a turn leaves a mark (``ended``: the attempt's token, the number, the reply), so an end
sent again after its reply was lost answers as the first did and changes nothing. A replayed
dead letter draws a new number once per replay (:meth:`SessionTurns.reassign`): it joins the
conversation as its newest turn and gives up the number it held, which the turn passes over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
import redis.asyncio

from runtime.agents.conversation import TurnSession
from runtime.agents.protocol import TERMINAL_STATUS
from runtime.agents.runs import RunStore
from runtime.errors import Defer
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.redis.connection import (
    Batch,
    first_error,
    queue_script,
    run_batch,
    translate_errors,
)

__all__ = ["CONFLICT", "NOT_OURS", "ORPHAN_AFTER", "SessionTurns", "Turn", "check_end"]

log = get_logger(__name__)

ORPHAN_AFTER = 30.0
_POLL = 0.02
_WAIT_WINDOW = 1.0
_DEFER = 0.1

# KEYS: turns. ARGV: run id → seq ("next", the number due, is 1 while unset), stamped with
# Redis's clock. Once per run id while its number is in use: a submit sent again keeps the
# number drawn first.
_ASSIGN = """
local seq = redis.call('HGET', KEYS[1], 'id:' .. ARGV[1])
if seq then return tonumber(seq) end
seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local at = redis.call('TIME')[1]
redis.call('HSET', KEYS[1], 'run:' .. seq, ARGV[1], 'at:' .. seq, at, 'id:' .. ARGV[1], seq)
return seq
"""

# KEYS: turns. ARGV: run id, replay marker → the replayed run's new number: the next one
# of the conversation, drawn once per marker; the number it held is given up (the turn moves
# past it when it is due).
_REASSIGN = """
local read = redis.call('HMGET', KEYS[1], 'rp:' .. ARGV[1], 'id:' .. ARGV[1], 'next')
if read[1] == ARGV[2] and read[2] then return tonumber(read[2]) end
if read[2] then
  local old = tonumber(read[2])
  redis.call('HDEL', KEYS[1], 'run:' .. old, 'at:' .. old)
  if tonumber(read[3] or '1') == old then redis.call('HSET', KEYS[1], 'next', old + 1) end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local at = redis.call('TIME')[1]
redis.call('HSET', KEYS[1], 'run:' .. seq, ARGV[1], 'at:' .. seq, at, 'id:' .. ARGV[1], seq,
           'rp:' .. ARGV[1], ARGV[2])
return seq
"""

# KEYS: turns, lease, session items. ARGV: seq ('' = the number drawn for the run id,
# '0' = none), token, lease ms, run id.
# → {state, next, blocking run id, seconds since its number was drawn ('wait') or Redis's
# time now ('unassigned'), seq, history (when the turn was taken)} — ages by Redis's clock
_TRY = """
local read = redis.call('HMGET', KEYS[1], 'next', 'id:' .. ARGV[4])
local nxt, seq = tonumber(read[1] or '1'), ARGV[1]
if seq == '' then
  seq = read[2]
  if not seq then return {'unassigned', 0, '', redis.call('TIME')[1], 0, {}} end
end
seq = tonumber(seq)
if seq > nxt then
  local at = tonumber(redis.call('HGET', KEYS[1], 'at:' .. nxt) or '0')
  return {'wait', nxt, redis.call('HGET', KEYS[1], 'run:' .. nxt) or '',
          tostring(redis.call('TIME')[1] - at), seq, {}}
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return {'busy', nxt, '', '0', seq, {}} end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
local state = 'ok'
if seq < nxt then state = 'passed' end
return {state, nxt, '', '0', seq, redis.call('LRANGE', KEYS[3], 0, -1)}
"""

# KEYS: turns. ARGV: n → move next past n, only if it is still n.
_SKIP = """
if tonumber(redis.call('HGET', KEYS[1], 'next') or '1') == tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'next', ARGV[1] + 1)
  local run = redis.call('HGET', KEYS[1], 'run:' .. ARGV[1])
  if run then redis.call('HDEL', KEYS[1], 'id:' .. run, 'rp:' .. run) end
  redis.call('HDEL', KEYS[1], 'run:' .. ARGV[1], 'at:' .. ARGV[1])
  return 1
end
return 0
"""

# KEYS: turns, lease, session meta, session items.
# ARGV: seq, token, advance (1/0), ttl ms (0: none), session id, items held when the turn
# began (-1: the run changed nothing), how many of them to keep, the items to append…
# Writes the run's changes and ends the turn, only for the lease holder (or when the lease
# lapsed and nobody took the conversation since): an attempt that lost the conversation to
# another changes nothing; an end sent again (its reply lost) answers as the first did, from
# the 'ended' mark. → the history's length, -1 (not ours), -2 (a conflicting change)
_END = """
local mark = ARGV[2] .. ' ' .. ARGV[1] .. ' '
local ended = redis.call('HGET', KEYS[1], 'ended')
if ended and string.sub(ended, 1, #mark) == mark then
  return tonumber(string.sub(ended, #mark + 1))
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return -1 end
local seq = tonumber(ARGV[1])
local read = redis.call('HMGET', KEYS[1], 'next', 'run:' .. seq)
local nxt = tonumber(read[1] or '1')
local held = tonumber(ARGV[6])
local n = 0
if held >= 0 then
  if not holder and seq > 0 and nxt ~= seq then return -1 end
  local keep = tonumber(ARGV[7])
  n = nil
  if keep < held then
    if redis.call('LLEN', KEYS[4]) ~= held then return -2 end
    if keep == 0 then redis.call('DEL', KEYS[4]) else redis.call('LTRIM', KEYS[4], 0, keep - 1) end
    n = keep
  end
  for i = 8, #ARGV, 4000 do
    n = redis.call('RPUSH', KEYS[4], unpack(ARGV, i, math.min(i + 3999, #ARGV)))
  end
  if not n then n = redis.call('LLEN', KEYS[4]) end
  local t = redis.call('TIME')
  t = t[1] .. '.' .. string.format('%06d', t[2])
  redis.call('HSET', KEYS[3], 'session_id', ARGV[5], 'updated_at', t, 'item_count', n)
  redis.call('HSETNX', KEYS[3], 'created_at', t)
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[3], ttl)
    if n > 0 then redis.call('PEXPIRE', KEYS[4], ttl) end
  end
end
if ARGV[3] == '1' then
  if nxt == seq then redis.call('HSET', KEYS[1], 'next', seq + 1) end
  if read[2] then
    redis.call('HDEL', KEYS[1], 'run:' .. seq, 'at:' .. seq, 'id:' .. read[2], 'rp:' .. read[2])
  else
    redis.call('HDEL', KEYS[1], 'run:' .. seq, 'at:' .. seq)
  end
end
if holder then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[1], 'ended', mark .. n)
return n
"""

# KEYS: lease. ARGV: token, ms → 1 while ours: renewed, or taken back when it lapsed and
# nobody took it meanwhile (a blocked loop, a Redis that was loading); 0 when another holds it
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

NOT_OURS = -1
CONFLICT = -2


@dataclass(frozen=True)
class Turn:
    """A held turn: the session lease key, this attempt's token, what was read with it."""

    session_id: str
    seq: int
    """The run's number in the conversation (0: none, the run keeps no order)."""
    lease_key: str
    token: str
    passed: bool = False
    """The conversation had moved past this run already (it finished, or was skipped)."""
    history: tuple[bytes, ...] = ()
    """The conversation's items when the turn was taken (stored JSON, oldest first)."""
    state: str = "ok"
    """Whether the run may start, read in the same round trip (see :meth:`RunStore.peeked`)."""
    holds: bool = True
    """The lease was taken (``False``: a run that is over or cancelled, seen while waiting)."""

    def session(self) -> TurnSession:
        """The conversation as this run sees it (written by :meth:`SessionTurns.end`)."""
        return TurnSession(self.session_id, self.history)


class SessionTurns:
    """Assign, wait for, hold and end the turns of conversations."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: Keys,
        *,
        lease_seconds: float,
        session_ttl: float | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._lease_ms = int(lease_seconds * 1000)
        self._ttl_ms = round(session_ttl * 1000) if session_ttl else 0
        self.lease_seconds = lease_seconds
        self._assign = client.register_script(_ASSIGN)
        self._reassign = client.register_script(_REASSIGN)
        self._try = client.register_script(_TRY)
        self._skip = client.register_script(_SKIP)
        self._end = client.register_script(_END)
        self._renew = client.register_script(_RENEW)

    def assign(self, pipe: Any, session_id: str, run_id: str) -> None:
        """Queue on *pipe* the draw of the next number of *session_id* for *run_id* (at
        submit); the worker looks the number up by the run's id. Idempotent: while the run
        holds a number, drawing again gives it that number."""
        queue_script(pipe, self._assign, [self._keys.session_turns(session_id)], [run_id])

    async def reassign(self, session_id: str, run_id: str, marker: str) -> int:
        """Give a replayed run (*marker*: the replay) the conversation's next number, once
        per replay, and give up the number it held; the new number.

        A replayed run joins its conversation as its newest turn: the runs submitted before
        the replay go first, and the turn the run held (if any) is passed over, so it blocks
        nobody.
        """
        keys = [self._keys.session_turns(session_id)]
        with translate_errors("renumber a replayed run"):
            return int(await self._reassign(keys=keys, args=[run_id, marker]))

    async def acquire(
        self,
        session_id: str,
        run_id: str,
        token: str,
        runs: RunStore,
        *,
        seq: int | None = None,
        enqueued_at: float = 0.0,
    ) -> Turn:
        """Wait (briefly) until it is this run's turn; take the lease and read the history.

        Each try is one round trip that also reads the run's record (:meth:`RunStore.peek`),
        so a run that is over or cancelled is seen at once. *seq* is the run's number when
        the entry carries it; otherwise it is looked up by *run_id*. *enqueued_at* is when
        its entry was added, by Redis's clock (its stream id), for a run whose number never
        came.

        Raises:
            Defer: not its turn within the wait window; the entry is put back for later.
        """
        k = self._keys
        turns, lease = k.session_turns(session_id), k.session_lease(session_id)
        order = "" if seq is None else str(seq)
        deadline = time.monotonic() + _WAIT_WINDOW
        while True:
            with translate_errors("take a conversation's turn"):
                batch = Batch()
                queue_script(
                    batch,
                    self._try,
                    [turns, lease, k.session_items(session_id)],
                    [order, token, self._lease_ms, run_id],
                )
                runs.peek(run_id, batch)
                replies = await run_batch(self._client, batch, resend=True)
                first_error(replies)
                reply, record = replies
            state, nxt, blocker, when = (_text(x) for x in reply[:4])
            if state in ("ok", "passed"):
                return Turn(
                    session_id, int(reply[4]), lease, token, passed=state == "passed",
                    history=tuple(reply[5]), state=runs.peeked(record),
                )  # fmt: skip
            if (verdict := runs.peeked(record)) != "ok":
                # over already, or cancelled before it started: it needs no turn (when its
                # number comes up, the run holding the turn up is seen to be over)
                return Turn(session_id, int(reply[4]), lease, token, holds=False, state=verdict)
            if state == "unassigned" and float(when) - enqueued_at > ORPHAN_AFTER:
                # its number was never drawn (the submit failed half-way): keep no order
                log.warning("turn.unassigned", session=session_id, run=run_id)
                order = "0"
                continue
            if state == "wait":
                # no run holds the number due (a replayed run gave it up): pass it over
                why = await self._over(blocker, float(when), runs) if blocker else "freed"
                if why is not None:
                    # "finished": its worker is ending the turn right now; "orphaned": it
                    # can never come
                    if why == "orphaned":
                        log.warning("turn.skipped", session=session_id, seq=nxt, run=blocker)
                    with translate_errors("skip a turn"):
                        await self._skip(keys=[turns], args=[int(nxt)])
                    continue
            if time.monotonic() >= deadline:
                raise Defer(f"waiting for turn {nxt} of session {session_id!r}", delay=_DEFER)
            await anyio.sleep(_POLL)

    async def _over(self, run_id: str, age: float, runs: RunStore) -> str | None:
        """Why the run holding up the turn will not take it: "finished", "orphaned" or None.
        *age*: seconds since its number was drawn, by Redis's clock (no client's or worker's
        clock decides that a run will never come)."""
        old = age > ORPHAN_AFTER
        status = await runs.status(run_id) if run_id else {}
        if status.get("status") in TERMINAL_STATUS:
            return "finished"
        if not status:  # no record: never submitted completely, or long expired
            return "orphaned" if old else None
        never_enqueued = status.get("status") == "queued" and "enqueued" not in status
        return "orphaned" if never_enqueued and old else None

    async def renew(self, turn: Turn) -> bool:
        """Extend the lease; ``False`` when it was lost (another attempt holds the session)."""
        with translate_errors("renew a conversation's lease"):
            return bool(await self._renew(keys=[turn.lease_key], args=[turn.token, self._lease_ms]))

    def queue_end(
        self, pipe: Any, turn: Turn, session: TurnSession | None = None, *, advance: bool = True
    ) -> None:
        """Queue on *pipe* the end of the turn: write what *session* changed, free the lease
        and, with *advance*, let the next run start — in one script.

        Without *advance* (a retry is coming) the run keeps its place in the conversation;
        without *session* (or with one that changed nothing) the history is left alone. The
        script's reply is the history's length, ``NOT_OURS`` (another attempt holds the
        conversation: nothing was written) or ``CONFLICT`` (see :func:`check_end`).
        """
        queue_script(pipe, self._end, *self._end_call(turn, session, advance))

    async def end(self, turn: Turn, *, advance: bool = True) -> int:
        """End the turn without writing the history, in a round trip of its own."""
        with translate_errors("end a conversation's turn"):
            return int(await self._end(*self._end_call(turn, None, advance)))

    def _end_call(
        self, turn: Turn, session: TurnSession | None, advance: bool
    ) -> tuple[list[str], list[Any]]:
        k, sid = self._keys, turn.session_id
        args: list[Any] = [turn.seq, turn.token, 1 if advance else 0, self._ttl_ms, sid]
        if session is not None and session.changed:
            args += [session.held, session.keep, *session.added]
        else:
            args += [-1, 0]
        return [k.session_turns(sid), turn.lease_key, k.session(sid), k.session_items(sid)], args


def check_end(session_id: str, code: Any) -> str | None:
    """Why the end of a turn (its reply *code*) wrote nothing, or ``None`` when it did."""
    if isinstance(code, Exception):
        return f"conversation {session_id!r}: ending the turn failed: {code}"
    if int(code) == NOT_OURS:
        return (
            f"conversation {session_id!r}: the run lost its lease before its turn ended; "
            "another attempt holds the conversation, this one's items were not written"
        )
    if int(code) == CONFLICT:
        return (
            f"conversation {session_id!r}: items the run removed were changed by another "
            "writer while it ran; its items were not written"
        )
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
