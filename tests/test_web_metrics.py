"""``/metrics`` (issue 11, item 4): the fleet's figures from Redis, built with prometheus-client.

Two processes record metrics with their own MetricsRecorder; the scrape, parsed with
prometheus-client's own parsers (Prometheus text and OpenMetrics), gives totals equal to
TimeSeries' (MetricsStore.range summed over the window) and to what the processes recorded.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from runtime import Keys
from runtime.observability.metrics import (
    LATENCY_BUCKETS_MS,
    MetricsRecorder,
    encode_field,
    le_text,
)
from runtime.observability.timeseries import MetricsStore
from runtime.web import Probe, SupervisorFigures, WebState, create_app
from tests.conftest import ROOT, free_port, make_settings
from tests.test_web import fetch, served

LATENCIES_MS = [3.0, 7.5, 40.0, 40.0, 120.0, 999.0, 1000.0, 4200.0, 75_000.0]
RECORDER = textwrap.dedent(
    """
    import asyncio, sys
    from runtime import Keys
    from runtime.observability.metrics import MetricsRecorder
    from tests.conftest import make_settings

    url, prefix, name = sys.argv[1:4]
    recorder = MetricsRecorder(Keys(prefix), make_settings(url, prefix), process=name)
    for _ in range(50):
        recorder.count("runs_completed", 1, agent="triage")
    for _ in range(7):
        recorder.count("runs_failed", 1, agent="billing")
    recorder.count("tokens_in", 1234, agent="triage", model="gpt-4o")
    for value in {latencies}:
        recorder.observe("run_latency", value, agent="triage")
    asyncio.run(recorder.flush(__import__("redis.asyncio").asyncio.Redis.from_url(url)))
    """
).format(latencies=LATENCIES_MS)


def _record_in(processes: int, url: str, keys: Keys) -> None:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RECORDER, url, keys.prefix, f"testhost:p{n}:0"], cwd=ROOT
        )
        for n in range(processes)
    ]
    for child in children:
        assert child.wait(timeout=60) == 0


@pytest.fixture
async def state(redis_url: str, keys: Keys) -> AsyncIterator[WebState]:
    conn = redis.asyncio.Redis.from_url(redis_url)
    figures = SupervisorFigures(ready=2, running=2, paused=0, restarts=1, backlog=0)
    probe = Probe(lambda: True, lambda: None, lambda: figures)
    try:
        yield WebState(conn, keys, make_settings(redis_url, keys.prefix), probe)
    finally:
        async for key in conn.scan_iter(match=f"{keys.prefix}:*", count=1000):
            await conn.unlink(key)
        await conn.aclose()


def _samples(text: str, *, openmetrics: bool = False) -> dict[tuple[str, frozenset[object]], float]:
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    found: dict[tuple[str, frozenset[object]], float] = {}
    for family in parse(text):
        for sample in family.samples:
            assert isinstance(sample, Sample)
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def _one(samples: dict[tuple[str, frozenset[object]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def _history_sum(store: MetricsStore, metric: str, start: int, **options: object) -> float:
    end = int(time.time() * 1000) + 60_000
    points = await store.range(metric, start, end, bucket_ms=end - start, **options)  # type: ignore[arg-type]
    return sum(value for _, value in points)


@pytest.mark.timeout(120)
async def test_metrics_totals_equal_timeseries_after_records_from_two_processes(
    state: WebState, redis_url: str, keys: Keys
) -> None:
    start = int(time.time() * 1000) - 60_000
    _record_in(2, redis_url, keys)
    gauges = MetricsRecorder(keys, state.settings, process="testhost:sup")
    gauges.gauge("inbox_lag", 5, target="triage")
    gauges.gauge("inbox_oldest_pending_age", 2.5, target="triage")
    await gauges.flush(state.client)

    async with served(create_app(state, dashboard=False)) as port:
        reply = await fetch(port, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = _samples(reply.body)

    store = MetricsStore(state.client, keys)
    assert await store.history_available()
    labels = {"agent": "triage"}
    completed = await _history_sum(store, "runs_completed", start, labels=labels)
    assert _one(got, "agents_worker_runs_completed_total", agent="triage") == completed == 100
    failed = await _history_sum(store, "runs_failed", start, labels={"agent": "billing"})
    assert _one(got, "agents_worker_runs_failed_total", agent="billing") == failed == 14
    tokens = _one(got, "agents_worker_tokens_in_total", agent="triage", model="gpt-4o")
    assert tokens == await _history_sum(store, "tokens_in", start) == 2 * 1234

    count = await _history_sum(store, "run_latency", start, labels=labels, stat="count")
    total_ms = await _history_sum(store, "run_latency", start, labels=labels, stat="sum")
    name = "agents_worker_run_latency_seconds"
    assert _one(got, f"{name}_count", agent="triage") == count == 2 * len(LATENCIES_MS)
    assert _one(got, f"{name}_sum", agent="triage") == pytest.approx(total_ms / 1000)
    assert total_ms == pytest.approx(2 * sum(LATENCIES_MS))
    for le, bound_ms in (("0.005", 5), ("0.05", 50), ("1.0", 1000), ("60.0", 60_000)):
        expected = 2 * sum(1 for v in LATENCIES_MS if v <= bound_ms)
        assert _one(got, f"{name}_bucket", agent="triage", le=le) == expected, le
    assert _one(got, f"{name}_bucket", agent="triage", le="+Inf") == count

    assert _one(got, "agents_worker_inbox_lag", target="triage") == 5
    assert _one(got, "agents_worker_inbox_oldest_pending_age_seconds", target="triage") == 2.5
    assert _one(got, "agents_worker_workers", state="ready") == 2
    assert _one(got, "agents_worker_worker_restarts_total") == 1
    assert _one(got, "agents_worker_redis_up") == 1


async def test_openmetrics_when_the_accept_header_asks(
    state: WebState, redis_url: str, keys: Keys
) -> None:
    recorder = MetricsRecorder(keys, state.settings, process="testhost:om:0")
    recorder.count("runs_completed", 3, agent="triage")
    recorder.observe("run_latency", 12.0, agent="triage")
    await recorder.flush(state.client)
    accept = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with served(create_app(state, dashboard=False)) as port:
        reply = await fetch(port, "/metrics", headers={"Accept": accept})
        plain = await fetch(port, "/metrics")
    assert reply.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert reply.body.endswith("# EOF\n")
    got = _samples(reply.body, openmetrics=True)
    assert got == _samples(plain.body)  # the same figures in either format
    assert _one(got, "agents_worker_runs_completed_total", agent="triage") == 3
    assert _one(got, "agents_worker_run_latency_seconds_count", agent="triage") == 1
    assert _one(got, "agents_worker_run_latency_seconds_bucket", agent="triage", le="0.025") == 1
    assert _one(got, "agents_worker_run_latency_seconds_bucket", agent="triage", le="0.01") == 0
    head = await _head(state)
    assert head == 200


async def _head(state: WebState) -> int:
    async with served(create_app(state, dashboard=False)) as port:
        return (await fetch(port, "/metrics", "HEAD")).status


async def test_without_redis_the_scrape_answers_with_the_supervisors_own_figures(
    redis_url: str, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    # nothing listens there; no retries, to keep the test short
    dead = redis.asyncio.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    figures = SupervisorFigures(ready=1, running=1, paused=1, restarts=0, backlog=7)
    probe = Probe(lambda: True, lambda: "every worker is paused", lambda: figures)
    state = WebState(dead, keys, make_settings(redis_url, keys.prefix), probe)
    with caplog.at_level(logging.INFO, logger="runtime.web.metrics"):
        async with served(create_app(state, dashboard=False)) as port:
            replies = [await fetch(port, "/metrics") for _ in range(3)]
    for reply in replies:
        assert reply.status == 200
        got = _samples(reply.body)
        assert _one(got, "agents_worker_redis_up") == 0
        assert _one(got, "agents_worker_workers", state="paused") == 1
        assert _one(got, "agents_worker_backlog") == 7
    failed = [r for r in caplog.records if r.getMessage() == "metrics.read_failed"]
    assert len(failed) == 1  # once per episode, not per scrape
    await dead.aclose()


async def test_a_gauge_nobody_samples_any_more_is_left_out(state: WebState, keys: Keys) -> None:
    hour_ago = MetricsRecorder(
        keys, state.settings, process="testhost:gone", clock=lambda: time.time() - 3600
    )
    hour_ago.gauge("inbox_lag", 40, target="retired")
    await hour_ago.flush(state.client)
    fresh = MetricsRecorder(keys, state.settings, process="testhost:sup")
    fresh.gauge("inbox_lag", 2, target="triage")
    await fresh.flush(state.client)
    async with served(create_app(state, dashboard=False)) as port:
        got = _samples((await fetch(port, "/metrics")).body)
    lags = {dict(labels).get("target"): v for (name, labels), v in got.items() if "lag" in name}
    assert lags == {"triage": 2}


def _field(name: str, **labels: str) -> str:
    return encode_field(name, tuple(sorted(labels.items())))


def _histogram(got: dict[tuple[str, frozenset[object]], float], agent: str) -> list[float]:
    """The buckets of run_latency{agent} by bound, then its _count."""
    name = "agents_worker_run_latency_seconds"
    bounds = [_seconds(b) for b in LATENCY_BUCKETS_MS]
    buckets = [_one(got, f"{name}_bucket", agent=agent, le=le) for le in bounds]
    return [*buckets, _one(got, f"{name}_count", agent=agent)]


def _seconds(bound_ms: float) -> str:
    return "+Inf" if bound_ms == float("inf") else repr(bound_ms / 1000)


async def test_a_half_written_flush_still_scrapes_as_consistent_histograms(
    state: WebState, keys: Keys
) -> None:
    """A flush adds to a latency's fields one by one: a scrape between two of them reads
    buckets out of order, or a ``_count`` not equal to the +Inf bucket, or no ``_sum`` yet.
    Both formats still parse (OpenMetrics' parser refuses such a histogram) and each figure
    lies between its values before and after the flush."""
    bucket = "run_latency_bucket"
    await state.client.hset(
        keys.metrics_totals(),
        mapping={
            # triage: 5 ms raised to 4, 10 ms not yet (3 of the new 4); +Inf not yet, count yes
            _field(bucket, agent="triage", le=le_text(5)): 4,
            _field(bucket, agent="triage", le=le_text(10)): 3,
            _field(bucket, agent="triage", le=le_text(25)): 5,
            _field(bucket, agent="triage", le=le_text(math.inf)): 6,
            _field("run_latency_count", agent="triage"): 7,
            _field("run_latency_sum", agent="triage"): 90.5,
            # billing's first flush half done: two buckets written, nothing else yet
            _field(bucket, agent="billing", le=le_text(100)): 2,
            _field(bucket, agent="billing", le=le_text(250)): 2,
        },
    )
    accept = "application/openmetrics-text; version=1.0.0"
    async with served(create_app(state, dashboard=False)) as port:
        openmetrics = await fetch(port, "/metrics", headers={"Accept": accept})
        plain = await fetch(port, "/metrics")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    for got in (_samples(openmetrics.body, openmetrics=True), _samples(plain.body)):
        triage = _histogram(got, "triage")
        assert triage[:3] == [4, 4, 5] and triage[-2:] == [7, 7], triage
        assert triage == sorted(triage)
        assert _one(got, "agents_worker_run_latency_seconds_sum", agent="triage") == 0.0905
        billing = _histogram(got, "billing")
        assert billing == [0, 0, 0, 0, 2, *[2] * 9, 2], billing
        assert _one(got, "agents_worker_run_latency_seconds_sum", agent="billing") == 0
