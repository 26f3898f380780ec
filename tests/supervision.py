"""Helpers of the tests that run `agents-worker run` as real processes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import redis.asyncio

from runtime import Keys, Producer
from tests.conftest import OPENSSL_DIR, ROOT, make_settings

FAST = [
    "worker.lease_seconds=1",
    "worker.reclaim_interval_seconds=0.2",
    "worker.retry_backoff_seconds=0.01",
    "worker.block_ms=500",
    "supervisor.restart_backoff_seconds=0.05",
    "supervisor.ready_timeout_seconds=20",
]


class Running:
    """An `agents-worker run` process whose output is collected line by line."""

    def __init__(
        self, args: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None
    ) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_WORKER_")}
        environ.pop("REDIS_URL", None)
        environ["PYTHONPATH"] = str(ROOT)
        environ["AGENTS_WORKER_REDIS_EMBEDDED_OPENSSL_DIR"] = OPENSSL_DIR
        environ.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", *args],
            cwd=cwd,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.ready_seen: dict[int, float] = {}
        """Worker pid → when its supervisor's ``worker.ready`` line was read (monotonic)."""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            ready = re.search(r"worker\.ready slot=\d+ pid=(\d+)", line)
            if ready:
                self.ready_seen[int(ready.group(1))] = time.monotonic()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        return sum(1 for line in self.lines if re.search(pattern, line))

    async def wait_for(self, pattern: str, n: int = 1, limit: float = 30) -> None:
        began = time.monotonic()
        while self.count(pattern) < n:
            if self.proc.poll() is not None or time.monotonic() - began > limit:
                raise AssertionError(f"no {n}× {pattern!r} in:\n{self.output[-3000:]}")
            await anyio.sleep(0.05)

    def workers(self) -> list[int]:
        """Pids of the worker processes (children of the supervisor)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
        return pids

    async def stop(self, limit: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait(limit)

    async def wait(self, limit: float = 30) -> int:
        began = time.monotonic()
        while self.proc.poll() is None:
            if time.monotonic() - began > limit:
                self.proc.kill()
                raise AssertionError(f"did not exit within {limit} s:\n{self.output[-3000:]}")
            await anyio.sleep(0.05)
        self._close()
        return self.proc.returncode

    def _close(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        for pid in self.workers():
            os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()


@contextlib.contextmanager
def supervisors() -> Iterator[list[Running]]:
    """A list to put `Running` processes in; each is killed (with its workers) at the end.

    Each test module makes it its fixture: ``runs``.
    """
    started: list[Running] = []
    try:
        yield started
    finally:
        for run in started:
            run.kill()


def supervise(
    runs: list[Running], url: str | None, prefix: str, *args: str, sets: list[str] = FAST,
    app: str = "tests.apps:app", cwd: Path = ROOT, env: dict[str, str] | None = None,
) -> Running:  # fmt: skip
    argv = ["--key-prefix", prefix]
    if url is not None:
        argv += ["--redis-url", url]
    for item in sets:
        argv += ["--set", item]
    run = Running([*argv, "run", app, "--http-port", "0", *args], cwd=cwd, env=env)
    runs.append(run)
    return run


def producer(url: str, keys: Keys, client: redis.asyncio.Redis) -> Producer:
    return Producer(client, keys=keys, settings=make_settings(url, keys.prefix))


async def metric(port: int, name: str) -> float:
    """The value of *name* (its first sample) on the supervisor's ``/metrics``."""
    _, body = await http_get(port, "/metrics")
    for line in body.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


async def http_get(port: int, path: str) -> tuple[int, str]:
    """GET ``http://127.0.0.1:<port><path>`` in a thread: (status, body)."""
    return await anyio.to_thread.run_sync(_get, port, path)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def drained(client: redis.asyncio.Redis, keys: Keys, target: str) -> bool:
    pending = await client.xpending(keys.inbox(target), "workers")
    return int(await client.xlen(keys.inbox(target))) == 0 and pending["pending"] == 0


def alive(pid: int) -> bool:
    """Is *pid* a live process (a zombie waiting to be reaped is not)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
