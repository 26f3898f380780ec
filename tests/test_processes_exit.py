"""How a worker process ends (issue 10, follow-up of the review): a plain handler's thread
still running cannot keep a stopped worker alive, and a Redis it cannot reach at start-up ends
it with status 75 (EX_TEMPFAIL), which its supervisor does not count as a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import msgspec
import pytest
import redis.asyncio

from runtime import Keys
from runtime.settings import Settings
from runtime.worker.process import EXIT_REDIS_UNAVAILABLE
from tests.conftest import ROOT, free_port, make_settings
from tests.supervision import producer

pytestmark = pytest.mark.anyio


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes to kill at the end, should a test fail while they run."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _start(workers: list[subprocess.Popen[bytes]], settings: Settings) -> subprocess.Popen[bytes]:
    """A worker process of tests.apps:app as the supervisor starts one (settings on stdin)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_WORKER_")}
    environ["PYTHONPATH"] = str(ROOT)
    command = ["-m", "runtime.worker", "--app", "tests.apps:app", "--settings-stdin"]
    proc = subprocess.Popen(
        [sys.executable, *command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
        env=environ,
    )  # fmt: skip
    workers.append(proc)
    assert proc.stdin is not None
    proc.stdin.write(msgspec.json.encode(settings) + b"\n")
    proc.stdin.flush()
    return proc


def _line(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().decode().strip()


async def test_a_stopped_worker_exits_though_a_plain_handler_still_runs(
    workers: list[subprocess.Popen[bytes]], redis_url: str, keys: Keys,
    client: redis.asyncio.Redis,
) -> None:  # fmt: skip
    """anyio's worker threads are not daemons: the process waited for the handler's thread
    (here two minutes) after its event loop had returned, so a recycled slot never restarted."""
    settings = make_settings(redis_url, keys.prefix, worker__shutdown_grace_seconds="0.2")
    proc = _start(workers, settings)
    assert _line(proc).startswith("READY")
    await producer(redis_url, keys, client).enqueue("blocking", 120)
    assert _line(proc) == "BUSY"  # the handler's thread runs
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # the handler was cancelled after the grace period: its entry was released, not lost
    assert int(await client.xlen(keys.inbox("blocking"))) == 1


def test_a_worker_that_cannot_reach_redis_at_start_up_exits_75(
    workers: list[subprocess.Popen[bytes]], keys: Keys
) -> None:
    """It exited 1, like a broken app, and the supervisor counted it as a crash."""
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    proc = _start(workers, make_settings(nobody, keys.prefix))
    line = _line(proc)
    assert line.startswith("PAUSED redis UNREACHABLE"), line
    assert proc.wait(timeout=60) == EXIT_REDIS_UNAVAILABLE
