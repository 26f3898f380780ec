"""Helpers for the worker tests: run a Worker in-process, wait for outcomes in Redis."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio

from runtime import App, Keys, Settings
from runtime.worker import Worker
from tests.apps import app

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def running_worker(
    settings: Settings,
    client: redis.asyncio.Redis,
    consumer: str = "test:0",
    *,
    serving: App | None = None,
) -> AsyncIterator[Worker]:
    """A Worker serving *serving* (tests.apps:app) until the block ends, then a graceful stop."""
    worker = Worker(serving or app, settings, client, consumer=consumer)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            worker.stop()


async def wait_until(
    check: Callable[[], Awaitable[bool]], limit: float = 10.0, what: str = "condition"
) -> float:
    """Poll *check* every 20 ms; return the seconds it took, fail after *limit* seconds."""
    began = time.monotonic()
    while not await check():
        if time.monotonic() - began > limit:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await anyio.sleep(0.02)
    return time.monotonic() - began


async def scratch_list(client: redis.asyncio.Redis, keys: Keys, name: str) -> list[str]:
    return [v.decode() for v in await client.lrange(keys.scratch(name), 0, -1)]


def worker_process(
    app_ref: str, redis_url: str, keys: Keys, **settings: str
) -> subprocess.Popen[bytes]:
    """``python -m runtime.worker --app APP_REF`` on *redis_url* / *keys*, with the settings
    given as ``SECTION_NAME=value`` (e.g. ``WORKER_LEASE_SECONDS="1"``); output discarded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_WORKER_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "AGENTS_WORKER_REDIS_URL": redis_url,
        "AGENTS_WORKER_REDIS_KEY_PREFIX": keys.prefix,
    }
    env |= {f"AGENTS_WORKER_{name}": value for name, value in settings.items()}
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.worker", "--app", app_ref],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def kill_next_connection(client: redis.asyncio.Redis) -> None:
    """Close, on the server's side, the pooled connection *client*'s next command will take."""
    pool: Any = client.connection_pool
    # redis-py < 5.3 wants a command name (unused by a plain pool); later ones warn at one
    name = inspect.signature(pool.get_connection).parameters.get("command_name")
    wants_name = name is not None and name.default is inspect.Parameter.empty
    conn = await (pool.get_connection("_") if wants_name else pool.get_connection())
    await conn.send_command("CLIENT", "ID")
    await client.client_kill_filter(_id=await conn.read_response())
    await client.connection_pool.release(conn)  # back on top of the pool, dead
