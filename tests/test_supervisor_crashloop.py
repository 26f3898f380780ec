"""The crash-loop rule counts only early deaths; a worker killed while starting is reported
as killed (issue 10, item 16)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import pytest
import redis.asyncio

from runtime import Keys
from runtime.dlq import DeadLetters
from tests.helpers import scratch_list, wait_until
from tests.supervision import FAST, Running, drained, producer, supervise, supervisors

pytestmark = pytest.mark.anyio

APP = "tests.supervisor_apps:app"


@pytest.fixture
def runs() -> Iterator[list[Running]]:
    with supervisors() as started:
        yield started


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_healthy_workers_killed_again_and_again_are_always_restarted(
    runs: list[Running], redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    """8 SIGKILLs of workers that served (an operator, the OOM killer) in well under the
    crash-loop window of 60 s, where 5 crashes make a crash loop: the supervisor restarts
    them every time and the work completes."""
    sets = [
        *FAST,
        "worker.lease_seconds=2",
        "worker.max_deliveries=100",
        "supervisor.crash_loop_min_uptime_seconds=1",
    ]
    run = supervise(runs, redis_url, keys.prefix, "-w", "2", "-c", "4", sets=sets, app=APP)
    await run.wait_for(r"worker\.ready slot=", 2)
    total = 400
    sent = await producer(redis_url, keys, client).enqueue_many("probe", [0.2] * total)
    for kill in range(8):
        os.kill(await _served_for(run, 1.5), signal.SIGKILL)
        await run.wait_for("worker.crashed", kill + 1)

    async def all_done() -> bool:
        return set(await scratch_list(client, keys, "effects")) >= {s.task_id for s in sent}

    await wait_until(all_done, limit=90, what=f"{total} effects")
    await wait_until(lambda: drained(client, keys, "probe"), limit=30, what="an empty inbox")
    assert await scratch_list(client, keys, "overlaps") == []
    assert await DeadLetters(client, keys=keys).size("probe") == 0
    assert run.proc.poll() is None and "giving up" not in run.output
    assert run.count(r"worker\.crashed .*reason=\"killed by SIGKILL\".*crash_loop=false") == 8
    assert await run.stop() == 0


async def test_an_entry_that_kills_its_worker_is_dead_lettered_not_a_crash_loop(
    runs: list[Running], redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    """With the default crash-loop rule (5 early crashes a minute) and max_deliveries (5), a
    poison entry that kills its worker at once, right after READY, every time: the worker
    died running work, so the supervisor restarts it until the delivery count dead-letters
    the entry, and the rest of the work is served."""
    run = supervise(runs, redis_url, keys.prefix, "-w", "1", "-c", "1", sets=FAST, app=APP)
    await run.wait_for(r"worker\.ready slot=")
    jobs = producer(redis_url, keys, client)
    poison = await jobs.enqueue("suicide", 3)
    sent = await jobs.enqueue_many("probe", [0.01] * 5)

    async def dead_lettered() -> bool:
        return await DeadLetters(client, keys=keys).size("suicide") == 1

    await wait_until(dead_lettered, limit=60, what="the poison entry dead-lettered")
    [letter] = await DeadLetters(client, keys=keys).read("suicide")
    assert letter.task_id == poison.task_id and letter.reason == "max_deliveries"
    assert (await scratch_list(client, keys, "started")).count(poison.task_id) == 5

    async def served() -> bool:
        return set(await scratch_list(client, keys, "effects")) >= {s.task_id for s in sent}

    await wait_until(served, limit=30, what="the other work served")
    assert run.proc.poll() is None and "giving up" not in run.output
    assert run.count(r"worker\.crashed .*crash_loop=false") == 5
    assert await run.stop() == 0


async def _served_for(run: Running, seconds: float) -> int:
    """The pid of a worker that reported READY at least *seconds* ago."""
    found: list[int] = []

    async def served() -> bool:
        now = time.monotonic()
        found[:] = [p for p in run.workers() if now - run.ready_seen.get(p, now) >= seconds]
        return bool(found)

    await wait_until(served, limit=30, what=f"a worker READY for {seconds} s")
    return found[0]


async def test_a_worker_dying_soon_after_ready_is_a_crash_loop(
    runs: list[Running], redis_url: str, key_prefix: str
) -> None:
    sets = [*FAST, "supervisor.crash_loop_restarts=3"]
    app = "tests.supervisor_apps:crash_after_ready_app"
    run = supervise(runs, redis_url, key_prefix, "-w", "1", sets=sets, app=app)
    assert await run.wait(60) == 1
    errors = [line for line in run.lines if line.startswith("Error: ")]
    assert len(errors) == 1, run.output
    assert "crashed 3 times within 60 s before or soon after READY" in errors[0]
    assert "exit status 4" in errors[0]
    assert "Traceback" not in run.output
    assert run.workers() == []


async def test_a_worker_killed_while_starting_is_reported_as_killed(
    runs: list[Running], redis_url: str, key_prefix: str
) -> None:
    sets = [*FAST, "supervisor.ready_timeout_seconds=60", "supervisor.crash_loop_restarts=100"]
    app = "tests.supervisor_apps:slow_start_app"
    run = supervise(runs, redis_url, key_prefix, "-w", "1", sets=sets, app=app, env=_SLOW)
    killed: set[int] = set()
    for kill in range(4):
        pid = await _new_worker(run, killed)
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
        await run.wait_for("worker.crashed", kill + 1)
    crashes = [line for line in run.lines if "worker.crashed" in line]
    assert all(re.search(r"status=-9 ", line) for line in crashes), crashes
    assert all('reason="killed by SIGKILL before READY"' in line for line in crashes), crashes
    assert "255" not in run.output and "Unknown child process" not in run.output


_SLOW = {"SLOW_START": "30"}


async def _new_worker(run: Running, old: set[int]) -> int:
    found: list[int] = []

    async def started() -> bool:
        found[:] = [p for p in run.workers() if p not in old]
        return bool(found)

    await wait_until(started, limit=30, what="a new worker process")
    return found[0]
