"""Metrics: the recorder's buffer and flush, series layout, totals, gauges, bad input, and the
plain Redis without TimeSeries (real Redis Stack and plain Redis 7; no mocks of Redis)."""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio
import redis.asyncio.connection

from runtime import Keys, Settings
from runtime.observability import metrics_flush
from runtime.observability.metrics import LATENCY_BUCKETS_MS, METRICS, MetricsRecorder, le_text
from runtime.observability.timeseries import MetricsStore, Total
from tests.conftest import make_settings
from tests.helpers import kill_next_connection, wait_until

# a pinned clock (a whole minute, 2 to 3 minutes ago): every record lands in one millisecond
NOW_S = (time.time() // 60 - 2) * 60
NOW_MS = int(NOW_S * 1000)


def recorder(settings: Settings, keys: Keys, process: str = "h:1:0", **kw: Any) -> MetricsRecorder:
    return MetricsRecorder(keys, settings, process=process, clock=lambda: NOW_S, **kw)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name]


async def ts_info(client: redis.asyncio.Redis, key: str) -> dict[str, Any]:
    reply = await client.execute_command("TS.INFO", key)
    if isinstance(reply, list):  # RESP2
        reply = dict(zip(reply[::2], reply[1::2], strict=True))
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in reply.items()}


def total_of(totals: list[Total], metric: str, **labels: str) -> float:
    return sum(t.value for t in totals if t.metric == metric and t.labels == labels)


@pytest.fixture
def say_history_off_again() -> Iterator[None]:
    """`metrics.history_off` is said once per process: let this test see it once more."""
    metrics_flush._history_off_said.clear()
    yield
    metrics_flush._history_off_said.set()


