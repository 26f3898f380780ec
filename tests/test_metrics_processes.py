"""4 worker processes × 1,000 metric records at the same timestamp: all 4,000 are counted
(in TS.MRANGE … GROUPBY metric REDUCE sum, in the fleet totals and in AgentMetrics)."""

from __future__ import annotations

import os
import sys
import time

import anyio
import redis.asyncio

from runtime import Keys
from runtime.observability.agent_metrics import AgentMetrics
from runtime.observability.timeseries import MetricsStore
from tests.conftest import make_settings
from tests.helpers import ROOT, wait_until

STAMP = (time.time() // 60 - 1) * 60  # every record of every process: this millisecond
STAMP_MS = int(STAMP * 1000)
PROCESSES, RECORDS = 4, 1000

# Each child waits at a barrier in Redis so that the four write at once.
_PRELUDE = """
import sys, time, redis
from runtime import Keys
from tests.conftest import make_settings
url, prefix, index, stamp = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
keys, settings = Keys(prefix), make_settings(url, prefix)
sync = redis.Redis.from_url(url)
sync.incr(keys.scratch("ready"))
while not sync.exists(keys.scratch("go")):
    time.sleep(0.005)
"""

RECORDER_CHILD = (
    _PRELUDE
    + """
import anyio, redis.asyncio
from runtime.observability.metrics import MetricsRecorder
async def main():
    rec = MetricsRecorder(keys, settings, process=f"host:inst:{index}", clock=lambda: stamp)
    client = redis.asyncio.Redis.from_url(url)
    for i in range(1000):
        rec.count("runs_completed", agent="triage")
        rec.observe("run_latency", i % 100, agent="triage")
        if i % 100 == 99:  # ten flushes, each onto the same millisecond
            await rec.flush(client)
    assert rec.flush_failures == 0 and rec.dropped == 0
    await client.aclose()
anyio.run(main)
"""
)

FACADE_CHILD = (
    _PRELUDE
    + """
from runtime.observability.agent_metrics import AgentMetrics
metrics = AgentMetrics("triage", redis_url=url, keys=keys, settings=settings, clock=lambda: stamp)
for i in range(1000):
    metrics.record(latency_ms=i % 100, input_tokens=3, output_tokens=1, cache_hit=i % 4 == 0)
    if i % 250 == 249:
        metrics.flush()
metrics.close()
"""
)


async def run_children(code: str, url: str, keys: Keys, client: redis.asyncio.Redis) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results = []

    async def child(index: int) -> None:
        args = [sys.executable, "-c", code, url, keys.prefix, str(index), str(STAMP)]
        results.append(await anyio.run_process(args, cwd=ROOT, env=env, check=False))

    async def all_ready() -> bool:
        return int(await client.get(keys.scratch("ready")) or 0) == PROCESSES

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for index in range(PROCESSES):
                tg.start_soon(child, index)
            await wait_until(all_ready, limit=60, what="the children at the barrier")
            await client.set(keys.scratch("go"), 1)
    for result in results:
        assert result.returncode == 0, result.stderr.decode()


async def mrange_sum(client: redis.asyncio.Redis, keys: Keys, metric: str) -> list[list[float]]:
    """The fleet's sum by the command itself: TS.MRANGE … GROUPBY metric REDUCE sum."""
    reply = await client.execute_command(
        "TS.MRANGE", "-", "+", "AGGREGATION", "sum", 1000,
        "FILTER", f"prefix={keys.prefix}", f"metric={metric}", "stat=sum", "res=raw",
        "GROUPBY", "metric", "REDUCE", "sum",
    )  # fmt: skip
    groups = reply.values() if isinstance(reply, dict) else reply
    return [[int(t), float(v)] for group in groups for t, v in group[-1]]


async def test_four_processes_same_millisecond_every_record_counted(
    redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    await run_children(RECORDER_CHILD, redis_url, keys, client)
    total = PROCESSES * RECORDS
    assert await mrange_sum(client, keys, "runs_completed") == [[STAMP_MS, total]]
    store = MetricsStore(client, keys)
    totals = {(t.metric, tuple(t.labels.items())): t.value for t in await store.totals()}
    assert totals[("runs_completed", (("agent", "triage"),))] == total
    assert totals[("run_latency_count", (("agent", "triage"),))] == total
    assert totals[("run_latency_sum", (("agent", "triage"),))] == PROCESSES * 49_500
    assert await store.range("runs_completed", 0, STAMP_MS, bucket_ms=1) == [(STAMP_MS, total)]
    assert await store.latency_range("run_latency", 0, STAMP_MS, bucket_ms=1000) == [
        (STAMP_MS, 49.5)
    ]
    processes = await client.execute_command(
        "TS.QUERYINDEX", f"prefix={keys.prefix}", "metric=runs_completed", "res=raw"
    )
    assert len(processes) == PROCESSES  # one series per process
    settings = make_settings(redis_url, keys.prefix)
    with AgentMetrics("triage", redis_url=redis_url, keys=keys, settings=settings) as metrics:
        stats = metrics.get_stats()
    assert stats["count"] == total
    assert (stats["latency_avg"], stats["latency_min"], stats["latency_max"]) == (49.5, 0, 99)


async def test_four_processes_agent_metrics_record_every_record_counted(
    redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    await run_children(FACADE_CHILD, redis_url, keys, client)
    total = PROCESSES * RECORDS
    assert await mrange_sum(client, keys, "runs_completed") == [[STAMP_MS, total]]
    assert await mrange_sum(client, keys, "tokens_in") == [[STAMP_MS, 3 * total]]
    settings = make_settings(redis_url, keys.prefix)
    with AgentMetrics("triage", redis_url=redis_url, keys=keys, settings=settings) as metrics:
        stats = metrics.get_stats()
    assert stats == {
        "count": total,
        "latency_avg": 49.5,
        "latency_min": 0.0,
        "latency_max": 99.0,
        "input_tokens_sum": 3 * total,
        "output_tokens_sum": total,
        "cache_hit_rate": 0.25,
    }
