"""JSONSession: a conversation as one RedisJSON document.

``<prefix>:{session:<id>}:doc`` holds::

    {"meta": {"session_id": …, "user_id": …, "created_at": …, "updated_at": …,
              "item_count": …},
     "items": [{…}, {…}, …]}

Reads are one ``JSON.GET`` of a path slice (``$.items[-N:]``); every write is one Lua script
(fence check, create-or-append, metadata, TTL). Needs the server's JSON module (Redis 8, Redis
Stack): without it every call raises :class:`~runtime.errors.MissingModuleError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec

from runtime.errors import MissingModuleError, RedisCommandError
from runtime.redis.connection import execute, translate_errors
from runtime.sessions.base import BaseSession, SessionInfo
from runtime.sessions.codec import corrupt, decode_array
from runtime.sessions.scripts import LUA_PRELUDE, StoreScripts

if TYPE_CHECKING:
    from agents.items import TResponseInputItem

__all__ = ["JSONSession"]

# KEYS: doc, lease.
_DOC = (
    LUA_PRELUDE
    + """
local function length()  -- -1: no document (JSON.TYPE, not EXISTS: fails without the module)
  local found = redis.call('JSON.TYPE', KEYS[1])
  if type(found) == 'table' then found = found[1] end
  if not found then return -1 end
  return redis.call('JSON.ARRLEN', KEYS[1], '$.items')[1] or 0
end
local function new_doc(t, user)
  redis.call('JSON.SET', KEYS[1], '$', '{"meta":{"session_id":' .. cjson.encode(ARGV[3])
    .. ',"user_id":' .. user .. ',"created_at":' .. t .. ',"updated_at":' .. t
    .. ',"item_count":0},"items":[]}')
end
local function touch(count, t)
  redis.call('JSON.SET', KEYS[1], '$.meta.updated_at', t)
  redis.call('JSON.SET', KEYS[1], '$.meta.item_count', count)
end
"""
)

# ARGV[4]: expected length (-1: any), ARGV[5…]: items → new length, -1 fenced, -2 conflict
_ADD = (
    _DOC
    + """
if fenced() then return -1 end
local n = length()
local expected = tonumber(ARGV[4])
if expected >= 0 and math.max(n, 0) ~= expected then return -2 end
local t = now()
if n < 0 then new_doc(t, 'null') end
for i = 5, #ARGV, 4000 do
  n = redis.call('JSON.ARRAPPEND', KEYS[1], '$.items',
                 unpack(ARGV, i, math.min(i + 3999, #ARGV)))[1]
end
touch(n, t)
expire()
return n
"""
)

# → {-1} fenced, {0} empty, {0, item}
_POP = (
    _DOC
    + """
if fenced() then return {-1} end
if length() <= 0 then return {0} end
local item = redis.call('JSON.ARRPOP', KEYS[1], '$.items')[1]
touch(redis.call('JSON.ARRLEN', KEYS[1], '$.items')[1], now())
expire()
return {0, item}
"""
)

# ARGV[4]: how many items to keep → length after, -1 fenced
_TRIM = (
    _DOC
    + """
if fenced() then return -1 end
local keep = tonumber(ARGV[4])
local n = length()
if n > keep then
  if keep == 0 then
    redis.call('JSON.SET', KEYS[1], '$.items', '[]')
  else
    redis.call('JSON.ARRTRIM', KEYS[1], '$.items', 0, keep - 1)
  end
  n = keep
  touch(n, now())
  expire()
end
return math.max(n, 0)
"""
)

_DELETE = (
    _DOC
    + """
if fenced() then return -1 end
redis.call('DEL', KEYS[1])
return 0
"""
)

# ARGV[4]: user id, ARGV[5]: '1' when there is one → 1 created, 0 exists already
_CREATE = (
    _DOC
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
new_doc(now(), ARGV[5] == '1' and cjson.encode(ARGV[4]) or 'null')
expire()
return 1
"""
)

# KEYS: doc, lease. ARGV: token, ttl, id, count → {length, latest count items as a JSON array}
_TAIL = (
    _DOC
    + """
local n = math.max(length(), 0)
if n == 0 or tonumber(ARGV[4]) == 0 then return {n, '[]'} end
return {n, redis.call('JSON.GET', KEYS[1], '$.items[-' .. ARGV[4] .. ':]')}
"""
)

_SCRIPT_UNKNOWN_COMMAND = "unknown redis command called from script"


@contextlib.contextmanager
def _errors(action: str) -> Iterator[None]:
    """translate_errors, and MissingModuleError for JSON commands the server lacks."""
    try:
        with translate_errors(action):
            yield
    except MissingModuleError as exc:
        raise MissingModuleError("json", "JSONSession") from exc.__cause__
    except RedisCommandError as exc:
        if _SCRIPT_UNKNOWN_COMMAND in str(exc).lower():
            raise MissingModuleError("json", "JSONSession") from exc.__cause__
        raise


_SCRIPTS = StoreScripts(add=_ADD, pop=_POP, trim=_TRIM, delete=_DELETE, create=_CREATE, tail=_TAIL)


class _Meta(msgspec.Struct):
    session_id: str | None = None
    user_id: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    item_count: int = 0


_meta_decoder = msgspec.json.Decoder(list[_Meta])


class JSONSession(BaseSession):
    """A conversation in one RedisJSON document: the SDK ``Session``, with the same helpers
    and guarantees as :class:`~runtime.sessions.AgentSession`.

    Useful when other tools read the conversation as one JSON document (``JSON.GET``,
    RediSearch JSON indexes)::

        session = JSONSession("conv-42", client, ttl=3600)
        result = await Runner.run(agent, "Hello", session=session)
        latest = await session.get_items(limit=10)         # JSON.GET doc $.items[-10:]
    """

    kind = "JSONSession"

    def _bind(self) -> None:
        self._doc_key = self.keys.session_doc(self.session_id)
        self._write_keys = (self._doc_key, self.lease_key)
        self._scripts = _SCRIPTS.registered(self.client)

    async def length(self) -> int:
        self._check_open()
        return (await self._tail(0))[0]

    async def _read(self, limit: int | None) -> list[TResponseInputItem]:
        path = "$.items[*]" if limit is None else f"$.items[-{limit}:]"
        with _errors("read session items"):
            raw = await execute(self.client, "JSON.GET", self._doc_key, path)
        return decode_array(self.session_id, raw)

    def _guard(self, action: str) -> contextlib.AbstractContextManager[None]:
        return _errors(action)  # also: MissingModuleError when the JSON module is missing

    async def _exists(self) -> bool:
        with _errors("look up a session"):
            found = await execute(self.client, "JSON.TYPE", self._doc_key)
        if isinstance(found, list):  # [type] or [nil], depending on the module's version
            found = found[0] if found else None
        return found is not None

    async def _info(self) -> SessionInfo | None:
        with _errors("read session metadata"):
            raw = await execute(self.client, "JSON.GET", self._doc_key, "$.meta")
        if raw is None:
            return None
        try:
            found = _meta_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise corrupt(self.session_id, raw, "the metadata") from exc
        if not found:
            return None
        meta = found[0]
        return SessionInfo(
            conversation_id=self.session_id,
            user_id=meta.user_id,
            created_at=meta.created_at,
            updated_at=meta.updated_at,
            item_count=meta.item_count,
        )

    async def _tail(self, count: int) -> tuple[int, list[TResponseInputItem]]:
        with _errors("read session items"):
            length, raw = await self._scripts.tail(keys=self._write_keys, args=[*self._head, count])
        return int(length), decode_array(self.session_id, raw)
