"""The app of the chaos soak (``tests.soak_app:app``): plain chores and agent runs in one app.

A chore records, in Redis, that this process is running it (``<prefix>:scratch:inflight-<pid>``,
a hash of execution token → task id) for exactly as long as its handler runs, and, when it
starts, looks whether another live process (or another execution in this one) is running the
same task at that moment: such a start is an overlap, written to ``<prefix>:scratch:overlaps``.
A chore that completes adds its id to ``<prefix>:scratch:done``. Redis may be restarting under
it: the marks are retried until they are written, so a handler's in-flight mark is never left
behind by a live process.
"""

from __future__ import annotations

import os
import random
import uuid
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


async def _running_elsewhere(ctx: TaskContext, token: str) -> list[str]:
    """Live processes (this one included) running this task now, in another execution."""
    holders = []
    async for raw in ctx.redis.scan_iter(match=ctx.keys.scratch("inflight-*"), count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        pid = key.rsplit("-", 1)[1]
        if not _alive(int(pid)):
            continue
        running = await ctx.redis.hgetall(key)
        others = [t for t, task in running.items() if task == ctx.task_id.encode()]
        if [t for t in others if t != token.encode()]:
            holders.append(pid if pid != _PID else f"{pid} (this process, twice)")
    return holders


@app.task("chore")
async def chore(ctx: TaskContext, n: int) -> None:
    # one mark per execution (a hash field named by a token of its own), so a mark sent
    # again after a connection lost with Redis (it restarts under us) is still this one
    mine = ctx.keys.scratch(f"inflight-{_PID}")
    token = uuid.uuid4().hex
    await _persist(lambda: ctx.redis.hset(mine, token, ctx.task_id))
    try:
        others = await _persist(lambda: _running_elsewhere(ctx, token))
        if others:
            note = f"{ctx.task_id} started by {_PID} while running in {', '.join(others)}"
            await _persist(lambda: ctx.redis.rpush(ctx.keys.scratch("overlaps"), note))
        await anyio.sleep(random.uniform(0.02, 0.15))
        await ctx.redis.sadd(ctx.keys.scratch("done"), ctx.task_id)
    finally:
        await _persist(lambda: ctx.redis.hdel(mine, token))
