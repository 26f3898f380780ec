"""A chaos soak of the whole runtime: two supervisors × 3 workers on one host, plain chores and
agent runs in conversations, SIGKILL of workers and of one supervisor, a Redis restart.

Outcomes checked: zero chores lost, zero chores running twice at the same time (in two live
processes, or twice in one), every agent run terminal and completed, every conversation's
history in submit order with each turn once, the supervisor's workers gone soon after it was
killed, and the surviving supervisors drain and exit 0.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio
import redis.exceptions

from runtime import AgentClient, EmbeddedRedis, Keys, Producer
from runtime.sessions import AgentSession
from tests.conftest import OPENSSL_DIR, ROOT, make_settings, own_redis

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SETS = [
    "worker.lease_seconds=1",
    "worker.reclaim_interval_seconds=0.2",
    "worker.retry_backoff_seconds=0.01",
    "worker.retry_backoff_max_seconds=0.2",
    "worker.block_ms=500",
    "worker.max_deliveries=50",
    "worker.concurrency=4",
    "worker.shutdown_grace_seconds=10",
    "supervisor.restart_backoff_seconds=0.05",
    "supervisor.ready_timeout_seconds=30",
]
CHORES = 1500
CONVERSATIONS = 8
TURNS = 6


class Supervisor:
    """An `agents-worker run` process (3 workers), its output kept line by line."""

    def __init__(self, url: str, prefix: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_WORKER_")}
        env.pop("REDIS_URL", None)
        env["PYTHONPATH"] = str(ROOT)
        env["AGENTS_WORKER_REDIS_EMBEDDED_OPENSSL_DIR"] = OPENSSL_DIR
        argv = ["--redis-url", url, "--key-prefix", prefix]
        for item in SETS:
            argv += ["--set", item]
        argv += ["run", "tests.soak_app:app", "--workers", "3", "--http-port", "0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", *argv],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.seen: set[int] = set()
        """Every worker pid seen: orphans are killed at the end too."""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
        except (ValueError, OSError):
            # closed by close() while a worker that outlived its supervisor (draining, then
            # writing its last spans and samples) still held the pipe's other end
            return

    def tail(self) -> str:
        return "\n".join(self.lines[-60:])

    def ready_workers(self) -> int:
        return sum(1 for line in self.lines if "worker.ready slot=" in line)

    def workers(self) -> list[int]:
        """Pids of the live worker processes (children of the supervisor)."""
        pids = [pid for pid, parent in _processes().items() if parent == self.proc.pid]
        self.seen.update(pids)
        return pids

    def kill_all(self) -> None:
        for pid in {*self.workers(), *self.seen}:
            with _gone_ok():
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.close()

    def close(self) -> None:
        """Reap the process and close its output pipe."""
        self.proc.wait()
        self._reader.join(15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class _gone_ok:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        return kind is ProcessLookupError


def _processes() -> dict[int, int]:
    """Live (not zombie) process ids → parent ids."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            found[int(stat.parent.name)] = int(fields[1])
    return found


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    started: list[Supervisor] = []
    yield started
    for sup in started:
        sup.kill_all()


