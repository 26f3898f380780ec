"""Two supervisors of one app on one host (blue/green, two Procfile lines): consumer names are
unique among live processes, and a busy HTTP port is one clear error (issue 10, item 3)."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import time
from collections.abc import Iterator

import anyio
import pytest
import redis.asyncio

from runtime import Keys
from runtime.dlq import DeadLetters
from runtime.worker.process import consumer_name
from tests.conftest import free_port
from tests.helpers import scratch_list, wait_until
from tests.supervision import (
    FAST,
    Running,
    drained,
    http_get,
    producer,
    supervise,
    supervisors,
)

pytestmark = pytest.mark.anyio

APP = "tests.supervisor_apps:app"
# A lease of 2 s: the check is about names, not about a loaded machine starving a renewal.
SETS = [
    *FAST,
    "worker.lease_seconds=2",
    "worker.max_deliveries=100",
    "supervisor.crash_loop_restarts=1000",
    "supervisor.crash_loop_min_uptime_seconds=0",
]


@pytest.fixture
def runs() -> Iterator[list[Running]]:
    with supervisors() as started:
        yield started


def test_consumer_names_are_unique_per_instance() -> None:
    host = socket.gethostname()
    assert consumer_name(0, "ab12cd34") == f"{host}:ab12cd34:0"
    assert consumer_name(3, "ab12cd34") == f"{host}:ab12cd34:3"
    assert consumer_name(0) != consumer_name(0)  # by hand: a fresh instance each time


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_two_supervisors_on_one_host_never_run_an_entry_twice_at_once(
    runs: list[Running], redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    """Two supervisors × 2 workers on one host, workers SIGKILLed among them under load: no
    entry runs while a live process still runs it, none is lost."""
    blue = supervise(runs, redis_url, keys.prefix, "-w", "2", "-c", "4", sets=SETS, app=APP)
    green = supervise(runs, redis_url, keys.prefix, "-w", "2", "-c", "4", sets=SETS, app=APP)
    await blue.wait_for(r"worker\.ready slot=", 2)
    await green.wait_for(r"worker\.ready slot=", 2)
    names = _consumers(blue) | _consumers(green)
    assert len(names) == 4  # no name shared between the two

    # every 5th entry runs long: a live worker holds old entries while others come and go
    total = 300
    seconds = [2.0 if i % 5 == 0 else 0.2 for i in range(total)]
    sent = await producer(redis_url, keys, client).enqueue_many("probe", seconds)
    kills = 0
    began = time.monotonic()
    while time.monotonic() - began < 8:
        await anyio.sleep(random.uniform(0.5, 0.9))
        victims = random.choice([blue, green]).workers()
        if victims:
            os.kill(random.choice(victims), signal.SIGKILL)
            kills += 1
    assert kills >= 6

    async def all_done() -> bool:
        return set(await scratch_list(client, keys, "effects")) >= {s.task_id for s in sent}

    await wait_until(all_done, limit=120, what=f"{total} effects")
    await wait_until(lambda: drained(client, keys, "probe"), limit=30, what="an empty inbox")
    assert await scratch_list(client, keys, "overlaps") == []  # never twice at once
    assert await DeadLetters(client, keys=keys).size("probe") == 0
    assert blue.count("worker.crashed") + green.count("worker.crashed") == kills
    assert await blue.stop() == 0
    assert await green.stop() == 0


def _consumers(run: Running) -> set[str]:
    return {m.group(1) for line in run.lines if (m := re.search(r"consumer=(\S+)", line))}


async def test_a_busy_http_port_is_one_clear_error(
    runs: list[Running], redis_url: str, key_prefix: str
) -> None:
    port = str(free_port())
    first = supervise(runs, redis_url, key_prefix, "-w", "1", "--http-port", port, app=APP)
    await first.wait_for(r"worker\.ready slot=")
    second = supervise(runs, redis_url, key_prefix, "-w", "1", "--http-port", port, app=APP)
    assert await second.wait(30) == 1
    errors = [line for line in second.lines if line.startswith("Error: ")]
    assert len(errors) == 1, second.output
    assert f"127.0.0.1:{port}" in errors[0]
    assert "supervisor.http_port" in errors[0] and "--http-port" in errors[0]
    assert "Traceback" not in second.output
    assert "worker.ready" not in second.output  # it started nothing
    assert await http_get(int(port), "/readyz") == (200, "ready\n")  # the first serves on
    assert await first.stop() == 0
