"""What the write scripts of both session stores share: the Lua prelude, the reply codes,
and their registration once per client.

Every write script gets KEYS = the conversation's data keys, then the lease key (always last),
and ARGV[1] = the fence token ('' = unfenced), ARGV[2] = the TTL in ms (0 = none; checked
before it gets here: :func:`runtime.sessions.checks.check_ttl`), ARGV[3] = the conversation id.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import redis.asyncio

__all__ = ["CONFLICT", "FENCED", "LUA_PRELUDE", "StoreScripts"]

FENCED = -1
"""What a write script returns when the fence token no longer holds the lease."""
CONFLICT = -2
"""What an append returns when the history length is not the one expected."""

# Shared by every write script (see the module's docstring for KEYS and ARGV).
LUA_PRELUDE = """
local function fenced()
  return ARGV[1] ~= '' and redis.call('GET', KEYS[#KEYS]) ~= ARGV[1]
end
local function now()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', t[2])
end
local function expire()
  local ttl = tonumber(ARGV[2])
  if ttl > 0 then
    for i = 1, #KEYS - 1 do redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
"""


class StoreScripts(NamedTuple):
    """The write scripts of one session store (Lua sources, or the same registered)."""

    add: Any
    pop: Any
    trim: Any
    delete: Any
    create: Any
    tail: Any

    def registered(self, client: redis.asyncio.Redis) -> StoreScripts:
        """These scripts registered on *client*, once per client (sessions are made per run,
        and registering hashes every script)."""
        per_client = _registered.setdefault(client, {})
        found = per_client.get(self)
        if found is None:
            found = per_client[self] = StoreScripts(*(client.register_script(s) for s in self))
        return found


_registered: weakref.WeakKeyDictionary[redis.asyncio.Redis, dict[StoreScripts, StoreScripts]] = (
    weakref.WeakKeyDictionary()
)
