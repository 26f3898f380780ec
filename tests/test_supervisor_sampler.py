"""The supervisor's sampler (issue 11, item 3): inbox gauges and the fleet heartbeat.

Its gauges equal what :func:`runtime.streams.stream_status` says of the inbox; its heartbeat
shows the slot's worker (a real process) busy with the entries it holds; a Redis outage skips
samples, is logged once, and never ends the sampler.
"""

from __future__ import annotations

import logging
import sys
import time

import anyio
import pytest
import redis.asyncio

from runtime import EmbeddedRedis, Keys, Producer
from runtime.observability.fleet import read_fleet, read_targets
from runtime.observability.timeseries import MetricsStore
from runtime.streams import stream_status
from runtime.supervisor.sampler import Sampler, worker_state
from runtime.supervisor.slot import Slot
from tests.conftest import make_settings
from tests.helpers import wait_until

GROUP = "workers"


def _sampler(url: str, keys: Keys, slots: list[Slot], **overrides: object) -> Sampler:
    settings = make_settings(url, keys.prefix, **overrides)
    return Sampler(
        keys,
        settings,
        instance="testhost:ab12",
        targets=["echo"],
        slots=lambda: slots,
        stopping=lambda: False,
    )


async def test_gauges_equal_stream_status_and_the_heartbeat_shows_a_busy_worker(
    redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    inbox = keys.inbox("echo")
    await client.xgroup_create(inbox, GROUP, id="0", mkstream=True)
    settings = make_settings(redis_url, keys.prefix)
    await Producer(client, keys=keys, settings=settings).enqueue_many("echo", range(5))
    slot = Slot(0, "testhost:ab12:0")
    await client.xreadgroup(GROUP, slot.consumer, {inbox: ">"}, count=2)  # 2 pending, lag 3
    process = await anyio.open_process([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        slot.process, slot.started_at, slot.ready_at, slot.runs = process, time.time(), 1.0, 4
        sampler = _sampler(redis_url, keys, [slot])
        [before] = await stream_status(client, keys, ["echo"])
        assert await sampler.sample(client)
        [after] = await stream_status(client, keys, ["echo"])

        gauges = {g.metric: g for g in await MetricsStore(client, keys).gauges()}
        assert {g.labels["target"] for g in gauges.values()} == {"echo"}
        assert gauges["inbox_lag"].value == before.lag == after.lag == 3
        assert gauges["inbox_pending"].value == before.pending == after.pending == 2
        age = gauges["inbox_oldest_pending_age"].value
        assert before.oldest_pending_age_s is not None and after.oldest_pending_age_s is not None
        assert before.oldest_pending_age_s - 1e-3 <= age <= after.oldest_pending_age_s + 1e-3

        [member] = await read_fleet(client, keys)
        assert (member.instance, member.host, member.targets) == (
            "testhost:ab12",
            "testhost",
            ["echo"],
        )
        [worker] = member.workers
        assert (worker.name, worker.pid, worker.state, worker.runs) == (
            slot.consumer, process.pid, "busy", 4,
        )  # fmt: skip
        assert worker.started_at == slot.started_at
        assert worker.rss_mb is not None and worker.rss_mb > 1
        assert await read_targets(client, keys) == ["echo"]
    finally:
        process.kill()
        await process.wait()
        await process.aclose()


def test_worker_states() -> None:
    slot = Slot(0, "h:i:0")
    assert worker_state(slot, stopping=False, pending=0) == "stopped"  # no process in the slot
    slot.process = object()  # type: ignore[assignment]
    assert worker_state(slot, stopping=False, pending=0) == "starting"
    slot.paused = "Redis is loading"
    assert worker_state(slot, stopping=False, pending=0) == "paused"
    slot.ready_at = 1.0
    assert worker_state(slot, stopping=False, pending=3) == "paused"
    slot.paused = None
    assert worker_state(slot, stopping=False, pending=0) == "ready"
    assert worker_state(slot, stopping=False, pending=3) == "busy"
    assert worker_state(slot, stopping=True, pending=3) == "draining"
    slot.retiring = True
    assert worker_state(slot, stopping=False, pending=0) == "draining"


@pytest.mark.timeout(120)
async def test_an_outage_skips_samples_logs_once_and_never_stops_the_sampler(
    own_server: tuple[EmbeddedRedis, str], keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    server, url = own_server
    sampler = _sampler(url, keys, [], observability__sample_interval_seconds=0.05)
    client = redis.asyncio.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)
    try:
        with caplog.at_level(logging.INFO, logger="runtime.supervisor.sampler"):
            async with anyio.create_task_group() as tg:
                await tg.start(sampler.run, client)
                await wait_until(lambda: _at_least(sampler, 2), what="two samples")
                await anyio.to_thread.run_sync(server.stop)

                async def failing() -> bool:
                    return sampler.failing

                await wait_until(failing, limit=30, what="a failed sample")
                taken = sampler.samples
                failures = _events(caplog, "sampler.failed")
                await anyio.to_thread.run_sync(server.start)
                await wait_until(lambda: _at_least(sampler, taken + 2), limit=60, what="samples")
                assert not sampler.failing
                tg.cancel_scope.cancel()
        assert failures == 1  # one line for the whole outage, however many samples failed
        assert _events(caplog, "sampler.failed") == 1
        assert _events(caplog, "sampler.recovered") == 1
        assert [m.instance for m in await read_fleet(client, keys)] == []  # left on the way out
    finally:
        await client.aclose()


async def _at_least(sampler: Sampler, count: int) -> bool:
    return sampler.samples >= count


def _events(caplog: pytest.LogCaptureFixture, event: str) -> int:
    return sum(1 for record in caplog.records if record.getMessage() == event)
