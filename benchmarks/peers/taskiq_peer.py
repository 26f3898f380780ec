"""Driver for taskiq with taskiq-redis's ``RedisStreamBroker``.

The worker is taskiq's CLI, one worker process, its default 100 concurrent tasks and its
default logging (one INFO line per task):

    taskiq worker benchmarks.peers.taskiq_peer:broker --workers 1
"""

from __future__ import annotations

import os
import sys
from typing import Any

from taskiq_redis import RedisStreamBroker

from benchmarks.common import ENV_URL, Peer, concurrency, gather_chunked, main, record_latency

QUEUE = "taskiq:bench"
GROUP = "taskiq"

broker = RedisStreamBroker(
    url=os.environ.get(ENV_URL, "redis://127.0.0.1:6379/0"),
    queue_name=QUEUE,
    consumer_group_name=GROUP,
)


@broker.task(task_name="noop")
async def noop(payload: dict[str, Any]) -> None:
    return None


@broker.task(task_name="latency")
async def latency(payload: dict[str, Any]) -> None:
    await record_latency(payload["t"])


class Taskiq(Peer):
    name = "taskiq-redis RedisStreamBroker"
    library = "taskiq-redis"
    ready_marker = "Listening started."

    def __init__(self, url: str, workers: int) -> None:
        super().__init__(url, workers)
        width = concurrency()
        self.notes = (
            f"taskiq worker CLI, --workers {workers}, --max-async-tasks {width}; "
            f"kiq() per task, {width} at a time"
        )

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "taskiq", "worker", "benchmarks.peers.taskiq_peer:broker",
            "--workers", str(self.workers), "--max-async-tasks", str(concurrency()),
        ]  # fmt: skip

    async def open(self) -> None:
        await broker.startup()

    async def close(self) -> None:
        await broker.shutdown()
        await super().close()

    async def enqueue_one(self, payload: dict[str, Any]) -> None:
        await (latency if self.latency_target else noop).kiq(payload)

    async def enqueue_many(self, payloads: list[dict[str, Any]]) -> None:
        # taskiq has no batch enqueue: kiq() concurrently, as many as a worker runs at once
        await gather_chunked(noop.kiq, payloads)

    async def remaining(self) -> int:
        # acknowledged entries stay in the stream: count undelivered (lag) + pending
        for group in await self.client.xinfo_groups(QUEUE):
            if group["name"] in (GROUP, GROUP.encode()):
                lag = group.get("lag")
                if lag is None:
                    lag = await self.client.xlen(QUEUE) - group["entries-read"]
                return int(lag) + int(group["pending"])
        raise RuntimeError(f"consumer group {GROUP!r} missing on {QUEUE!r}")


if __name__ == "__main__":
    main(Taskiq)
