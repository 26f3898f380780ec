"""Prove each Redis module works with one real round trip (used by `agents-worker demo`)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio

from runtime.errors import RedisCommandError
from runtime.keys import Keys
from runtime.redis.connection import MODULES, ServerInfo, execute, translate_errors

__all__ = ["ModuleCheck", "exercise_modules"]


@dataclass(frozen=True)
class ModuleCheck:
    """The outcome of exercising one module."""

    module: str
    loaded: bool
    version: int
    ok: bool
    detail: str
    ms: float


class _CheckFailed(Exception):
    """A module answered, but not with the expected result."""


Probe = Callable[[redis.asyncio.Redis, str], Awaitable[str]]


async def _search(client: redis.asyncio.Redis, base: str) -> str:
    index, doc = f"{base}:idx", f"{base}:doc:1"
    await execute(
        client,
        "FT.CREATE",
        index,
        "ON",
        "HASH",
        "PREFIX",
        "1",
        f"{base}:doc:",
        "SCHEMA",
        "title",
        "TEXT",
    )
    try:
        await client.hset(doc, mapping={"title": "durable agents on redis streams"})
        reply = await execute(client, "FT.SEARCH", index, "durable", "NOCONTENT")
        # redis-py parses the reply into a dict in recent versions, a list in older ones.
        total = reply[b"total_results"] if isinstance(reply, dict) else reply[0]
        if total != 1:
            raise _CheckFailed(f"FT.SEARCH found {total} documents, expected 1")
        return "FT.CREATE + FT.SEARCH found the indexed document"
    finally:
        await execute(client, "FT.DROPINDEX", index, "DD")


async def _json(client: redis.asyncio.Redis, base: str) -> str:
    key = f"{base}:json"
    try:
        await execute(client, "JSON.SET", key, "$", json.dumps({"turns": [1, 2, 3]}))
        await execute(client, "JSON.ARRAPPEND", key, "$.turns", "4")
        turns = json.loads(await execute(client, "JSON.GET", key, "$.turns"))
        if turns != [[1, 2, 3, 4]]:
            raise _CheckFailed(f"JSON.GET returned {turns}")
        return "JSON.SET + JSON.ARRAPPEND + JSON.GET round-tripped a document"
    finally:
        await client.delete(key)


async def _timeseries(client: redis.asyncio.Redis, base: str) -> str:
    key = f"{base}:ts"
    try:
        for stamp, value in ((1000, 1.5), (2000, 2.5)):
            await execute(client, "TS.ADD", key, stamp, value)
        reply = await execute(client, "TS.RANGE", key, "-", "+", "AGGREGATION", "sum", 10_000)
        total = float(reply[0][1])
        if total != 4.0:
            raise _CheckFailed(f"TS.RANGE summed to {total}, expected 4.0")
        return "TS.ADD + TS.RANGE aggregated two samples"
    finally:
        await client.delete(key)


async def _bloom(client: redis.asyncio.Redis, base: str) -> str:
    key = f"{base}:bf"
    try:
        await execute(client, "BF.RESERVE", key, "0.001", "1000")
        await execute(client, "BF.ADD", key, "run-1")
        seen = await execute(client, "BF.MEXISTS", key, "run-1", "run-2")
        if list(seen) != [1, 0]:
            raise _CheckFailed(f"BF.MEXISTS returned {seen}")
        return "BF.ADD + BF.MEXISTS told a seen item from a new one"
    finally:
        await client.delete(key)


_PROBES: dict[str, Probe] = {
    "search": _search,
    "json": _json,
    "timeseries": _timeseries,
    "bloom": _bloom,
}


async def exercise_modules(
    client: redis.asyncio.Redis, keys: Keys, info: ServerInfo
) -> list[ModuleCheck]:
    """Run one real command sequence per module; keys used are deleted afterwards."""
    base = keys.scratch(uuid.uuid4().hex)
    checks = []
    for module in MODULES:
        if not info.has(module):
            checks.append(ModuleCheck(module, False, 0, False, "not loaded by this server", 0.0))
            continue
        began = time.perf_counter()
        try:
            with translate_errors(f"exercise the {module} module"):
                detail = await _PROBES[module](client, base)
            ok = True
        except (_CheckFailed, RedisCommandError) as exc:
            detail, ok = str(exc), False
        ms = (time.perf_counter() - began) * 1000
        checks.append(ModuleCheck(module, True, info.modules[module], ok, detail, ms))
    return checks
