"""Driver for the floor: a bare redis-py asyncio loop, no envelope, no framework.

The worker (``python -m benchmarks.peers.bare worker``) reads with XREADGROUP COUNT 100, runs
nothing (or records latency) and acknowledges each batch with one pipelined XACK + XDEL.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import redis.asyncio
import redis.exceptions

from benchmarks.common import ENV_URL, Peer, concurrency, main, record_latency

NOOP = "bare:noop"
LATENCY = "bare:latency"
GROUP = "workers"
READY = "bare.ready"


class Bare(Peer):
    name = "bare redis-py loop"
    library = "redis"
    ready_marker = READY

    def __init__(self, url: str, workers: int) -> None:
        super().__init__(url, workers)
        self.notes = f"XREADGROUP COUNT {concurrency()} + pipelined XACK/XDEL, JSON payload"

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "benchmarks.peers.bare", "worker"]

    async def enqueue_one(self, payload: dict[str, Any]) -> None:
        stream = LATENCY if self.latency_target else NOOP
        await self.client.xadd(stream, {"p": json.dumps(payload)})

    async def enqueue_many(self, payloads: list[dict[str, Any]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.xadd(NOOP, {"p": json.dumps(payload)})
            await pipe.execute()

    async def remaining(self) -> int:
        return int(await self.client.xlen(NOOP))


async def serve() -> None:
    client = redis.asyncio.Redis.from_url(os.environ[ENV_URL])
    for stream in (NOOP, LATENCY):
        try:
            await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    print(READY, flush=True)
    streams: dict[Any, Any] = {NOOP: ">", LATENCY: ">"}
    count = concurrency()
    while True:
        reply = await client.xreadgroup(GROUP, "bare", streams, count=count, block=2000)
        for stream, entries in _items(reply):
            timed = stream == LATENCY.encode()
            for _entry_id, fields in entries:
                payload = json.loads(fields[b"p"])
                if timed:
                    await record_latency(payload["t"])
            ids = [entry_id for entry_id, _ in entries]
            async with client.pipeline(transaction=False) as pipe:
                pipe.xack(stream, GROUP, *ids)
                pipe.xdel(stream, *ids)
                await pipe.execute()


def _items(reply: Any) -> Any:
    """(stream, entries) pairs of an XREADGROUP reply, RESP2 (list) or RESP3 (dict)."""
    if not reply:
        return ()
    return reply.items() if isinstance(reply, dict) else reply


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        asyncio.run(serve())
    else:
        main(Bare)