async def _until(check: Callable[[], Awaitable[bool]], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            if await check():
                return
        except (redis.exceptions.ConnectionError, redis.exceptions.ResponseError):
            pass  # Redis restarting
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await anyio.sleep(0.1)


def _texts(items: list[Any]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        content = item.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        out.append((str(item.get("role")), str(content)))
    return out


@pytest.mark.timeout(420)
async def test_chaos_soak(tmp_path: Path, key_prefix: str, supervisors: list[Supervisor]) -> None:
    server = own_redis(tmp_path / "redis", appendonly=True)
    url = server.start().url
    client = redis.asyncio.Redis.from_url(url)
    try:
        await _soak(server, url, client, Keys(key_prefix), supervisors)
    finally:
        for sup in supervisors:
            sup.kill_all()
        await client.aclose()
        server.stop()


async def _soak(
    server: EmbeddedRedis,
    url: str,
    client: redis.asyncio.Redis,
    keys: Keys,
    supervisors: list[Supervisor],
) -> None:
    # every write acknowledged is on disk: a SIGKILLed Redis loses nothing it acked
    await client.config_set("appendfsync", "always")
    settings = make_settings(url, keys.prefix)
    a, b = Supervisor(url, keys.prefix), Supervisor(url, keys.prefix)
    supervisors += [a, b]
    await _until(lambda: _ready(a, b), 60, "6 workers ready")

    sent = await Producer(client, keys=keys, settings=settings).enqueue_many(
        "chore", list(range(CHORES))
    )
    agents = AgentClient(client, keys=keys, settings=settings)
    runs: dict[str, list[str]] = {}
    for turn in range(TURNS):
        for conv in range(CONVERSATIONS):
            handle = await agents.run("soaker", f"c{conv} t{turn}", session_id=f"c{conv}")
            runs.setdefault(f"c{conv}", []).append(handle.run_id)

    kills = await _chaos(server, client, (url, keys.prefix), a, b, supervisors)

    async def all_done() -> bool:
        if int(await client.scard(keys.scratch("done"))) < CHORES:
            return False
        return all([await _terminal(agents, run_ids) for run_ids in runs.values()])

    try:
        await _until(all_done, 180, f"{CHORES} chores and every run terminal")
    except AssertionError:
        print(await _state(client, keys, agents, runs))
        for name, sup in zip("abc", supervisors, strict=False):
            print(f"--- supervisor {name} ---\n{sup.tail()}")
        raise
    done = {v.decode() for v in await client.smembers(keys.scratch("done"))}
    assert done == {s.task_id for s in sent}  # nothing lost
    overlaps = [v.decode() for v in await client.lrange(keys.scratch("overlaps"), 0, -1)]
    assert overlaps == [], f"ran twice at the same time (kills: {kills}): {overlaps[:5]}"
    for conv, run_ids in runs.items():
        await _check_conversation(client, keys, agents, conv, run_ids)
    survivors = [sup for sup in supervisors if sup.proc.poll() is None]
    assert len(survivors) == 2
    for sup in survivors:
        sup.proc.send_signal(signal.SIGTERM)
    for sup in survivors:
        status = await anyio.to_thread.run_sync(sup.proc.wait, 60)
        sup.close()
        assert status == 0, sup.tail()


async def _check_conversation(
    client: redis.asyncio.Redis, keys: Keys, agents: AgentClient, conv: str, run_ids: list[str]
) -> None:
    """Every run completed; the history holds each turn once, in submit order."""
    for run_id in run_ids:
        result = await agents.handle(run_id).status()
        assert result is not None
        assert result.status == "completed", (conv, run_id, result.error)
    history = _texts(await AgentSession(conv, client, keys=keys).get_items())
    expected = []
    for turn in range(TURNS):
        text = f"{conv} t{turn}"
        expected += [("user", text), ("assistant", f"reply to {text}")]
    assert history == expected, conv


async def _state(
    client: redis.asyncio.Redis, keys: Keys, agents: AgentClient, runs: dict[str, list[str]]
) -> str:
    """What is left: for a failure's message."""
    lines = [f"chores done: {await client.scard(keys.scratch('done'))} of {CHORES}"]
    for target in ("chore", "soaker"):
        inbox = keys.inbox(target)
        lines.append(
            f"{target}: inbox {await client.xlen(inbox)}, delayed "
            f"{await client.zcard(keys.delayed(target))}, dlq {await client.xlen(keys.dlq(target))}"
        )
        if await client.exists(inbox):
            lines.append(f"  groups: {await client.xinfo_groups(inbox)}")
    for conv, run_ids in runs.items():
        states = []
        for run_id in run_ids:
            result = await agents.handle(run_id).status()
            states.append("gone" if result is None else result.status)
        turns = await client.hgetall(keys.session_turns(conv))
        lines.append(f"{conv}: {states} turns={turns}")
    return "\n".join(lines)


async def _ready(*sups: Supervisor) -> bool:
    for sup in sups:
        if sup.proc.poll() is not None:
            raise AssertionError(f"supervisor exited:\n{sup.tail()}")
    return all(sup.ready_workers() >= 3 for sup in sups)


async def _terminal(agents: AgentClient, run_ids: list[str]) -> bool:
    for run_id in run_ids:
        result = await agents.handle(run_id).status()
        if result is None or result.status not in ("completed", "failed", "cancelled"):
            return False
    return True


async def _chaos(
    server: EmbeddedRedis,
    client: redis.asyncio.Redis,
    where: tuple[str, str],
    a: Supervisor,
    b: Supervisor,
    supervisors: list[Supervisor],
) -> list[str]:
    """SIGKILL workers, then supervisor *b* (its workers must go by themselves), start a
    third supervisor, restart Redis, and SIGKILL more workers."""
    kills: list[str] = []

    async def kill_worker(sup: Supervisor, name: str) -> None:
        victims = sup.workers()
        if victims:
            with _gone_ok():
                os.kill(random.choice(victims), signal.SIGKILL)
            kills.append(f"worker of {name}")

    await anyio.sleep(0.5)
    await kill_worker(a, "a")
    await anyio.sleep(0.5)
    await kill_worker(b, "b")
    await anyio.sleep(0.5)
    orphans = b.workers()
    assert orphans
    b.proc.kill()
    b.close()
    kills.append("supervisor b")
    await _until(lambda: _all_gone(orphans), 10, f"the workers of a killed supervisor {orphans}")
    c = Supervisor(*where)
    supervisors.append(c)
    await anyio.sleep(0.5)
    await _restart(server, client)
    kills.append("redis")
    for _ in range(3):
        await anyio.sleep(0.7)
        await kill_worker(a, "a")
        await kill_worker(c, "c")
    return kills


async def _all_gone(pids: list[int]) -> bool:
    live = _processes()
    return not any(pid in live for pid in pids)


async def _restart(server: EmbeddedRedis, client: redis.asyncio.Redis) -> None:
    """SIGKILL the server and start it again on the same port and data (AOF, fsync always)."""
    info = await client.info("server")
    os.kill(int(info["process_id"]), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while int(info["process_id"]) in _processes():
        assert time.monotonic() < deadline
        await anyio.sleep(0.05)
    await anyio.sleep(0.5)  # the fleet sees Redis gone for a moment
    await anyio.to_thread.run_sync(server.start)

    async def durable() -> bool:  # the client's pooled connection died with the server
        return bool(await client.config_set("appendfsync", "always"))

    await _until(durable, 10, "the restarted server")
