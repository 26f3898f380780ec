"""The seed's names: AgentMetrics(name, redis_url=…) record/get_stats/range, and
PrometheusExporter(metrics).generate() (parsed with prometheus_client's parser)."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Any

import anyio
import pytest
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from runtime import Keys
from runtime.errors import AgentsWorkerError
from runtime.observability.agent_metrics import AgentMetrics
from runtime.observability.prometheus import PrometheusExporter
from tests.conftest import make_settings
from tests.helpers import ROOT

STAMP = (time.time() // 60 - 1) * 60
STAMP_MS = int(STAMP * 1000)


def make(url: str, keys: Keys, name: str = "triage", **kw: Any) -> AgentMetrics:
    settings = make_settings(url, keys.prefix)
    kw.setdefault("clock", lambda: STAMP)
    return AgentMetrics(name, redis_url=url, keys=keys, settings=settings, **kw)


def record_some(metrics: AgentMetrics) -> None:
    metrics.record(latency_ms=10, input_tokens=100, output_tokens=7, cache_hit=True)
    metrics.record(latency_ms=30, input_tokens=50, output_tokens=3, cache_hit=False)
    metrics.record(latency_ms=2, cache_hit=False)
    metrics.record()  # a request with nothing measured still counts


EXPECTED = {
    "count": 4,
    "latency_avg": 14.0,
    "latency_min": 2.0,
    "latency_max": 30.0,
    "input_tokens_sum": 150.0,
    "output_tokens_sum": 10.0,
    "cache_hit_rate": 1 / 3,
}


async def ts_retention(client: redis.asyncio.Redis, keys: Keys) -> set[int]:
    found = set()
    async for key in client.scan_iter(match=keys.metric_series("*", "*")):
        if not key.endswith(b":rollup"):
            info = await client.execute_command("TS.INFO", key)
            info = info if isinstance(info, dict) else dict(zip(info[::2], info[1::2], strict=True))
            found.add(int(info[b"retentionTime"]))
    return found


async def test_record_get_stats_range_close(
    redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    metrics = make(redis_url, keys, retention_ms=600_000)
    threads = threading.active_count()
    record_some(metrics)
    assert threading.active_count() == threads
    assert metrics.get_stats() == EXPECTED
    assert metrics.range("count", STAMP_MS - 1, STAMP_MS + 1) == [(STAMP_MS, 4.0)]
    assert metrics.range("latency", STAMP_MS, STAMP_MS) == [(STAMP_MS, 14.0)]
    assert metrics.range("input_tokens", 0, STAMP_MS) == [(STAMP_MS, 150.0)]
    assert metrics.range("cache_hit", 0, STAMP_MS) == [(STAMP_MS, 1.0)]
    assert metrics.range("tokens_out", 0, STAMP_MS) == [(STAMP_MS, 10.0)]  # a catalogue name
    assert metrics.range("count", 0, STAMP_MS - 1) == []
    with pytest.raises(ValueError, match=r"unknown metric 'bogus'.*latency, input_tokens"):
        metrics.range("bogus", 0, 1)
    assert await ts_retention(client, keys) == {600_000}
    metrics.close()
    metrics.close()  # idempotent
    with pytest.raises(AgentsWorkerError, match="closed"):
        metrics.get_stats()
    other = make(redis_url, keys, name="billing")  # another agent sees none of it
    try:
        assert other.get_stats()["count"] == 0
    finally:
        other.close()


async def test_close_writes_what_is_buffered(redis_url: str, keys: Keys) -> None:
    with make(redis_url, keys) as metrics:
        record_some(metrics)
    with make(redis_url, keys) as again:
        assert again.get_stats() == EXPECTED


async def test_async_methods_and_a_client_given(
    redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    settings = make_settings(redis_url, keys.prefix)
    metrics = AgentMetrics("triage", client=client, keys=keys, settings=settings)
    try:
        await metrics.arecord(latency_ms=5, input_tokens=1)
        total = await client.hget(keys.metrics_totals(), "runs_completed|agent=triage")
        assert total == b"1"  # written before arecord returned
        assert (await metrics.aget_stats())["latency_avg"] == 5.0
    finally:
        await metrics.aclose()
    assert await client.ping()  # the caller's client is left alone


async def test_plain_redis_stats_without_history(plain_redis_url: str, key_prefix: str) -> None:
    with make(plain_redis_url, Keys(key_prefix)) as metrics:
        record_some(metrics)
        assert metrics.get_stats() == EXPECTED  # min and max from this instance's records
        assert metrics.range("count", 0, STAMP_MS) == []
    client = redis.asyncio.Redis.from_url(plain_redis_url)
    async for key in client.scan_iter(match=f"{key_prefix}:*"):
        await client.unlink(key)
    await client.aclose()


async def test_prometheus_exporter_generates_parsable_text(redis_url: str, keys: Keys) -> None:
    with make(redis_url, keys, name="triage bot") as metrics:
        record_some(metrics)
        text = PrometheusExporter(metrics).generate()
        custom = PrometheusExporter(metrics, prefix="svc").generate()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    agent = ("agent", "triage bot")
    assert samples[("agent_requests_total", (agent,))] == 4
    assert samples[("agent_tokens_total", (agent, ("type", "input")))] == 150
    assert samples[("agent_tokens_total", (agent, ("type", "output")))] == 10
    assert samples[("agent_latency_milliseconds", (agent, ("stat", "avg")))] == 14
    assert samples[("agent_latency_milliseconds", (agent, ("stat", "max")))] == 30
    assert samples[("agent_cache_hit_ratio", (agent,))] == pytest.approx(1 / 3)
    buckets = {
        labels[1][1]: value
        for (name, labels), value in samples.items()
        if name == "agent_request_latency_milliseconds_bucket"
    }
    assert buckets["5.0"] == 1 and buckets["10.0"] == 2 and buckets["25.0"] == 2
    assert buckets["50.0"] == 3 and buckets["+Inf"] == 3
    assert samples[("agent_request_latency_milliseconds_count", (agent,))] == 3
    assert samples[("agent_request_latency_milliseconds_sum", (agent,))] == 42
    assert "svc_requests_total" in custom and "agent_" not in custom
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["agent_requests"] == "counter"
    assert families["agent_request_latency_milliseconds"] == "histogram"


EXIT_CHILD = """
import sys, time
from runtime import Keys
from runtime.observability.agent_metrics import AgentMetrics
from tests.conftest import make_settings
url, prefix = sys.argv[1], sys.argv[2]
metrics = AgentMetrics("triage", redis_url=url, keys=Keys(prefix),
                       settings=make_settings(url, prefix))
