"""Apps the supervisor and process tests run in worker processes (``tests.supervisor_apps:…``).

``probe`` records every start and end under the worker's key prefix and detects a run of an
entry while another *live* process still runs it: each run marks
``<prefix>:scratch:running-<task id>`` with its pid; a run that finds the mark of a process
still alive records the task id in ``<prefix>:scratch:overlaps``. A mark left by a killed
process is not an overlap."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import anyio

from runtime.app import App, TaskContext

app = App("supervision")

# Compare-and-delete: only the run that set the mark removes it.
_UNMARK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end"


def _alive(pid: int) -> bool:
    """Is *pid* a live process (not a zombie waiting to be reaped)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@app.task("probe")
async def probe(ctx: TaskContext, seconds: float) -> None:
    """Runs *seconds*; records ``started`` and ``effects``, and ``overlaps`` (see above)."""
    key = ctx.keys.scratch(f"running-{ctx.task_id}")
    mark = f"{os.getpid()}:{uuid.uuid4().hex}"
    previous = await ctx.redis.set(key, mark, get=True, ex=600)
    if previous is not None and _alive(int(previous.split(b":")[0])):
        await ctx.redis.rpush(ctx.keys.scratch("overlaps"), ctx.task_id)
    await ctx.redis.rpush(ctx.keys.scratch("started"), ctx.task_id)
    try:
        await anyio.sleep(seconds)
        await ctx.redis.rpush(ctx.keys.scratch("effects"), ctx.task_id)
    finally:
        with anyio.CancelScope(shield=True):
            await ctx.redis.eval(_UNMARK, 1, key, mark)


@app.task("suicide")
async def suicide(ctx: TaskContext, status: int) -> None:
    """A poison entry: kills its worker process on the spot, every time it runs."""
    await ctx.redis.rpush(ctx.keys.scratch("started"), ctx.task_id)
    os._exit(status)


@app.task("hog")
async def hog(ctx: TaskContext, seconds: float) -> None:
    """Blocks the worker's event loop for *seconds* (a sync call in an async handler)."""
    await ctx.redis.rpush(ctx.keys.scratch("started"), ctx.task_id)
    time.sleep(seconds)  # noqa: ASYNC251 -- the point: nothing else runs on this loop


def _in_worker() -> bool:
    return "runtime/worker" in sys.argv[0].replace(os.sep, "/")


def slow_start_app() -> App:
    """Worker processes take ``$SLOW_START`` seconds (default 5) to start; the supervisor
    itself loads the app at once."""
    if _in_worker():
        time.sleep(float(os.environ.get("SLOW_START", "5")))
    return app


def crash_after_ready_app() -> App:
    """Worker processes exit with status 4 shortly after they report READY."""
    if _in_worker():
        import threading

        threading.Timer(1.0, os._exit, args=(4,)).start()
    return app