# --- 2. batched writes: no I/O on record, one round trip per flush, errors kept ---------------
class _IOGuard:
    """Fails on any socket send/connect or redis-py send while armed (any thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.sends = 0
        for name in ("send", "sendall", "sendto", "connect", "connect_ex"):
            monkeypatch.setattr(socket.socket, name, self._wrap(getattr(socket.socket, name)))
        conn = redis.asyncio.connection.AbstractConnection
        monkeypatch.setattr(conn, "send_packed_command", self._wrap_async(conn.send_packed_command))

    def _check(self) -> None:
        if self.armed:
            raise AssertionError("I/O from a record method")

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kw: Any) -> Any:
            self._check()
            return fn(*args, **kw)

        return guarded

    def _wrap_async(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(*args: Any, **kw: Any) -> Any:
            self._check()
            self.sends += 1
            return await fn(*args, **kw)

        return guarded


async def test_record_methods_do_no_io_and_a_flush_is_one_round_trip(
    settings: Settings, keys: Keys, client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.ping()  # the pool holds a live connection: a flush needs no new one
    guard = _IOGuard(monkeypatch)
    rec = recorder(settings, keys)
    threads = threading.active_count()
    guard.armed = True
    for i in range(200):
        assert rec.count("runs_completed", agent="triage") is None
        rec.observe("run_latency", i, agent="triage", model="m")
        rec.gauge("inbox_lag", i, target="triage")
    guard.armed = False
    assert threading.active_count() == threads  # nothing started behind our back
    assert guard.sends == 0
    await rec.flush(client)  # creates the series too: still one write
    assert guard.sends == 1
    rec.count("runs_completed", agent="triage")
    await rec.flush(client)
    assert guard.sends == 2
    await rec.flush(client)  # nothing buffered: no round trip
    assert guard.sends == 2
    totals = await MetricsStore(client, keys).totals()
    assert total_of(totals, "runs_completed", agent="triage") == 201


async def test_a_failed_flush_keeps_its_batch_and_never_raises(
    settings: Settings, keys: Keys, client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "runtime.observability.metrics")
    rec = recorder(settings, keys)
    store = MetricsStore(client, keys)
    for _ in range(3):  # three failed flushes in a row: one episode, one log line
        rec.count("runs_completed", 10, agent="a")
        rec.observe("run_latency", 7, agent="a")
        await kill_next_connection(client)
        await rec.flush(client)
    assert rec.flush_failures == 3
    assert len(events(caplog, "metrics.flush_failed")) == 1
    await rec.flush(client)
    assert len(events(caplog, "metrics.flush_recovered")) == 1
    totals = await store.totals()
    assert total_of(totals, "runs_completed", agent="a") == 30
    assert total_of(totals, "run_latency_count", agent="a") == 3
    assert await store.range("runs_completed", NOW_MS, NOW_MS, bucket_ms=1000) == [
        (NOW_MS // 1000 * 1000, 30.0)
    ]
    # a new episode logs again
    rec.count("runs_completed", agent="a")
    await kill_next_connection(client)
    await rec.flush(client)
    assert len(events(caplog, "metrics.flush_failed")) == 2


async def test_a_refused_command_keeps_only_what_was_refused(
    settings: Settings, keys: Keys, client: redis.asyncio.Redis
) -> None:
    rec = recorder(settings, keys)
    await client.set(keys.metrics_totals(), "not a hash")  # HINCRBYFLOAT: WRONGTYPE
    rec.count("runs_completed", 5, agent="a")
    await rec.flush(client)
    assert rec.flush_failures == 1
    await client.delete(keys.metrics_totals())
    await rec.flush(client)
    store = MetricsStore(client, keys)
    assert total_of(await store.totals(), "runs_completed", agent="a") == 5
    # the series was written by the first flush and not again by the second
    assert await store.range("runs_completed", 0, NOW_MS + 1, bucket_ms=10**13) == [(0, 5.0)]


async def test_the_buffer_is_bounded_and_totals_stay_exact(
    settings: Settings, keys: Keys, client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    ticks = iter(range(NOW_MS, NOW_MS + 1000))
    rec = MetricsRecorder(
        keys, settings, process="p", clock=lambda: next(ticks) / 1000, max_pending=10
    )
    for _ in range(25):  # 25 milliseconds: 25 samples of history, room for 10
        rec.count("tool_calls", tool="lookup")
    assert rec.dropped == 15
    assert len(events(caplog, "metrics.buffer_full")) == 1
    await rec.flush(client)
    store = MetricsStore(client, keys)
    assert total_of(await store.totals(), "tool_calls", tool="lookup") == 25
    kept = await store.range("tool_calls", 0, NOW_MS + 10_000, bucket_ms=10**13)
    assert kept == [(0, 10.0)]


async def test_a_buffer_full_through_a_full_redis_is_one_episode(
    settings: Settings, keys: Keys, client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    ticks = iter(range(NOW_MS, NOW_MS + 1000))
    rec = MetricsRecorder(
        keys, settings, process="p", clock=lambda: next(ticks) / 1000, max_pending=10
    )
    (before,) = (await client.config_get("maxmemory")).values()
    await client.config_set("maxmemory", 1)  # every write refused: OOM error replies
    try:
        for _ in range(6):  # six refused flushes, each with 10 new samples kept: full
            for _ in range(10):
                rec.count("tool_calls", tool="t")
            await rec.flush(client)
    finally:
        await client.config_set("maxmemory", before)
    assert rec.flush_failures == 6 and rec.dropped == 50  # what the buffer had room for: kept
    assert len(events(caplog, "metrics.buffer_full")) == 1
    assert len(events(caplog, "metrics.flush_failed")) == 1
    await rec.flush(client)
    store = MetricsStore(client, keys)
    assert total_of(await store.totals(), "tool_calls", tool="t") == 60
    assert await store.range("tool_calls", 0, NOW_MS + 10_000, bucket_ms=10**13) == [(0, 10.0)]
    for _ in range(11):  # after a good flush, a new episode is logged again
        rec.count("tool_calls", tool="t")
    assert len(events(caplog, "metrics.buffer_full")) == 2


async def test_a_series_whose_key_is_taken_is_given_up(
    settings: Settings, keys: Keys, client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    rec = recorder(settings, keys, process="p")
    taken = keys.metric_series("retries", "p:sum:-")
    await client.set(taken, "someone else's")
    rec.count("retries", 2)
    for _ in range(5):
        await rec.flush(client)
    assert rec.dropped == 1  # the sample, given up on the fifth refusal
    assert [
        r.__dict__["aw_fields"]["series"] for r in events(caplog, "metrics.series_dropped")
    ] == [taken]
    assert await client.get(taken) == b"someone else's"
    assert total_of(await MetricsStore(client, keys).totals(), "retries") == 2


async def test_run_flushes_periodically_and_once_more_when_cancelled(
    redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    settings = make_settings(redis_url, keys.prefix, observability__flush_interval_seconds="0.05")
    rec = recorder(settings, keys)
    store = MetricsStore(client, keys)

    async def counted(n: float) -> bool:
        return total_of(await store.totals(), "retries", target="t") == n

    async with anyio.create_task_group() as tg:
        await tg.start(rec.run, client)
        rec.count("retries", target="t")
        await wait_until(lambda: counted(1), what="the periodic flush")
        rec.count("retries", target="t")
        tg.cancel_scope.cancel()
    assert await counted(2)


async def test_metrics_off_writes_nothing(
    redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    settings = make_settings(redis_url, keys.prefix, observability__metrics="false")
    rec = recorder(settings, keys)
    rec.count("runs_completed")
    rec.observe("run_latency", 3)
    rec.gauge("inbox_lag", 3)
    await rec.flush(client)
    assert [key async for key in client.scan_iter(match=f"{keys.prefix}:*")] == []


# --- 3. series: labels, expiry, retention and roll-ups -------------------------------------
async def test_series_labels_retention_expiry_and_rollup_rules(
    redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    settings = make_settings(
        redis_url, keys.prefix,
        observability__metrics_retention_seconds="120",
        observability__metrics_rollup_seconds="10",
        observability__metrics_rollup_retention_seconds="3600",
    )  # fmt: skip
    rec = recorder(settings, keys, process="host-1:inst-2:3")
    rec.count("runs_completed", agent="triage", model="gpt-4o")
    rec.observe("run_latency", 12, agent="triage")
    rec.gauge("inbox_lag", 4, target="triage")
    await rec.flush(client)
    series = sorted([key.decode() async for key in client.scan_iter(match=f"{keys.prefix}:ts:*")])
    raw = [key for key in series if not key.endswith(":rollup")]
    assert len(raw) == 6 and len(series) == 12  # counter 1, latency 4, gauge 1; + roll-ups
    counter = keys.metric_series("runs_completed", "host-1:inst-2:3:sum:agent=triage,model=gpt-4o")
    info = await ts_info(client, counter)
    labels = {k.decode(): v.decode() for k, v in _pairs(info["labels"])}
    assert labels == {
        "metric": "runs_completed", "stat": "sum", "res": "raw", "process": "host-1:inst-2:3",
        "prefix": keys.prefix, "agent": "triage", "model": "gpt-4o",
    }  # fmt: skip
    assert info["retentionTime"] == 120_000
    assert _text(info["duplicatePolicy"]).lower() == "sum"
    assert _rules(info) == {counter + ":rollup": (10_000, "sum")}
    rollup = await ts_info(client, counter + ":rollup")
    assert rollup["retentionTime"] == 3_600_000
    policies = {}
    for key in raw:
        policies[key.split(":")[-2]] = _text((await ts_info(client, key))["duplicatePolicy"])
    assert {k: v.lower() for k, v in policies.items()} == {
        "sum": "sum", "count": "sum", "max": "max", "min": "min", "last": "last",
    }  # fmt: skip
    for key in raw:
        assert 110_000 < await client.pttl(key) <= 120_000
        assert 3_590_000 < await client.pttl(key + ":rollup") <= 3_600_000
    # the expiry is refreshed by every write
    await client.pexpire(counter, 5_000)
    rec.count("runs_completed", agent="triage", model="gpt-4o")
    await rec.flush(client)
    assert await client.pttl(counter) > 110_000


async def test_rollup_zero_creates_no_rules(
    redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    settings = make_settings(redis_url, keys.prefix, observability__metrics_rollup_seconds="0")
    rec = recorder(settings, keys)
    rec.count("runs_completed")
    await rec.flush(client)
    series = [key.decode() async for key in client.scan_iter(match=f"{keys.prefix}:ts:*")]
    assert len(series) == 1 and not series[0].endswith(":rollup")
    assert _rules(await ts_info(client, series[0])) == {}


async def test_a_series_gone_between_flushes_is_created_again(
    settings: Settings, keys: Keys, client: redis.asyncio.Redis
) -> None:
    rec = recorder(settings, keys)
    rec.count("runs_completed")
    await rec.flush(client)
    (key,) = [k async for k in client.scan_iter(match=keys.metric_series("*", "*sum:-"))]
    await client.delete(key)  # e.g. expired: idle for a whole retention
    rec.count("runs_completed", 2)
    await rec.flush(client)  # refused ("not a TSDB key"), kept
    await rec.flush(client)  # created again, written
    store = MetricsStore(client, keys)
    assert await store.range("runs_completed", 0, NOW_MS + 1, bucket_ms=10**13) == [(0, 2.0)]
    assert total_of(await store.totals(), "runs_completed") == 3
    assert _rules(await ts_info(client, key.decode())) == {
        key.decode() + ":rollup": (60_000, "sum")
    }


def _pairs(labels: Any) -> list[tuple[bytes, bytes]]:
    return list(labels.items()) if isinstance(labels, dict) else [tuple(p) for p in labels]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _rules(info: dict[str, Any]) -> dict[str, tuple[int, str]]:
    rules = info["rules"]
    if isinstance(rules, dict):  # RESP3: {dest: [bucket, aggregation, align]}
        return {_text(k): (int(v[0]), _text(v[1]).lower()) for k, v in rules.items()}
    return {_text(r[0]): (int(r[1]), _text(r[2]).lower()) for r in rules}


# --- 4. latency: exact averages, cumulative buckets ----------------------------------------
async def test_latency_average_per_bucket_is_sum_over_count_and_buckets_are_cumulative(
    settings: Settings, keys: Keys, client: redis.asyncio.Redis
) -> None:
    clock = [NOW_S]
    recs = [
        MetricsRecorder(keys, settings, process=f"p{i}", clock=lambda: clock[0]) for i in range(2)
    ]
    values = [[0.5, 7, 7, 99.5, 2_000], [3, 60_001, 0.25]]
    for rec, mine in zip(recs, values, strict=True):
        for value in mine:
            rec.observe("run_latency", value, agent="a")
    clock[0] = NOW_S + 10  # the next 10-second bucket
    for rec in recs:
        rec.observe("run_latency", 1, agent="a")
        await rec.flush(client)
    store = MetricsStore(client, keys)
    first = [v for mine in values for v in mine]
    assert await store.latency_range(
        "run_latency", NOW_MS, NOW_MS + 20_000, bucket_ms=10_000, labels={"agent": "a"}
    ) == [(NOW_MS, sum(first) / len(first)), (NOW_MS + 10_000, 1.0)]
    assert await store.range(
        "run_latency", NOW_MS, NOW_MS + 20_000, bucket_ms=10_000, stat="max", reduce="max"
    ) == [(NOW_MS, 60_001.0), (NOW_MS + 10_000, 1.0)]
    everything = [*first, 1, 1]
    totals = await store.totals()
    assert total_of(totals, "run_latency_count", agent="a") == len(everything)
    assert total_of(totals, "run_latency_sum", agent="a") == sum(everything)
    for bound in LATENCY_BUCKETS_MS:
        expected = sum(1 for v in everything if v <= bound)
        assert total_of(totals, "run_latency_bucket", agent="a", le=le_text(bound)) == expected
    assert total_of(totals, "run_latency_bucket", agent="a", le="+Inf") == len(everything)
    assert {t.family for t in totals} == {"run_latency"}


# --- 5. gauges ---------------------------------------------------------------------------
async def test_gauges_latest_per_label_set_never_added_up(
    settings: Settings, keys: Keys, client: redis.asyncio.Redis
) -> None:
    sups = [recorder(settings, keys, process=f"sup{i}") for i in range(2)]
    for sup in sups:  # two supervisors sample the same inbox
        sup.gauge("inbox_lag", 12, target="triage")
        sup.gauge("inbox_pending", 3, target="triage")
        await sup.flush(client)
    sups[0].gauge("inbox_lag", 5, target="billing")
    await sups[0].flush(client)
    store = MetricsStore(client, keys)
    gauges = {(g.metric, g.labels["target"]): g.value for g in await store.gauges()}
    assert gauges == {
        ("inbox_lag", "triage"): 12, ("inbox_pending", "triage"): 3, ("inbox_lag", "billing"): 5,
    }  # fmt: skip
    assert all(g.at == NOW_S for g in await store.gauges())
    assert await store.range(
        "inbox_lag", NOW_MS, NOW_MS, bucket_ms=1000, labels={"target": "triage"}
    ) == [(NOW_MS, 12.0)]
    sups[1].gauge("inbox_lag", 20, target="triage")  # the latest value wins
    await sups[1].flush(client)
    latest = [g for g in await store.gauges() if g.labels == {"target": "triage"}]
    assert [(g.metric, g.value) for g in latest] == [("inbox_lag", 20), ("inbox_pending", 3)]
    assert await store.totals() == []  # gauges are not totals
    stale = MetricsStore(client, keys, gauge_max_age_seconds=60)
    fresh = MetricsRecorder(keys, settings, process="sup2")  # stamps samples now
    fresh.gauge("inbox_lag", 1, target="fresh")
    await fresh.flush(client)
    assert [g.labels for g in await stale.gauges()] == [{"target": "fresh"}]


# --- 6. a Redis without TimeSeries --------------------------------------------------------
@pytest.mark.usefixtures("say_history_off_again")
async def test_plain_redis_keeps_totals_and_says_once_history_is_off(
    plain_redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys = Keys(key_prefix)
    settings = make_settings(plain_redis_url, key_prefix)
    client = redis.asyncio.Redis.from_url(plain_redis_url)
    try:
        for process in ("a", "b"):  # two recorders of one process: said once
            rec = recorder(settings, keys, process=process)
            for _ in range(2):
                rec.count("runs_completed", agent="x")
                rec.observe("run_latency", 4, agent="x")
                rec.gauge("inbox_lag", 2, target="x")
                await rec.flush(client)
            assert rec.history is False and rec.flush_failures == 0
        assert len(events(caplog, "metrics.history_off")) == 1
        store = MetricsStore(client, keys)
        assert await store.history_available() is False
        totals = await store.totals()
        assert total_of(totals, "runs_completed", agent="x") == 4
        assert total_of(totals, "run_latency_sum", agent="x") == 16
        assert [(g.metric, g.value) for g in await store.gauges()] == [("inbox_lag", 2)]
        assert await store.range("runs_completed", 0, NOW_MS, bucket_ms=1000) == []
        assert await store.latency_range("run_latency", 0, NOW_MS, bucket_ms=1000) == []
    finally:
        async for key in client.scan_iter(match=f"{key_prefix}:*"):
            await client.unlink(key)
        await client.aclose()


async def test_history_available_on_stack(client: redis.asyncio.Redis, keys: Keys) -> None:
    assert await MetricsStore(client, keys).history_available() is True


# --- 7. bad input ------------------------------------------------------------------------
def test_unknown_metric_label_or_kind_is_a_clear_error(settings: Settings, keys: Keys) -> None:
    rec = recorder(settings, keys)
    with pytest.raises(ValueError, match=r"unknown metric 'runs_done'.*catalogue.*runs_completed"):
        rec.count("runs_done")
    with pytest.raises(ValueError, match=r"unknown metric label 'tenant'.*agent, tool"):
        rec.count("runs_completed", tenant="x")
    with pytest.raises(ValueError, match=r"'inbox_lag' is a gauge: record it with gauge\(\)"):
        rec.count("inbox_lag")
    with pytest.raises(ValueError, match="finite"):
        rec.observe("run_latency", math.nan)
    assert set(METRICS) >= {"runs_submitted", "queue_wait", "inbox_oldest_pending_age"}


async def test_label_values_are_cleaned_and_cut(
    settings: Settings, keys: Keys, client: redis.asyncio.Redis
) -> None:
    rec = recorder(settings, keys, process="my host:{x}:0")
    ugly = "tool with spaces, {braces}|pipes=eq\n" + "x" * 500
    rec.count("tool_calls", tool=ugly, agent="élan")
    rec.observe("turn_latency", 5, tool=ugly)
    await rec.flush(client)
    assert rec.flush_failures == 0
    totals = await MetricsStore(client, keys).totals()
    tools = {t.labels["tool"] for t in totals}
    (tool,) = tools
    assert len(tool) == 100 and tool.startswith("tool_with_spaces___braces__pipes_eq_x")
    assert {t.labels.get("agent") for t in totals if t.metric == "tool_calls"} == {"élan"}
    series = [key.decode() async for key in client.scan_iter(match=keys.metric_series("*", "*"))]
    # no space, and no brace but the hash tag's own: labels cannot end it early
    assert series and all(
        " " not in key and key.count("{") == key.count("}") == 1 for key in series
    )
    store = MetricsStore(client, keys)
    assert await store.range(
        "tool_calls", 0, NOW_MS + 1, bucket_ms=10**13, labels={"tool": ugly}
    ) == [(0, 1.0)]
    with pytest.raises(ValueError, match="unknown metric label"):
        await store.range("tool_calls", 0, 1, bucket_ms=1, labels={"tenant": "x"})
    with pytest.raises(ValueError, match="unknown metric"):
        await store.range("nope", 0, 1, bucket_ms=1)
