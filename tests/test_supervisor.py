"""`agents-worker run` as real processes: SIGKILL chaos, restarts, crash loops, recycling,
autoscaling and graceful shutdown."""

from __future__ import annotations

import os
import random
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio

from runtime import Keys
from runtime.dlq import DeadLetters
from tests.helpers import scratch_list, wait_until, worker_process
from tests.supervision import FAST, Running, drained, producer, supervise, supervisors

pytestmark = pytest.mark.anyio


@pytest.fixture
def runs() -> Iterator[list[Running]]:
    with supervisors() as started:
        yield started


@pytest.mark.timeout(240)
async def test_sigkill_chaos_loses_nothing(
    runs: list[Running], redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    """3 workers, a random one SIGKILLed about every second for 12 s: every entry's effect is
    recorded, and duplicates come only from entries in flight at a kill."""
    concurrency = 8
    sets = [*FAST, "worker.max_deliveries=100", "supervisor.crash_loop_restarts=1000"]
    run = supervise(runs, redis_url, keys.prefix, "-w", "3", "-c", str(concurrency), sets=sets)
    await run.wait_for(r"worker\.ready slot=", 3)
    total = 3000
    sent = await producer(redis_url, keys, client).enqueue_many("slow", [0.1] * total)
    kills = 0
    began = time.monotonic()
    while time.monotonic() - began < 12:
        await anyio.sleep(random.uniform(0.7, 1.3))
        victims = run.workers()
        if victims:
            os.kill(random.choice(victims), signal.SIGKILL)
            kills += 1
    assert kills >= 9

    async def all_done() -> bool:
        return int(await client.llen(keys.scratch("effects"))) >= total

    await wait_until(all_done, limit=90, what=f"{total} effects")
    await wait_until(lambda: drained(client, keys, "slow"), limit=30, what="an empty inbox")
    effects = await scratch_list(client, keys, "effects")
    assert set(effects) == {s.task_id for s in sent}  # nothing lost
    duplicates = len(effects) - len(set(effects))
    assert duplicates <= kills * concurrency  # only what was in flight at a kill
    assert await DeadLetters(client, keys=keys).size("slow") == 0
    assert run.count("worker.crashed") == kills
    assert await run.stop() == 0


async def test_crashing_entry_is_dead_lettered_after_max_deliveries(
    runs: list[Running], redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    sets = [*FAST, "worker.max_deliveries=3", "supervisor.crash_loop_restarts=100"]
    run = supervise(runs, redis_url, keys.prefix, "-w", "1", "-c", "2", sets=sets)
    await run.wait_for(r"worker\.ready slot=")
    poison = await producer(redis_url, keys, client).enqueue("crash")
    letters = DeadLetters(client, keys=keys)

    async def dead_lettered() -> bool:
        return await letters.size("crash") == 1

    await wait_until(dead_lettered, limit=30, what="the poison entry in the DLQ")
    assert await scratch_list(client, keys, "started") == [poison.task_id] * 3
    [letter] = await letters.read("crash")
    assert letter.reason == "max_deliveries"
    assert letter.detail.startswith("delivered 4 times without an outcome")
    assert letter.error == "the worker running it died or hung"
    assert run.count("worker.crashed") == 3
    done = await producer(redis_url, keys, client).enqueue("echo", 1)  # the fleet goes on
    await wait_until(lambda: _has(client, keys, done.task_id), what="work after the poison")
    assert await run.stop() == 0


async def _has(client: redis.asyncio.Redis, keys: Keys, task_id: str) -> bool:
    return task_id in await scratch_list(client, keys, "effects")


async def test_killed_worker_is_restarted(
    runs: list[Running], redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    run = supervise(runs, redis_url, keys.prefix, "-w", "2")
    await run.wait_for(r"worker\.ready slot=", 2)
    before = sorted(run.workers())
    os.kill(before[0], signal.SIGKILL)
    await run.wait_for("worker.crashed")
    await run.wait_for(r"worker\.ready slot=", 3)
    after = sorted(run.workers())
    assert len(after) == 2 and before[0] not in after and before[1] in after
    assert await run.stop() == 0
    assert "supervisor.stopped clean=true" in run.output


async def test_crash_loop_stops_the_supervisor(
    runs: list[Running], redis_url: str, keys: Keys
) -> None:
    sets = [*FAST, "supervisor.crash_loop_restarts=3"]
    run = supervise(
        runs, redis_url, keys.prefix, "-w", "1", sets=sets, app="tests.apps:crashing_app"
    )
    assert await run.wait(30) == 1
    assert "worker processes crashed 3 times within 60 s" in run.output
    assert "Error: " in run.output and "Traceback" not in run.output
    assert run.workers() == []


async def test_worker_recycled_after_max_entries(
    runs: list[Running], redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    sets = [*FAST, "worker.max_entries=5"]
    run = supervise(runs, redis_url, keys.prefix, "-w", "1", "-c", "1", sets=sets)
    await run.wait_for(r"worker\.ready slot=")
    sent = await producer(redis_url, keys, client).enqueue_many("echo", range(23))

    async def done() -> bool:
        return len(await scratch_list(client, keys, "effects")) >= 23

    await wait_until(done, limit=60, what="23 effects")
    assert sorted(await scratch_list(client, keys, "effects")) == sorted(s.task_id for s in sent)
    assert run.count("worker.recycled") >= 4
    assert run.count("worker.crashed") == 0
    assert await run.stop() == 0


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


async def test_autoscaling_up_under_backlog_and_down_when_idle(
    runs: list[Running], redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    sets = [
        *FAST,
        "supervisor.scale_interval_seconds=0.2",
        "supervisor.scale_down_after_seconds=1",
    ]
    run = supervise(
        runs, redis_url, keys.prefix, "-w", "1", "--min-workers", "1", "--max-workers", "3",
        "-c", "2",
        sets=sets,
    )  # fmt: skip
    await run.wait_for(r"worker\.ready slot=", 1)
    assert len(run.workers()) == 1
    await producer(redis_url, keys, client).enqueue_many("slow", [0.3] * 60)
    await run.wait_for("autoscale.up", 2)
    await run.wait_for(r"worker\.ready slot=", 3)
    assert len(run.workers()) == 3

    async def done() -> bool:
        return len(await scratch_list(client, keys, "effects")) >= 60

    await wait_until(done, limit=60, what="60 effects")
    await run.wait_for("autoscale.down", 2, limit=20)

    async def one_worker() -> bool:
        return len(run.workers()) == 1

    await wait_until(one_worker, limit=15, what="one worker left")
    assert await run.stop() == 0


async def test_sigterm_drains_slow_handlers(
    runs: list[Running], redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    # a grace far longer than the test may take: the drain ends when the handlers do
    sets = [*FAST, "worker.shutdown_grace_seconds=600"]
    run = supervise(runs, redis_url, keys.prefix, "-w", "1", "-c", "4", sets=sets)
    await run.wait_for(r"worker\.ready slot=")
    await producer(redis_url, keys, client).enqueue_many("slow", [1.5] * 4)

    async def started() -> bool:
        return len(await scratch_list(client, keys, "started")) == 4

    await wait_until(started, what="four starts")
    assert await run.stop() == 0
    assert len(await scratch_list(client, keys, "effects")) == 4  # they finished
    assert await drained(client, keys, "slow")  # nothing stranded


async def test_embedded_redis_when_no_url(
    runs: list[Running], tmp_path: Path, key_prefix: str
) -> None:
    run = supervise(runs, None, key_prefix, "-w", "1", cwd=tmp_path)
    await run.wait_for(r"worker\.ready slot=")
    assert "No Redis URL configured: starting the embedded Redis Stack." in run.output
    assert (tmp_path / ".agents-worker" / "redis" / "server.json").is_file()
    assert await run.stop() == 0
    assert not (tmp_path / ".agents-worker" / "redis" / "server.json").exists()


async def test_bad_app_is_one_clear_error(
    runs: list[Running], redis_url: str, key_prefix: str
) -> None:
    run = supervise(runs, redis_url, key_prefix, app="tests.nope:app")
    assert await run.wait(20) == 1
    assert "Error: cannot import 'tests.nope' for app 'tests.nope:app'" in run.output
    assert "Traceback" not in run.output


async def test_health_endpoints(runs: list[Running], redis_url: str, key_prefix: str) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["--key-prefix", key_prefix, "--redis-url", redis_url]
    for item in FAST:
        argv += ["--set", item]
    run = Running([*argv, "run", "tests.apps:app", "-w", "2", "--http-port", str(port)])
    runs.append(run)
    await run.wait_for(r"worker\.ready slot=", 2)

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    assert get("/healthz") == (200, "ok\n")
    assert get("/readyz") == (200, "ready\n")
    assert get("/nope")[0] == 404
    assert _metric(port, "agents_worker_workers") == 2
    assert _metric(port, "agents_worker_worker_restarts_total") == 0
    assert await run.stop() == 0


async def test_worker_recycled_above_rss_limit(
    runs: list[Running], redis_url: str, key_prefix: str
) -> None:
    sets = [*FAST, "worker.max_rss_mb=1"]  # every worker is above 1 MiB
    run = supervise(runs, redis_url, key_prefix, "-w", "1", sets=sets)
    await run.wait_for("worker.recycled", 2, limit=20)
    assert "resident memory" in run.output
    assert run.count("worker.crashed") == 0
    assert await run.stop() == 0, run.output[-3000:]


async def test_second_signal_stops_a_worker_at_once(
    redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    worker = worker_process("tests.apps:app", redis_url, keys, WORKER_SHUTDOWN_GRACE_SECONDS="60")
    try:
        await producer(redis_url, keys, client).enqueue("slow", 30)

        async def started() -> bool:
            return len(await scratch_list(client, keys, "started")) == 1

        await wait_until(started, what="the slow entry to start")
        worker.send_signal(signal.SIGTERM)  # drain: would wait up to 60 s
        await anyio.sleep(0.3)
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)

        async def exited() -> bool:
            return worker.poll() is not None

        await wait_until(exited, limit=5, what="the worker to exit at once")
        assert worker.returncode == 130
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
