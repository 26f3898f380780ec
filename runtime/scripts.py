"""The Lua scripts of the stream core: every compound step is one atomic script.

Scripts are registered objects (``register_script``): after a ``SCRIPT FLUSH`` or a server
restart, redis-py reloads them on the ``NOSCRIPT`` reply, and :class:`Script` sends one whole
(EVAL) when a flush comes between that reload and the call. All keys of one script share a
hash tag (an inbox with its delayed set and dead-letter stream), so they run on Redis Cluster
too.

Times that cross processes come from Redis: a script that needs "now" (a delay, the mover of
due entries, the time of a dead letter) reads ``TIME`` itself (Redis ≥ 5 replicates a script's
effects, so this is allowed), so that no two hosts' clocks are ever compared.

Out of memory (``OOM``), Redis refuses a script at its first write that could grow memory,
before it changed anything: each script below either runs whole or writes nothing.

Fencing: a worker changes the fate of an entry (dead-letter, retry, release, renew) only while
the entry is still pending *for that worker*; an entry whose lease expired and that another
worker reclaimed is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
import redis.exceptions

__all__ = ["Script", "Scripts"]

# Is ARGV id pending for consumer ARGV c? (XPENDING's extended form for one id.)
_OWNED = """
local function owned(stream, group, id, consumer)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  return #p == 1 and p[1][2] == consumer
end
"""

# Redis's clock in milliseconds (13 digits: exact in a Lua number and in its '%.14g' text).
_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: inbox, delayed[, idempotency key]. ARGV: envelope, task id, window ms, when, ms.
# when = 'in' (ms from now, Redis's clock) or 'at' (ms since the epoch); a time not in the
# future enqueues at once. With the idempotency key: a duplicate within the window returns
# the first task's id. → {1, entry id or '', run-at ms or 0} | {0, first task id}
ENQUEUE = (
    _NOW
    + """
if KEYS[3] then
  local first = redis.call('GET', KEYS[3])
  if first then return {0, first} end
end
local now = now_ms()
local at = tonumber(ARGV[5])
if ARGV[4] == 'in' then at = now + at end
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3]) end
if at > now then
  redis.call('ZADD', KEYS[2], at, ARGV[1])
  return {1, '', at}
end
return {1, redis.call('XADD', KEYS[1], '*', 'envelope', ARGV[1]), 0}
"""
)

# KEYS: delayed, inbox. ARGV: limit. Moves the envelopes due by Redis's clock into the inbox.
# → {moved, score of the next one or false, now ms}
MOVE_DUE = (
    _NOW
    + """
local now = now_ms()
local due = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, ARGV[1])
for _, envelope in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'envelope', envelope)
end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, nxt[2] or false, now}
"""
)

# KEYS: inbox. ARGV: group, id, id, … Acks and deletes the ids: neither command can grow
# memory, so this works on a Redis out of memory (where MULTI is refused).
ACK = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""

# KEYS: inbox, dlq. ARGV: group, entry id, consumer, maxlen, field, value, …
# The letter gets a 'failed_at' field (Unix time, Redis's clock) first.
DEAD_LETTER = (
    _OWNED
    + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
local t = redis.call('TIME')
local failed_at = t[1] .. '.' .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'failed_at', failed_at,
           unpack(ARGV, 5))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS: inbox, delayed. ARGV: group, entry id, consumer, delay ms, next envelope.
RETRY = (
    _OWNED
    + _NOW
    + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[4]), ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS: inbox. ARGV: group, consumer, id, … → the ids no longer ours (lease lost).
RENEW = (
    _OWNED
    + """
local mine, lost = {}, {}
for i = 3, #ARGV do
  if owned(KEYS[1], ARGV[1], ARGV[i], ARGV[2]) then
    table.insert(mine, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
if #mine > 0 then
  -- JUSTID: reset the idle time without counting a delivery
  table.insert(mine, 'JUSTID')
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(mine))
end
return lost
"""
)

# KEYS: inbox. ARGV: group, consumer, idle ms, id, retry count, id, retry count, …
# Sets the idle time and delivery count of our entries: with the lease as idle time, makes
# them claimable by any reclaimer at once, not counting the cancelled delivery; with 0, takes
# back entries our own reclaimer claimed while they ran here, not counting that claim.
RELEASE = (
    _OWNED
    + """
local released = 0
for i = 4, #ARGV, 2 do
  if owned(KEYS[1], ARGV[1], ARGV[i], ARGV[2]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i],
               'IDLE', ARGV[3], 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
    released = released + 1
  end
end
return released
"""
)

# KEYS: dlq, inbox. ARGV: dlq entry id, envelope. Moves one dead letter back, exactly once.
REPLAY = """
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], '*', 'envelope', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""


# KEYS: inbox. ARGV: group, consumer. Deletes the consumer only if it owns no pending entry.
DELETE_CONSUMER = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) >= 0 and 1 or 0
"""


class Script:
    """A registered script that survives ``SCRIPT FLUSH``, even one sent again and again.

    It is called by its hash (EVALSHA); on ``NOSCRIPT`` redis-py loads it and calls it once
    more, and should the cache be flushed again in between, it is sent whole (EVAL), which
    cannot meet ``NOSCRIPT``.
    """

    __slots__ = ("_client", "_registered", "script")

    def __init__(self, client: redis.asyncio.Redis, script: str) -> None:
        self.script = script
        """The Lua source (what ``queue_script`` sends as EVAL in a pipeline)."""
        self._client = client
        self._registered = client.register_script(script)

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await self._registered(keys=keys, args=args)
        except redis.exceptions.NoScriptError:  # flushed again between the reload and the call
            return await self._client.eval(self.script, len(keys), *keys, *args)


@dataclass(frozen=True)
class Scripts:
    """The scripts registered on one client."""

    enqueue: Script
    move_due: Script
    ack: Script
    dead_letter: Script
    retry: Script
    renew: Script
    release: Script
    replay: Script
    delete_consumer: Script

    @classmethod
    def register(cls, client: redis.asyncio.Redis) -> Scripts:
        return cls(
            enqueue=Script(client, ENQUEUE),
            move_due=Script(client, MOVE_DUE),
            ack=Script(client, ACK),
            dead_letter=Script(client, DEAD_LETTER),
            retry=Script(client, RETRY),
            renew=Script(client, RENEW),
            release=Script(client, RELEASE),
            replay=Script(client, REPLAY),
            delete_consumer=Script(client, DELETE_CONSUMER),
        )
