"""Driver for arq (run from its own virtualenv: arq pins redis-py < 6).

The worker is arq's CLI, one process, ``max_jobs`` raised to 1000 and everything else at
arq's defaults (it polls its queue every 0.5 s and logs two INFO lines per job):

    arq benchmarks.peers.arq_peer.WorkerSettings
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.constants import default_queue_name

from benchmarks.common import ENV_URL, Peer, gather_chunked, main, record_latency

MAX_JOBS = 1000


async def noop(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    return None


async def latency(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    await record_latency(payload["t"])


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop, latency]
    redis_settings = RedisSettings.from_dsn(os.environ.get(ENV_URL, "redis://127.0.0.1:6379/0"))
    max_jobs = MAX_JOBS


class Arq(Peer):
    name = "arq"
    library = "arq"
    ready_marker = "Starting worker for"
    notes = f"arq CLI, 1 process, max_jobs={MAX_JOBS}; enqueue_job() per task, 100 at a time"

    def __init__(self, url: str, workers: int) -> None:
        super().__init__(url, workers)
        self.pool: ArqRedis | None = None

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "arq", "benchmarks.peers.arq_peer.WorkerSettings"]

    async def open(self) -> None:
        self.pool = await create_pool(RedisSettings.from_dsn(self.url))

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()
        await super().close()

    async def enqueue_one(self, payload: dict[str, Any]) -> None:
        assert self.pool is not None
        await self.pool.enqueue_job("latency" if self.latency_target else "noop", payload)

    async def enqueue_many(self, payloads: list[dict[str, Any]]) -> None:
        pool = self.pool
        assert pool is not None
        await gather_chunked(lambda p: pool.enqueue_job("noop", p), payloads)

    async def remaining(self) -> int:
        # a job leaves the queue's sorted set when it finished
        return int(await self.client.zcard(default_queue_name))


if __name__ == "__main__":
    main(Arq)
