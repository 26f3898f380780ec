"""The fleet (issue 11): supervisors publish their workers; the views read them back.

Unit tests of :mod:`runtime.observability.fleet` on the session's Redis, and two real
`agents-worker run` supervisors whose workers the fleet read shows, with their state, pid,
start, runs handled and resident memory; a supervisor that stops leaves the fleet at once, one
killed with SIGKILL when its heartbeat expires.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import pytest
import redis.asyncio

from runtime import Keys
from runtime.observability.fleet import (
    TARGETS_FORGOTTEN_AFTER,
    FleetMember,
    WorkerInfo,
    publish_member,
    read_fleet,
    read_targets,
    remove_member,
    touch_targets,
)
from tests.helpers import scratch_list, wait_until
from tests.supervision import FAST, Running, producer, supervise, supervisors

SAMPLE = [*FAST, "observability.sample_interval_seconds=0.2"]


@pytest.fixture
def runs() -> Iterator[list[Running]]:
    with supervisors() as started:
        yield started


def _member(instance: str, *workers: WorkerInfo, targets: list[str] | None = None) -> FleetMember:
    now = time.time()
    return FleetMember(
        instance=instance,
        host=instance.split(":")[0],
        pid=os.getpid(),
        started_at=now - 5,
        http="127.0.0.1:8080",
        targets=targets or ["echo"],
        workers=list(workers),
        seen=now,
    )


async def test_publish_and_read_members(client: redis.asyncio.Redis, keys: Keys) -> None:
    ready = WorkerInfo("h1:aa:0", 101, "ready", time.time() - 3, 7, 80.5)
    starting = WorkerInfo("h1:aa:1", None, "starting", None, 0, None)
    first = _member("h1:aa", ready, starting)
    second = _member("h2:bb", targets=["triage", "billing"])
    await publish_member(client, keys, second, ttl=30)
    await publish_member(client, keys, first, ttl=30)
    assert await read_fleet(client, keys) == [first, second]  # by instance, every field back
    assert 0 < await client.pttl(keys.fleet_member("h1:aa")) <= 30_000

    beat = _member("h1:aa", starting)  # the next heartbeat replaces the last one
    await publish_member(client, keys, beat, ttl=30)
    assert await read_fleet(client, keys) == [beat, second]

    await remove_member(client, keys, "h2:bb")
    assert await read_fleet(client, keys) == [beat]
    assert await client.zscore(keys.fleet(), "h2:bb") is None


async def test_a_member_whose_heartbeat_expired_is_gone(
    client: redis.asyncio.Redis, keys: Keys
) -> None:
    await publish_member(client, keys, _member("h1:short"), ttl=0.2)
    await publish_member(client, keys, _member("h1:long"), ttl=30)
    assert [m.instance for m in await read_fleet(client, keys)] == ["h1:long", "h1:short"]

    async def expired() -> bool:
        return [m.instance for m in await read_fleet(client, keys)] == ["h1:long"]

    await wait_until(expired, limit=10, what="the short heartbeat to expire")
    # long-dead members are trimmed from the zset by the next heartbeat
    await client.zadd(keys.fleet(), {"h9:ancient": time.time() - 86_400})
    await publish_member(client, keys, _member("h1:long"), ttl=30)
    assert await client.zscore(keys.fleet(), "h9:ancient") is None


async def test_a_malformed_member_is_left_out(client: redis.asyncio.Redis, keys: Keys) -> None:
    await publish_member(client, keys, _member("h1:good"), ttl=30)
    await client.zadd(keys.fleet(), {"h1:bad": time.time()})
    await client.hset(keys.fleet_member("h1:bad"), mapping={"instance": "h1:bad", "pid": "x"})
    assert [m.instance for m in await read_fleet(client, keys)] == ["h1:good"]


async def test_targets_served(client: redis.asyncio.Redis, keys: Keys) -> None:
    assert await read_targets(client, keys) == []
    await touch_targets(client, keys, ["triage", "billing"], now=1000.0)
    await touch_targets(client, keys, ["echo", "triage"], now=2000.0)
    await touch_targets(client, keys, [])
    assert await read_targets(client, keys) == ["billing", "echo", "triage"]
    assert await read_targets(client, keys, since=1500.0) == ["echo", "triage"]


async def test_targets_nobody_served_for_a_week_are_forgotten(
    client: redis.asyncio.Redis, keys: Keys
) -> None:
    """keys.targets() is bounded: a report drops the targets last served over
    TARGETS_FORGOTTEN_AFTER (7 days) before it, in the same round trip."""
    now = time.time()
    week = TARGETS_FORGOTTEN_AFTER
    await touch_targets(client, keys, ["gone"], now=now - week - 60)
    await touch_targets(client, keys, ["kept"], now=now - week + 60)
    assert await read_targets(client, keys) == ["gone", "kept"]  # nothing newer reported yet
    await touch_targets(client, keys, ["triage"], now=now)
    assert await read_targets(client, keys) == ["kept", "triage"]
    assert await client.zcard(keys.targets()) == 2
    await touch_targets(client, keys, ["triage"], now=now + 120)  # 'kept' is 7 days old now
    assert await read_targets(client, keys) == ["triage"]


def _consumers(run: Running) -> dict[int, str]:
    """Worker pid → consumer name, from the supervisor's ``worker.ready`` lines."""
    found = {}
    for line in run.lines:
        ready = re.search(r"worker\.ready slot=\d+ pid=(\d+) consumer=(\S+)", line)
        if ready:
            found[int(ready.group(1))] = ready.group(2)
    return found


