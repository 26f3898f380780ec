"""A full Redis pauses the fleet, it does not stop it: /readyz and /metrics say so, and the
supervisor's own Redis reads ride out error replies (issue 10, item 5, the supervisor's side).

Each test has a Redis server of its own (plain, no modules), since it changes its settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from runtime import EmbeddedRedis, Keys
from tests.conftest import PLAIN_BINARY, embedded_settings, free_port
from tests.helpers import scratch_list, wait_until
from tests.supervision import (
    FAST,
    Running,
    http_get,
    metric,
    producer,
    supervise,
    supervisors,
)

pytestmark = pytest.mark.anyio

APP = "tests.supervisor_apps:app"


@pytest.fixture
def runs() -> Iterator[list[Running]]:
    with supervisors() as started:
        yield started


@pytest.fixture
def own_url(tmp_path: Path) -> Iterator[str]:
    binary = PLAIN_BINARY if Path(PLAIN_BINARY).is_file() else None
    server = EmbeddedRedis(
        embedded_settings(tmp_path, modules=[], appendonly=False, server_binary=binary)
    )
    status = server.start()
    try:
        yield status.url
    finally:
        server.stop()


@pytest.fixture
async def own(own_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(own_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_readyz_is_503_while_redis_is_full_and_200_once_it_has_room(
    runs: list[Running], own_url: str, own: redis.asyncio.Redis, keys: Keys
) -> None:
    port = free_port()
    run = supervise(
        runs, own_url, keys.prefix, "-w", "2", "--http-port", str(port), sets=FAST, app=APP
    )
    await run.wait_for(r"worker\.ready slot=", 2)
    assert await http_get(port, "/readyz") == (200, "ready\n")
    # due in a moment: the workers' mover then has to write it to the inbox, which a full
    # Redis refuses (OOM) to every write
    task = await producer(own_url, keys, own).enqueue("probe", 0.01, delay=0.5)
    await own.config_set("maxmemory", "1")
    try:

        async def paused() -> bool:
            status, body = await http_get(port, "/readyz")
            return status == 503 and "paused" in body

        await wait_until(paused, limit=30, what="/readyz to say paused")
        _, body = await http_get(port, "/readyz")
        assert "OOM" in body, body
        assert await metric(port, 'agents_worker_workers{state="paused"}') == 2
        assert await http_get(port, "/healthz") == (200, "ok\n")  # paused, not dead
        assert run.proc.poll() is None
    finally:
        await own.config_set("maxmemory", "0")

    async def resumed() -> bool:
        return await metric(port, 'agents_worker_workers{state="paused"}') == 0

    await wait_until(resumed, limit=30, what="every worker to resume")
    assert await http_get(port, "/readyz") == (200, "ready\n")

    async def ran() -> bool:
        return task.task_id in await scratch_list(own, keys, "effects")

    await wait_until(ran, limit=30, what="the delayed entry to run")
    assert run.count("worker.crashed") == 0
    assert await run.stop() == 0


async def test_autoscaler_rides_out_error_replies(
    runs: list[Running], own_url: str, own: redis.asyncio.Redis, keys: Keys
) -> None:
    """Its backlog reads refused (here NOPERM: XLEN taken away by an ACL): the supervisor
    logs it once, keeps its workers, and scales again once the reads work."""
    sets = [*FAST, "supervisor.scale_interval_seconds=0.1"]
    run = supervise(
        runs, own_url, keys.prefix, "-w", "1", "--min-workers", "1", "--max-workers", "2",
        "-c", "2", sets=sets, app=APP,
    )  # fmt: skip
    await run.wait_for(r"worker\.ready slot=")
    await own.execute_command("ACL", "SETUSER", "default", "-xlen")
    try:
        await run.wait_for("autoscale.read_failed")
        seen = await _refusals(own)

        async def refused_again() -> bool:
            return await _refusals(own) > seen + 3

        await wait_until(refused_again, what="more refused reads")
    finally:
        await own.execute_command("ACL", "SETUSER", "default", "+xlen")
    await run.wait_for("autoscale.read_recovered")
    assert run.count("autoscale.read_failed") == 1  # once per episode, not once per read
    assert run.proc.poll() is None and run.count("worker.crashed") == 0
    await producer(own_url, keys, own).enqueue_many("probe", [1.0] * 20)
    await run.wait_for("autoscale.up")
    assert await run.stop() == 0


async def _refusals(client: redis.asyncio.Redis) -> int:
    """Commands the server refused for want of permission (ACL LOG groups repeats)."""
    return sum(int(entry["count"]) for entry in await client.acl_log())
