"""Metrics: what Redis refuses never jams the flushes (a value that is not a number is refused
at the call; a totals field, a series or a roll-up refused for a reason of its own is given up
after five flushes, counted and logged), and the recorder's bookkeeping of the series it
created is by key and bounded (real Redis Stack; no mocks of Redis)."""

from __future__ import annotations

import logging
import math

import pytest
import redis.asyncio

from runtime import Keys, Settings
from runtime.observability import metrics_flush
from runtime.observability.metrics import MetricsRecorder
from runtime.observability.timeseries import MetricsStore
from tests.conftest import make_settings
from tests.test_metrics import NOW_MS, _rules, events, recorder, total_of, ts_info


async def ts_calls(client: redis.asyncio.Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_count_that_is_not_a_finite_number_is_refused_at_the_call(
    settings: Settings, keys: Keys, client: redis.asyncio.Redis
) -> None:
    rec = recorder(settings, keys)
    for bad in (math.nan, math.inf, -math.inf, 10**400, "5", None):
        with pytest.raises(ValueError, match="count of 'tokens_in' must be a finite number"):
            rec.count("tokens_in", bad, agent="a")  # type: ignore[arg-type]
    rec.count("tokens_in", 5, agent="b")
    for _ in range(3):
        rec.count("tokens_in", 1, agent="b")
        await rec.flush(client)
    assert rec.flush_failures == 0
    totals = await MetricsStore(client, keys).totals()
    assert [(t.metric, t.labels, t.value) for t in totals] == [("tokens_in", {"agent": "b"}, 8.0)]
    assert await MetricsStore(client, keys).range("tokens_in", 0, NOW_MS + 1, bucket_ms=10**13) == [
        (0, 8.0)
    ]


async def test_a_totals_field_redis_refuses_is_given_up_not_kept_forever(
    settings: Settings, keys: Keys, client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "runtime.observability.metrics")
    field = "tokens_in|agent=a"
    await client.hset(keys.metrics_totals(), field, "not a number")  # HINCRBYFLOAT refuses it
    rec = recorder(settings, keys)
    rec.count("tokens_in", 5, agent="a")
    for _ in range(5):
        rec.count("tokens_in", 1, agent="b")
        await rec.flush(client)
    assert rec.flush_failures == 5 and rec.dropped_totals == 1  # given up on the fifth
    (dropped,) = events(caplog, "metrics.total_dropped")
    assert dropped.__dict__["aw_fields"]["field"] == field
    rec.count("tokens_in", 1, agent="b")
    await rec.flush(client)
    assert rec.flush_failures == 5  # the flushes are clean again
    assert len(events(caplog, "metrics.flush_recovered")) == 1
    assert await client.hget(keys.metrics_totals(), field) == b"not a number"
    store = MetricsStore(client, keys)
    totals = await store.totals()  # the field that is not a number is left out, not an error
    assert [(t.metric, t.labels, t.value) for t in totals] == [("tokens_in", {"agent": "b"}, 6.0)]
    await client.hset(keys.metrics_totals(), "inbox_lag|target=x", "garbage")
    await client.hset(keys.metrics_totals(), "inbox_lag|target=y", "3 12x")
    assert await store.gauges() == []
    # the series of the field given up has all its samples: only the total was refused
    assert await store.range(
        "tokens_in", 0, NOW_MS + 1, bucket_ms=10**13, labels={"agent": "a"}
    ) == [(0, 5.0)]


async def test_a_refused_rollup_is_a_warning_and_is_made_once_it_can_be(
    settings: Settings, keys: Keys, client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    rec = recorder(settings, keys, process="p")
    series = keys.metric_series("retries", "p:sum:-")
    rollup = series + ":rollup"
    await client.set(rollup, "someone else's")  # TS.CREATERULE: WRONGTYPE
    for _ in range(3):
        rec.count("retries", 1)
        await rec.flush(client)  # the series is written; its roll-up is tried again each time
    assert rec.flush_failures == 0
    (warning,) = events(caplog, "metrics.rollup_refused")  # one episode: said once
    assert warning.levelno == logging.WARNING
    assert warning.__dict__["aw_fields"]["series"] == series
    assert _rules(await ts_info(client, series)) == {}
    await client.delete(rollup)
    rec.count("retries", 1)
    await rec.flush(client)
    assert _rules(await ts_info(client, series)) == {rollup: (60_000, "sum")}
    store = MetricsStore(client, keys)
    assert await store.range("retries", 0, NOW_MS + 1, bucket_ms=10**13) == [(0, 4.0)]
    assert total_of(await store.totals(), "retries") == 4
    # a new episode is said again; a roll-up refused five flushes in a row is given up
    other = keys.metric_series("retries", "p:sum:target=t")
    await client.set(other + ":rollup", "someone else's")
    for _ in range(7):
        rec.count("retries", 1, target="t")
        await rec.flush(client)
    assert len(events(caplog, "metrics.rollup_refused")) == 2
    assert len(events(caplog, "metrics.rollup_given_up")) == 1
    assert rec.flush_failures == 0
    creates = await ts_calls(client, "ts.createrule")
    rec.count("retries", 1, target="t")
    await rec.flush(client)
    assert await ts_calls(client, "ts.createrule") == creates  # not tried again
    assert total_of(await store.totals(), "retries", target="t") == 8


async def test_series_are_known_by_key_past_the_label_set_cache(
    redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    settings = make_settings(redis_url, keys.prefix, observability__metrics_rollup_seconds="0")
    rec = recorder(settings, keys)
    for i in range(4200):  # past the recorder's cache of 4096 label sets: it is cleared
        rec.count("tool_calls", tool=f"t{i}")
    await rec.flush(client)
    creates = await ts_calls(client, "ts.create")
    for i in range(100):  # label sets made again: new Series objects of the same keys
        rec.count("tool_calls", tool=f"t{i}")
    await rec.flush(client)
    assert await ts_calls(client, "ts.create") == creates  # no TS.CREATE sent again
    assert rec.flush_failures == 0
    totals = await MetricsStore(client, keys).totals()
    assert total_of(totals, "tool_calls", tool="t0") == 2
    assert total_of(totals, "tool_calls", tool="t4199") == 1


async def test_the_series_known_are_bounded(
    redis_url: str, keys: Keys, client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_flush, "_KNOWN_MAX", 50)
    settings = make_settings(redis_url, keys.prefix, observability__metrics_rollup_seconds="0")
    rec = MetricsRecorder(keys, settings, process="p")
    for i in range(120):
        rec.count("tool_calls", tool=f"t{i}")
    await rec.flush(client)
    assert len(rec._flusher._created) == 50  # white box: the memory kept is bounded
    creates = await ts_calls(client, "ts.create")
    rec.count("tool_calls", tool="t0")  # forgotten: created once more ("already exists")
    await rec.flush(client)
    assert await ts_calls(client, "ts.create") == creates + 1
    assert rec.flush_failures == 0
    assert total_of(await MetricsStore(client, keys).totals(), "tool_calls", tool="t0") == 2
