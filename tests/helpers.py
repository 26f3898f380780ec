"""Helpers for the worker tests: run a Worker in-process, wait for outcomes in Redis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import redis.asyncio

from runtime import App, Keys, Settings
from runtime.worker import Worker
from tests.apps import app


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
