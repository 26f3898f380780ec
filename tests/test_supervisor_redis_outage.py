"""A Redis outage pauses the fleet, it never stops it (issue 10, follow-up of the review):
workers restarted while Redis is down or refusing work are not a crash loop, a worker waiting
for Redis before READY is not held to the ready timeout, and a worker spawned while the
supervisor stops gets its SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio

from runtime import Keys
from runtime.supervisor.slot import Slot, run_worker
from tests.conftest import PLAIN_BINARY, free_port
from tests.helpers import scratch_list, wait_until
from tests.supervision import FAST, Running, producer, supervise, supervisors

pytestmark = pytest.mark.anyio

APP = "tests.supervisor_apps:app"


@pytest.fixture
def runs() -> Iterator[list[Running]]:
    with supervisors() as started:
        yield started


class _Server:
    """A redis-server of the test's own, on a fixed port, to stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self._spawn()
        client = redis.asyncio.Redis.from_url(self.url)

        async def answers() -> bool:
            try:
                return bool(await client.ping())
            except redis.exceptions.ConnectionError:
                return False

        try:
            await wait_until(answers, what="redis-server to answer")
        finally:
            await client.aclose()

    def _spawn(self) -> None:
        binary = PLAIN_BINARY if Path(PLAIN_BINARY).exists() else "redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
async def server(tmp_path: Path) -> object:
    own = _Server(tmp_path)
    await own.start()
    try:
        yield own
    finally:
        own.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_workers_restarting_while_redis_is_down_never_stop_the_supervisor(
    runs: list[Running], server: _Server, keys: Keys
) -> None:
    """Each replacement died before READY (PING refused: exit 1) and counted as an early
    crash: with the default crash_loop_restarts=5 the supervisor gave up and stopped the
    fleet during the outage."""
    sets = [*FAST, "observability.log_level=DEBUG"]  # the restarts are logged at debug
    run = supervise(runs, server.url, keys.prefix, "-w", "2", sets=sets, app=APP)
    await run.wait_for(r"worker\.ready slot=", 2)
    server.stop()
    for pid in run.workers():  # they recycle (or crash) while Redis is down
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # more replacements than the crash loop allows (5 within 60 s) die waiting for Redis
    await run.wait_for(r"worker\.redis_unavailable slot=", 8, limit=90)
    assert run.proc.poll() is None
    assert run.count(r"worker\.paused slot=") == 2  # once per slot, not once per restart
    await server.start()
    await run.wait_for(r"worker\.ready slot=", 4, limit=60)
    client = redis.asyncio.Redis.from_url(server.url)
    try:
        task = await producer(server.url, keys, client).enqueue("probe", 0.01)

        async def ran() -> bool:
            return task.task_id in await scratch_list(client, keys, "effects")

        await wait_until(ran, limit=30, what="an entry to run once Redis is back")
    finally:
        await client.aclose()
    assert run.count(r"worker\.resumed slot=") == 2
    assert "giving up" not in run.output
    assert await run.stop() == 0


def _fake_worker(script: str) -> list[str]:
    """A process that speaks the worker's status lines as *script* says."""
    return [sys.executable, "-c", "import sys, time\n" + script]


async def test_a_worker_paused_before_ready_is_not_held_to_the_ready_timeout() -> None:
    """A worker riding out LOADING/OOM in its start-up was SIGKILLed after the ready timeout
    and counted as a crash."""
    script = (
        "print('PAUSED redis LOADING: loading its data set', flush=True)\n"
        "time.sleep(1.5)\n"  # longer than the ready timeout: Redis is loading
        "print('RESUMED', flush=True)\n"
        "print('READY 1', flush=True)\n"
    )
    slot = Slot(0, "c0")
    ended = await run_worker(
        slot, _fake_worker(script), b"{}", 0.5, lambda: None, stopping=lambda: False
    )
    assert not ended.late and ended.served is not None, ended.reason
    assert ended.status == 0


@pytest.mark.parametrize("last", ["sys.exit(75)", "import os; os.kill(os.getpid(), 9)"])
async def test_a_worker_ending_while_it_waits_for_redis_is_not_a_crash(last: str) -> None:
    script = "print('PAUSED redis UNREACHABLE: unreachable', flush=True)\n" + last
    slot = Slot(0, "c0")
    ended = await run_worker(
        slot, _fake_worker(script), b"{}", 30, lambda: None, stopping=lambda: False
    )
    assert ended.served is None and ended.redis_unavailable, ended.reason
    assert "waiting for Redis" in ended.reason


async def test_a_worker_spawned_while_stopping_gets_its_sigterm() -> None:
    """The stop's SIGTERMs go to the slots' processes; one still being spawned had none yet
    and ran until the supervisor's straggler kill (grace + 10 s), an unclean exit."""
    script = "print('READY 1', flush=True)\ntime.sleep(60)\n"
    with anyio.fail_after(30):
        ended = await run_worker(
            Slot(0, "c0"), _fake_worker(script), b"{}", 30, lambda: None, stopping=lambda: True
        )
    assert ended.status == -15, ended.reason  # SIGTERM (the fake has no handler for it)
