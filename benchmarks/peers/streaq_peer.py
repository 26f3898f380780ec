"""Driver for streaq (Redis streams, coredis client).

The worker is streaq's CLI, one process, ``concurrency=100`` (its prefetch follows it) and
its default logging (two INFO lines per task) and result TTL:

    streaq run benchmarks.peers.streaq_peer:worker
"""

from __future__ import annotations

import os
import sys
from typing import Any

from streaq import Worker

from benchmarks.common import ENV_URL, Peer, concurrency, main, record_latency

worker: Worker[Any] = Worker(
    redis_url=os.environ.get(ENV_URL, "redis://127.0.0.1:6379/0"),
    concurrency=concurrency(),
    queue_name="bench",
)


@worker.task
async def noop(payload: dict[str, Any]) -> None:
    return None


@worker.task
async def latency(payload: dict[str, Any]) -> None:
    await record_latency(payload["t"])


class Streaq(Peer):
    name = "streaq"
    library = "streaq"
    ready_marker = "starting worker"

    def __init__(self, url: str, workers: int) -> None:
        super().__init__(url, workers)
        self.notes = (
            f"streaq CLI, -w {workers}, concurrency={concurrency()}; "
            "enqueue_many() in batches of 1000"
        )
        self._context: Any = None

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "streaq", "run", "benchmarks.peers.streaq_peer:worker",
            "--workers", str(self.workers),
        ]  # fmt: skip

    async def open(self) -> None:
        await worker.__aenter__()
        self._context = worker

    async def close(self) -> None:
        if self._context is not None:
            await worker.__aexit__(None, None, None)
        await super().close()

    async def enqueue_one(self, payload: dict[str, Any]) -> None:
        await (latency if self.latency_target else noop).enqueue(payload)

    async def enqueue_many(self, payloads: list[dict[str, Any]]) -> None:
        await worker.enqueue_many([noop.enqueue(p) for p in payloads])

    async def remaining(self) -> int:
        return await worker.queue_size()


if __name__ == "__main__":
    main(Streaq)
