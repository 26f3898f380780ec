"""Apps the worker tests run, in-process or in worker processes (``tests.apps:app``).

Handlers record what they do in Redis under the worker's key prefix, so a test can check
outcomes across processes: ``<prefix>:scratch:started`` (every start) and
``<prefix>:scratch:effects`` (every completed run), as task ids.
"""

from __future__ import annotations

import os
import sys
import time

import anyio
import msgspec

from runtime.app import App, TaskContext
from runtime.errors import PermanentError

app = App("tests")


async def _record(ctx: TaskContext, what: str) -> None:
    await ctx.redis.rpush(ctx.keys.scratch(what), ctx.task_id)


@app.task("echo")
async def echo(ctx: TaskContext, payload: object) -> None:
    await _record(ctx, "effects")


@app.task("slow")
async def slow(ctx: TaskContext, seconds: float) -> None:
    """Sleeps *seconds*; records its start and its end."""
    await _record(ctx, "started")
    await anyio.sleep(seconds)
    await _record(ctx, "effects")


@app.task("blocking")
def blocking(ctx: TaskContext, seconds: float) -> None:
    """A plain function that blocks its thread (not the event loop)."""
    time.sleep(seconds)


@app.task("flaky")
async def flaky(ctx: TaskContext, payload: object) -> None:
    """Fails until the key ``<prefix>:scratch:fixed`` exists."""
    await _record(ctx, "started")
    if not await ctx.redis.exists(ctx.keys.scratch("fixed")):
        raise RuntimeError("still broken")
    await _record(ctx, "effects")


@app.task("fatal")
async def fatal(ctx: TaskContext, payload: object) -> None:
    await _record(ctx, "started")
    raise PermanentError("cannot ever work")


@app.task("crash")
async def crash(ctx: TaskContext, payload: object) -> None:
    """Kills its own worker process (a poison entry)."""
    await _record(ctx, "started")
    os._exit(9)


@app.task("self_acking")
async def self_acking(ctx: TaskContext, fail: bool) -> None:
    """Writes its effect and its ack in one pipeline; with *fail*, raises before sending it."""
    await _record(ctx, "started")
    async with ctx.redis.pipeline(transaction=False) as pipe:
        pipe.rpush(ctx.keys.scratch("effects"), ctx.task_id)
        assert ctx.ack_in(pipe)
        if fail and not await ctx.redis.exists(ctx.keys.scratch("fixed")):
            await ctx.redis.set(ctx.keys.scratch("fixed"), 1)  # the next attempt succeeds
            raise RuntimeError("failed before its last write")
        await pipe.execute()


@app.task("acks_then_lingers")
async def acks_then_lingers(ctx: TaskContext, linger: float) -> None:
    """Writes its ack with its last write, then takes *linger* seconds more to return."""
    async with ctx.redis.pipeline(transaction=False) as pipe:
        assert ctx.ack_in(pipe)
        await pipe.execute()
    await anyio.sleep(linger)
    await _record(ctx, "returned")


class Order(msgspec.Struct):
    order_id: int
    amount: float


@app.task("typed")
async def typed(ctx: TaskContext, order: Order) -> None:
    await ctx.redis.rpush(ctx.keys.scratch("effects"), f"{order.order_id}:{order.amount}")


def crashing_app() -> App:
    """An app whose worker processes die at start-up (the supervisor still loads it)."""
    if "runtime/worker" in sys.argv[0].replace(os.sep, "/"):
        os._exit(3)
    return app
