"""A supervisor killed with SIGKILL: its workers exit by themselves, release what they held,
and the next supervisor runs every entry, none twice at once (issue 10, item 15)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import pytest
import redis.asyncio

from runtime import Keys
from runtime.dlq import DeadLetters
from tests.helpers import scratch_list, wait_until
from tests.supervision import FAST, Running, alive, drained, producer, supervise, supervisors

pytestmark = pytest.mark.anyio

APP = "tests.supervisor_apps:app"


@pytest.fixture
def runs() -> Iterator[list[Running]]:
    with supervisors() as started:
        yield started


@pytest.fixture
def orphans() -> Iterator[list[int]]:
    """Pids to SIGKILL at the end, should a test fail while they still run."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_workers_exit_and_release_when_their_supervisor_is_killed(
    runs: list[Running],
    orphans: list[int],
    redis_url: str,
    keys: Keys,
    client: redis.asyncio.Redis,
) -> None:
    # A lease of 60 s: an entry the dead supervisor's workers did not release would wait a
    # minute; a grace of 60 s: a worker that waited for its handlers would outlive the test.
    sets = [
        *FAST,
        "worker.lease_seconds=60",
        "worker.shutdown_grace_seconds=60",
        "worker.max_deliveries=100",
    ]
    first = supervise(runs, redis_url, keys.prefix, "-w", "2", "-c", "4", sets=sets, app=APP)
    await first.wait_for(r"worker\.ready slot=", 2)
    orphans += first.workers()
    assert len(orphans) == 2
    total = 120
    seconds = [5.0 if i % 10 == 0 else 0.2 for i in range(total)]  # some run long
    sent = await producer(redis_url, keys, client).enqueue_many("probe", seconds)

    async def busy() -> bool:
        return len(await scratch_list(client, keys, "started")) >= 20

    await wait_until(busy, limit=60, what="20 starts")
    first.proc.kill()  # SIGKILL: the supervisor cannot tell its workers anything

    async def gone() -> bool:
        return not any(alive(pid) for pid in orphans)

    await wait_until(gone, limit=10, what="the dead supervisor's workers to exit")
    # released: what they held is idle for a full lease, for any worker to take at once
    pending = await client.xpending_range(keys.inbox("probe"), "workers", "-", "+", 1000)
    assert pending, "the workers held nothing: the test proves nothing"
    assert all(p["time_since_delivered"] >= 60_000 for p in pending), pending

    second = supervise(runs, redis_url, keys.prefix, "-w", "2", "-c", "4", sets=sets, app=APP)

    async def all_done() -> bool:
        return set(await scratch_list(client, keys, "effects")) >= {s.task_id for s in sent}

    await wait_until(all_done, limit=90, what=f"{total} effects")
    await wait_until(lambda: drained(client, keys, "probe"), limit=30, what="an empty inbox")
    assert await scratch_list(client, keys, "overlaps") == []  # never twice at once
    assert await DeadLetters(client, keys=keys).size("probe") == 0
    assert await second.stop() == 0


@pytest.mark.timeout(60)
async def test_a_worker_with_a_blocked_event_loop_exits_when_its_supervisor_is_killed(
    runs: list[Running],
    orphans: list[int],
    redis_url: str,
    keys: Keys,
    client: redis.asyncio.Redis,
) -> None:
    """A handler that blocks the event loop cannot stop the worker from exiting."""
    first = supervise(runs, redis_url, keys.prefix, "-w", "1", app=APP)
    await first.wait_for(r"worker\.ready slot=")
    orphans += first.workers()
    await producer(redis_url, keys, client).enqueue("hog", 120)

    async def hogging() -> bool:
        return len(await scratch_list(client, keys, "started")) == 1

    await wait_until(hogging, what="the loop to be blocked")
    first.proc.kill()

    async def gone() -> bool:
        return not any(alive(pid) for pid in orphans)

    await wait_until(gone, limit=10, what="the worker to exit")


async def test_sighup_the_parent_death_signal_stops_a_worker_as_an_orphan(
    runs: list[Running], redis_url: str, key_prefix: str
) -> None:
    """SIGHUP (what Linux sends a worker when its supervisor dies, should the liveness pipe
    not close) takes the orphan's way out: stop at once, release, exit."""
    sets = [*FAST, "worker.shutdown_grace_seconds=60"]
    run = supervise(runs, redis_url, key_prefix, "-w", "1", sets=sets, app=APP)
    await run.wait_for(r"worker\.ready slot=")
    [pid] = run.workers()
    os.kill(pid, signal.SIGHUP)
    await run.wait_for("worker.orphaned")
    await run.wait_for("worker.crashed")  # its supervisor, alive after all, starts another
    await run.wait_for(r"worker\.ready slot=", 2)
    assert await run.stop() == 0
