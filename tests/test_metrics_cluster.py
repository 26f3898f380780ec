"""Metrics on Redis Cluster: a series and its roll-up share a slot, so the roll-up rule is
created (a one-node cluster of the bundled Redis Stack binary with TimeSeries, a test's own)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
from redis.crc import key_slot

from runtime import EmbeddedRedisNotInstalled, Keys
from runtime.keys import hash_tag
from runtime.observability.metrics import SERIES_STATS, MetricsRecorder, build_family
from runtime.redis.embedded import bundled_server
from tests.conftest import OPENSSL_DIR, free_port, make_settings
from tests.test_metrics import _rules, ts_info


def test_every_series_and_its_rollup_share_a_hash_tag_and_slot() -> None:
    keys = Keys("acme:prod")
    labels = (("agent", "triage"), ("model", "gpt-4o"))
    for kind in SERIES_STATS:
        family = build_family(keys, "host:1:0", "runs_completed", kind, labels, rollup=True)
        for series in family.series:
            assert series.rollup_key is not None
            assert hash_tag(series.key) == hash_tag(series.rollup_key) != series.key
            assert key_slot(series.key.encode()) == key_slot(series.rollup_key.encode())
    # different series still spread over the cluster
    spread = {
        key_slot(keys.metric_series("runs_completed", f"p{i}:sum:-").encode()) for i in range(50)
    }
    assert len(spread) > 40


def _wait(check: Any, what: str, limit: float = 20.0) -> None:
    began = time.monotonic()
    while True:
        try:
            if check():
                return
        except (redis.exceptions.ConnectionError, redis.exceptions.ResponseError):
            pass
        if time.monotonic() - began > limit:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        time.sleep(0.05)


def _start_node(
    binary: Path, module_dir: Path, tmp_path: Path, env: dict[str, str], attempt: int
) -> tuple[tuple[subprocess.Popen[bytes], int] | None, str]:
    """Start one cluster-enabled node on a free port; ``None`` (and its log) when it exits at
    once (the port taken meanwhile by another process): the caller tries another port."""
    port = free_port()
    data = tmp_path / f"node{attempt}"
    data.mkdir()
    args = [
        str(binary), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
        "--cluster-enabled", "yes", "--save", "", "--appendonly", "no",
        "--loadmodule", str(module_dir / "redistimeseries.so"),
    ]  # fmt: skip
    log_path = data / "log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    sync = redis.Redis(host="127.0.0.1", port=port)
    try:
        began = time.monotonic()
        while time.monotonic() - began < 30:
            if proc.poll() is not None:
                return None, log_path.read_text(errors="replace")
            try:
                if sync.ping():
                    return (proc, port), ""
            except redis.exceptions.ConnectionError:
                pass
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        return None, "no answer within 30 s:\n" + log_path.read_text(errors="replace")
    finally:
        sync.close()


@pytest.fixture
def cluster_port(tmp_path: Path) -> Iterator[int]:
    """A one-node Redis Cluster of the bundled binary with the TimeSeries module."""
    try:
        binary, module_dir = bundled_server()
    except EmbeddedRedisNotInstalled:
        pytest.skip("the bundled Redis Stack binary is not installed")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(Path(OPENSSL_DIR) / "lib"), env.get("LD_LIBRARY_PATH", "")) if p
    )
    logs = []
    for attempt in range(3):
        started, why = _start_node(binary, module_dir, tmp_path, env, attempt)
        if started is not None:
            break
        logs.append(why)
    else:
        raise AssertionError("the cluster node did not start:\n" + "\n---\n".join(logs))
    proc, port = started
    try:
        sync = redis.Redis(host="127.0.0.1", port=port)
        sync.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        _wait(lambda: sync.cluster("info")["cluster_state"] == "ok", "the cluster state ok")
        sync.close()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
async def cluster(cluster_port: int) -> AsyncIterator[redis.asyncio.cluster.RedisCluster]:
    client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster_port)
    try:
        yield client
    finally:
        await client.aclose()


async def test_rollup_rules_are_created_on_a_cluster(
    cluster: redis.asyncio.cluster.RedisCluster, cluster_port: int
) -> None:
    keys = Keys("cly")
    settings = make_settings(f"redis://127.0.0.1:{cluster_port}", keys.prefix)
    rec = MetricsRecorder(keys, settings, process="h:i:0")
    rec.count("runs_completed", 3, agent="a")
    rec.observe("run_latency", 12.0, agent="a")
    await rec.flush(cluster)  # type: ignore[arg-type]  # a cluster client: redis-py pipeline
    assert rec.flush_failures == 0 and rec.history is True
    counter = build_family(keys, rec.process, "runs_completed", "counter", (("agent", "a"),), True)
    (series,) = counter.series
    info = await ts_info(cluster, series.key)  # type: ignore[arg-type]
    assert _rules(info) == {series.rollup_key: (60_000, "sum")}
    latency = build_family(keys, rec.process, "run_latency", "latency", (("agent", "a"),), True)
    for each in latency.series:
        assert list(_rules(await ts_info(cluster, each.key))) == [each.rollup_key]  # type: ignore[arg-type]
