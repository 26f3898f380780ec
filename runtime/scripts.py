"""The Lua scripts of the stream core: every compound step is one atomic script.

Scripts are registered objects (``register_script``): after a ``SCRIPT FLUSH`` or a server
restart, redis-py reloads them on the ``NOSCRIPT`` reply. All keys of one script share a hash
tag (an inbox with its delayed set and dead-letter stream), so they run on Redis Cluster too.

Fencing: a worker changes the fate of an entry (dead-letter, retry, release, renew) only while
the entry is still pending *for that worker*; an entry whose lease expired and that another
worker reclaimed is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio
from redis.commands.core import AsyncScript

__all__ = ["Scripts"]

# Is ARGV id pending for consumer ARGV c? (XPENDING's extended form for one id.)
_OWNED = """
local function owned(stream, group, id, consumer)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  return #p == 1 and p[1][2] == consumer
end
"""

# KEYS: inbox, delayed, idempotency key. ARGV: envelope, task id, window ms, run-at ms (0: now).
# → {1, entry id or ''} when enqueued, {0, first task id} for a duplicate.
ENQUEUE_ONCE = """
local first = redis.call('GET', KEYS[3])
if first then return {0, first} end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
if tonumber(ARGV[4]) > 0 then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  return {1, ''}
end
return {1, redis.call('XADD', KEYS[1], '*', 'envelope', ARGV[1])}
"""

# KEYS: delayed, inbox. ARGV: now ms, limit. Moves due envelopes into the inbox.
# → {moved, score of the next one or false}
MOVE_DUE = """
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
for _, envelope in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'envelope', envelope)
end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, nxt[2] or false}
"""

# KEYS: inbox, dlq. ARGV: group, entry id, consumer, maxlen, field, value, …
DEAD_LETTER = (
    _OWNED
    + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS: inbox, delayed. ARGV: group, entry id, consumer, run-at ms, next envelope.
RETRY = (
    _OWNED
    + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
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
# Makes our entries claimable by any reclaimer at once, not counting the cancelled delivery.
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


@dataclass(frozen=True)
class Scripts:
    """The scripts registered on one client."""

    enqueue_once: AsyncScript
    move_due: AsyncScript
    dead_letter: AsyncScript
    retry: AsyncScript
    renew: AsyncScript
    release: AsyncScript
    replay: AsyncScript
    delete_consumer: AsyncScript

    @classmethod
    def register(cls, client: redis.asyncio.Redis) -> Scripts:
        return cls(
            enqueue_once=client.register_script(ENQUEUE_ONCE),
            move_due=client.register_script(MOVE_DUE),
            dead_letter=client.register_script(DEAD_LETTER),
            retry=client.register_script(RETRY),
            renew=client.register_script(RENEW),
            release=client.register_script(RELEASE),
            replay=client.register_script(REPLAY),
            delete_consumer=client.register_script(DELETE_CONSUMER),
        )
