"""Driver for our runtime: the supervisor CLI runs ``benchmarks.apps:app``."""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.common import Peer, concurrency, main
from runtime import Keys, Producer, load_settings

PREFIX = "bench"


class Ours(Peer):
    name = "agents-worker"
    library = "agents-worker"
    ready_marker = "worker.ready slot="

    def __init__(self, url: str, workers: int) -> None:
        super().__init__(url, workers)
        self.name = f"agents-worker, {workers} worker process{'es' if workers > 1 else ''}"
        settings = load_settings(
            env={},
            overrides={
                "redis.url": url,
                "redis.key_prefix": PREFIX,
                "worker.concurrency": str(concurrency()),
            },
        )
        self.keys = Keys(PREFIX)
        self.producer = Producer(self.client, keys=self.keys, settings=settings)
        self.notes = f"supervisor CLI, -w {workers}, worker.concurrency={concurrency()}"

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "runtime.cli",
            "--redis-url", self.url, "--key-prefix", PREFIX,
            "--set", f"worker.concurrency={concurrency()}",
            "run", "benchmarks.apps:app", "-w", str(self.workers), "--http-port", "0",
        ]  # fmt: skip

    async def enqueue_one(self, payload: dict[str, Any]) -> None:
        await self.producer.enqueue("latency" if self.latency_target else "noop", payload)

    async def enqueue_many(self, payloads: list[dict[str, Any]]) -> None:
        await self.producer.enqueue_many("noop", payloads)

    async def remaining(self) -> int:
        # entries are deleted when acknowledged
        return int(await self.client.xlen(self.keys.inbox("noop")))


if __name__ == "__main__":
    main(Ours)
