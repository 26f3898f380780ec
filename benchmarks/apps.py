"""The apps the benchmarks run in our workers.

``benchmarks.apps:app`` (throughput and latency):

- ``noop``: does nothing;
- ``latency``: first thing, pushes ``time.time() - payload["t"]`` on a Redis list.

``benchmarks.apps:recovery_app`` (recovery after a killed worker):

- ``sleeper``: pushes ``task id, pid, start time`` on the Redis list ``payload["log"]``, then
  sleeps ``payload["sleep"]`` seconds.

They are two apps because a worker serves every target of its app, each from its own stream:
a target nobody sends to would still take part in every read.
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio

from benchmarks.common import record_latency
from runtime import App, TaskContext

app = App("bench")
recovery_app = App("bench-recovery")


@app.task("noop")
async def noop(ctx: TaskContext, payload: Any) -> None:
    return None


@app.task("latency")
async def latency(ctx: TaskContext, payload: Any) -> None:
    await record_latency(payload["t"])


@recovery_app.task("sleeper", timeout=3600)
async def sleeper(ctx: TaskContext, payload: Any) -> None:
    started = f"{ctx.task_id} {os.getpid()} {time.time():.6f}"
    await ctx.redis.rpush(payload["log"], started)
    await anyio.sleep(payload["sleep"])
