"""AgentSession: a conversation as a hash of metadata and a list of JSON items.

==================================  ======  ===============================================
key                                 type    holds
==================================  ======  ===============================================
``<prefix>:{session:<id>}``         hash    session_id, user_id, created_at, updated_at,
                                            item_count
``<prefix>:{session:<id>}:items``   list    one JSON object per item, oldest first
``<prefix>:{session:<id>}:lease``   string  the fence token of the run holding the session
==================================  ======  ===============================================

Reads are one LRANGE; every write is one Lua script (fence check, change, metadata, TTL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.redis.connection import translate_errors
from runtime.sessions.base import BaseSession, SessionInfo
from runtime.sessions.codec import decode_items, text
from runtime.sessions.scripts import LUA_PRELUDE, StoreScripts

if TYPE_CHECKING:
    from agents.items import TResponseInputItem

__all__ = ["AgentSession"]

# KEYS: meta, items, lease.
_LIST = (
    LUA_PRELUDE
    + """
local function touch(count, t)
  redis.call('HSET', KEYS[1], 'session_id', ARGV[3], 'updated_at', t, 'item_count', count)
end
"""
)

# ARGV[4]: expected length (-1: any), ARGV[5…]: items → new length, -1 fenced, -2 conflict
_ADD = (
    _LIST
    + """
if fenced() then return -1 end
local expected = tonumber(ARGV[4])
if expected >= 0 and redis.call('LLEN', KEYS[2]) ~= expected then return -2 end
local n = 0
for i = 5, #ARGV, 4000 do
  n = redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 3999, #ARGV)))
end
local t = now()
touch(n, t)
redis.call('HSETNX', KEYS[1], 'created_at', t)
expire()
return n
"""
)

# → {-1} fenced, {0} empty, {0, item}
_POP = (
    _LIST
    + """
if fenced() then return {-1} end
local item = redis.call('RPOP', KEYS[2])
if not item then return {0} end
touch(redis.call('LLEN', KEYS[2]), now())
expire()
return {0, item}
"""
)

# ARGV[4]: how many items to keep → length after, -1 fenced
_TRIM = (
    _LIST
    + """
if fenced() then return -1 end
local keep = tonumber(ARGV[4])
local n = redis.call('LLEN', KEYS[2])
if n > keep then
  if keep == 0 then
    redis.call('DEL', KEYS[2])
  else
    redis.call('LTRIM', KEYS[2], 0, keep - 1)
  end
  n = keep
  touch(n, now())
  expire()
end
return n
"""
)

_DELETE = (
    _LIST
    + """
if fenced() then return -1 end
redis.call('DEL', KEYS[1], KEYS[2])
return 0
"""
)

# ARGV[4]: user id, ARGV[5]: '1' when there is one → 1 created, 0 exists already
_CREATE = (
    _LIST
    + """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
local t = now()
redis.call('HSET', KEYS[1], 'session_id', ARGV[3], 'created_at', t, 'updated_at', t,
           'item_count', 0)
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'user_id', ARGV[4]) end
expire()
return 1
"""
)

# KEYS: items. ARGV: count → {length, latest count items}
_TAIL = """
local n = redis.call('LLEN', KEYS[1])
if n == 0 or tonumber(ARGV[1]) == 0 then return {n, {}} end
return {n, redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)}
"""


_SCRIPTS = StoreScripts(add=_ADD, pop=_POP, trim=_TRIM, delete=_DELETE, create=_CREATE, tail=_TAIL)


class AgentSession(BaseSession):
    """A conversation in a Redis hash (metadata) and list (items): the SDK ``Session``.

    Pass it to the SDK's runner; ``get_items`` is one LRANGE and every write one atomic,
    Cluster-safe Lua script::

        session = AgentSession("conv-42", client, ttl=7 * 24 * 3600)
        result = await Runner.run(agent, "Hello", session=session)

    The conversation helpers are async (``await``), unlike a synchronous client::

        session = await AgentSession.create(user_id="user_123", redis_url="redis://…")
        async with session:                        # closes the client made from redis_url
            result = await Runner.run(agent, "Hello")
            await session.store_agent_result(result)
        later = await AgentSession.load(session.conversation_id, client=client)
        history = await later.to_agent_inputs()
    """

    kind = "AgentSession"

    def _bind(self) -> None:
        self._meta_key = self.keys.session(self.session_id)
        self._items_key = self.keys.session_items(self.session_id)
        self._write_keys = (self._meta_key, self._items_key, self.lease_key)
        self._scripts = _SCRIPTS.registered(self.client)

    async def length(self) -> int:
        self._check_open()
        with translate_errors("count session items"):
            return int(await self.client.llen(self._items_key))

    async def _read(self, limit: int | None) -> list[TResponseInputItem]:
        with translate_errors("read session items"):
            raw = await self.client.lrange(self._items_key, 0 if limit is None else -limit, -1)
        return decode_items(self.session_id, raw)

    async def _exists(self) -> bool:
        with translate_errors("look up a session"):
            return bool(await self.client.exists(self._meta_key))

    async def _info(self) -> SessionInfo | None:
        with translate_errors("read session metadata"):
            fields = await self.client.hgetall(self._meta_key)
        return _info_from_hash(self.session_id, fields)

    async def _tail(self, count: int) -> tuple[int, list[TResponseInputItem]]:
        with translate_errors("read session items"):
            length, raw = await self._scripts.tail(keys=[self._items_key], args=[count])
        return int(length), decode_items(self.session_id, raw)


def _info_from_hash(conversation_id: str, fields: dict[Any, Any]) -> SessionInfo | None:
    """Metadata from a hash read with HGETALL (bytes or str replies)."""
    if not fields:
        return None
    values = {text(k): text(v) for k, v in fields.items()}
    return SessionInfo(
        conversation_id=conversation_id,
        user_id=values.get("user_id"),
        created_at=_float(values.get("created_at")),
        updated_at=_float(values.get("updated_at")),
        item_count=int(values.get("item_count") or 0),
    )


def _float(value: str | None) -> float | None:
    return float(value) if value else None