@pytest.mark.timeout(120)
async def test_the_fleet_shows_two_supervisors_and_their_workers(
    runs: list[Running], redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    blue = supervise(runs, redis_url, keys.prefix, "-w", "2", sets=SAMPLE)
    green = supervise(runs, redis_url, keys.prefix, "-w", "1", sets=SAMPLE)
    await blue.wait_for(r"worker\.ready slot=", 2)
    await green.wait_for(r"worker\.ready slot=", 1)
    sent = await producer(redis_url, keys, client).enqueue_many("echo", range(10))

    async def all_done() -> bool:
        return len(await scratch_list(client, keys, "effects")) >= len(sent)

    await wait_until(all_done, limit=30, what="10 effects")
    expected = {**_consumers(blue), **_consumers(green)}  # pid → name, every worker

    async def settled() -> bool:
        members = await read_fleet(client, keys)
        workers = [w for m in members for w in m.workers]
        return (
            len(members) == 2
            and {w.pid: w.name for w in workers} == expected
            and all(w.state == "ready" for w in workers)
            and sum(w.runs for w in workers) == len(sent)
        )

    await wait_until(settled, limit=30, what="both supervisors' workers, idle, 10 runs")
    members = await read_fleet(client, keys)
    by_pid = {m.pid: m for m in members}
    assert set(by_pid) == {blue.proc.pid, green.proc.pid}
    assert len(by_pid[blue.proc.pid].workers) == 2 and len(by_pid[green.proc.pid].workers) == 1
    for member in members:
        assert member.targets and "echo" in member.targets
        assert member.http is None  # the tests run with --http-port 0
        for worker in member.workers:
            assert worker.name.startswith(member.instance + ":")
            assert worker.started_at is not None and member.started_at - 5 < worker.started_at
            assert worker.rss_mb is not None and worker.rss_mb > 1
    assert "echo" in await read_targets(client, keys)

    assert await green.stop() == 0  # a clean stop leaves the fleet at once
    assert [m.pid for m in await read_fleet(client, keys)] == [blue.proc.pid]

    blue.proc.send_signal(signal.SIGKILL)  # a killed one when its heartbeat expires

    async def gone() -> bool:
        return await read_fleet(client, keys) == []

    await wait_until(gone, limit=10, what="the killed supervisor's heartbeat to expire")