for _ in range(10):
    metrics.record(latency_ms=1)
# no close(): the interpreter's exit writes what is buffered, and does not hang
"""


async def test_records_left_buffered_are_written_at_exit(redis_url: str, keys: Keys) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-c", EXIT_CHILD, redis_url, keys.prefix], cwd=ROOT, env=env,
            check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    with make(redis_url, keys) as metrics:
        assert metrics.get_stats()["count"] == 10


async def test_record_refuses_what_is_not_a_non_negative_finite_number(
    redis_url: str, keys: Keys
) -> None:
    bad: list[dict[str, Any]] = [
        {"latency_ms": math.nan}, {"latency_ms": -1}, {"latency_ms": True},
        {"input_tokens": math.inf}, {"input_tokens": -5}, {"input_tokens": "12"},
        {"output_tokens": 10**400}, {"output_tokens": -math.inf}, {"cache_hit": "yes"},
    ]  # fmt: skip
    with make(redis_url, keys) as metrics:
        for kw in bad:
            (name,) = kw
            with pytest.raises(ValueError, match=f"{name} must be"):
                metrics.record(**{"latency_ms": 1, "input_tokens": 2, **kw})
        record_some(metrics)  # the refused calls recorded nothing of theirs
        assert metrics.get_stats() == EXPECTED
        assert metrics.recorder.flush_failures == 0
