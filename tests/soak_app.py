"""The app of the chaos soak (``tests.soak_app:app``): plain chores and agent runs in one app.

A chore records, in Redis, that this process is running it (``<prefix>:scratch:inflight:<pid>``,
a set of task ids) for exactly as long as its handler runs, and, when it starts, looks whether
another live process (or this one) is running the same task at that moment: such a start is
an overlap, written to ``<prefix>:scratch:overlaps``. A chore that completes adds its id to
``<prefix>:scratch:done``. Redis may be restarting under it: the marks are retried until they
are written, so a handler's in-flight mark is never left behind by a live process.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import redis.exceptions
from agents import Agent

from runtime.agents import AgentApp
from runtime.app import TaskContext
from tests.agent_apps import EchoModel

soaker = Agent(name="soaker", instructions="Answer.")
app = AgentApp("soak", agents=[soaker], model=EchoModel(delay=0.2))

_PID = str(os.getpid())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process: alive
        return True
    return True


async def _persist(step: Callable[[], Awaitable[Any]]) -> Any:
    """Run *step* until Redis takes it (it may be restarting), for up to a minute."""
    with anyio.CancelScope(shield=True), anyio.fail_after(60):
        while True:
            try:
                return await step()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                await anyio.sleep(0.1)
            except redis.exceptions.ResponseError as exc:  # LOADING after the restart
                if "LOADING" not in str(exc):
                    raise
                await anyio.sleep(0.1)


async def _running_elsewhere(ctx: TaskContext) -> list[str]:
    """Live processes (this one included) whose in-flight set holds this task now."""
    holders = []
    async for raw in ctx.redis.scan_iter(match=ctx.keys.scratch("inflight-*"), count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        pid = key.rsplit("-", 1)[1]
        if pid == _PID:
            continue
        if _alive(int(pid)) and await ctx.redis.sismember(key, ctx.task_id):
            holders.append(pid)
    return holders


@app.task("chore")
async def chore(ctx: TaskContext, n: int) -> None:
    mine = ctx.keys.scratch(f"inflight-{_PID}")
    added = await _persist(lambda: ctx.redis.sadd(mine, ctx.task_id))
    try:
        others = await _persist(lambda: _running_elsewhere(ctx))
        if not added:
            others.append(f"{_PID} (this process, twice)")
        if others:
            note = f"{ctx.task_id} started by {_PID} while running in {', '.join(others)}"
            await _persist(lambda: ctx.redis.rpush(ctx.keys.scratch("overlaps"), note))
        await anyio.sleep(random.uniform(0.02, 0.15))
        await ctx.redis.sadd(ctx.keys.scratch("done"), ctx.task_id)
    finally:
        if added:
            await _persist(lambda: ctx.redis.srem(mine, ctx.task_id))
