"""What every benchmark driver shares: the worker process, the two measurements, the output.

A driver (``benchmarks/peers/*.py``) runs in the virtualenv of the queue it measures and
imports only this module, the standard library, redis-py and that queue, so a peer that pins
another redis-py (arq) can have a virtualenv of its own. The harness starts one driver per
peer and reads the JSON object it prints last:

    python -m benchmarks.peers.bare throughput --url redis://127.0.0.1:6400/0 --n 2000

A driver runs the peer's worker the way the peer's own documentation runs one (its CLI, in a
subprocess) and measures:

- ``throughput``: N tasks enqueued with the peer's own producer API (its batch API where it
  has one), then its worker started; tasks/s is timed from the first task seen completed to
  the last (the queue empty, nothing pending, polled every 5 ms), so the worker's start-up
  does not count and the handlers stay no-ops. The enqueue rate is reported beside it.
- ``latency``: once its worker is ready and warmed up, one task enqueued every 1/rate s on an
  absolute schedule, one call at a time; the handler's first statement takes
  ``time.time() - payload["t"]`` and pushes it on a Redis list.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

ENV_URL = "BENCH_REDIS_URL"
ENV_CONCURRENCY = "BENCH_CONCURRENCY"
LATENCY_KEY = "bench:latency"
CONCURRENCY = 100
"""Tasks one worker process runs at once, for every peer that has such a setting."""

_POLL = 0.005
_recorder: redis.asyncio.Redis | None = None


# --- handler side -------------------------------------------------------------------------
async def record_latency(sent_at: float) -> None:
    """Push ``now - sent_at`` (seconds) on the latency list; call it first thing in a handler."""
    elapsed = time.time() - sent_at
    global _recorder
    if _recorder is None:
        _recorder = redis.asyncio.Redis.from_url(os.environ[ENV_URL])
    await _recorder.rpush(LATENCY_KEY, repr(elapsed))


def concurrency() -> int:
    return int(os.environ.get(ENV_CONCURRENCY, CONCURRENCY))


# --- driver side --------------------------------------------------------------------------
class Peer(ABC):
    """One queue under test: how to run its worker, enqueue, and see what is left to do."""

    name: str = ""
    library: str = ""
    """Distribution name whose version is reported ("" for none)."""
    batch = 1000
    """Tasks per call of :meth:`enqueue_many`."""
    ready_marker: str | None = None
    """A line the worker writes (stdout or stderr) once per process when it serves."""
    notes = ""
    latency_target = False
    """Whether :meth:`enqueue_one` targets the handler that records latency."""

    def __init__(self, url: str, workers: int) -> None:
        self.url = url
        self.workers = workers
        self.client = redis.asyncio.Redis.from_url(url)

    @abstractmethod
    def worker_command(self) -> list[str]:
        """The command that runs the peer's worker(s), from the repository root."""

    async def open(self) -> None:
        """Connect the producer (before the worker starts)."""
        return None

    async def close(self) -> None:
        await self.client.aclose()

    @abstractmethod
    async def enqueue_one(self, payload: dict[str, Any]) -> None:
        """Enqueue one task for the no-op handler (or the latency one in latency runs)."""

    @abstractmethod
    async def enqueue_many(self, payloads: list[dict[str, Any]]) -> None:
        """Enqueue tasks for the no-op handler."""

    @abstractmethod
    async def remaining(self) -> int:
        """Tasks enqueued and not yet acknowledged."""

    def use_latency_target(self) -> None:
        """Make :meth:`enqueue_one` target the handler that records latency."""
        self.latency_target = True


async def gather_chunked(
    enqueue: Callable[[T], Awaitable[object]], items: Sequence[T], width: int = CONCURRENCY
) -> None:
    """Run ``enqueue(item)`` for every item, *width* at a time (producers without batch API)."""
    for start in range(0, len(items), width):
        await asyncio.gather(*(enqueue(item) for item in items[start : start + width]))


class WorkerProcess:
    """The peer's worker command in its own session, its output in a log file."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    async def wait_for(self, marker: str, count: int, within: float) -> None:
        """Wait until *marker* appears *count* times in the output."""
        deadline = time.monotonic() + within
        while self.output().count(marker) < count:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready after {within:g} s:\n{self.tail()}")
            await asyncio.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the command (which passes it on); SIGKILL to its session after *timeout*."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._out.close()


def payloads(count: int) -> list[dict[str, Any]]:
    now = time.time()
    return [{"t": now} for _ in range(count)]


async def measure_throughput(
    peer: Peer, n: int, start_worker: Callable[[], WorkerProcess]
) -> dict[str, Any]:
    """Enqueue *n* tasks, then start the worker and time the drain.

    The clock runs from the first completion seen to the last (polled every 5 ms), so the
    worker's start-up is not counted; tasks/s = tasks completed in that window / its length.
    """
    began = time.perf_counter()
    for start in range(0, n, peer.batch):
        await peer.enqueue_many(payloads(min(peer.batch, n - start)))
    enqueue_s = time.perf_counter() - began
    queued = await peer.remaining()
    if queued != n:
        raise RuntimeError(f"{queued} tasks queued after enqueuing {n}")

    spawned = time.perf_counter()
    worker = start_worker()
    deadline = spawned + 60 + n / 200
    first: tuple[float, int] | None = None
    while True:
        left = await peer.remaining()
        now = time.perf_counter()
        if first is None and left < n:
            first = (now, left)
        if left <= 0:
            break
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited ({worker.proc.returncode}):\n{worker.tail()}")
        if now > deadline:
            raise RuntimeError(f"{left} of {n} tasks still not done after {now - spawned:.0f} s")
        await asyncio.sleep(_POLL)
    assert first is not None
    window = now - first[0]
    if window <= 0:
        raise RuntimeError(f"all {n} tasks ran between two polls: raise --n")
    return {
        "n": n,
        "tasks_per_s": round(first[1] / window, 1),
        "timed_tasks": first[1],
        "drain_s": round(window, 4),
        "start_to_done_s": round(now - spawned, 4),
        "enqueue_s": round(enqueue_s, 4),
        "enqueue_per_s": round(n / enqueue_s, 1),
    }


async def _paced(peer: Peer, rate: float, count: int) -> float:
    """Enqueue *count* tasks at *rate*/s on an absolute schedule; return the achieved rate."""
    interval = 1.0 / rate
    began = time.perf_counter()
    for i in range(count):
        delay = began + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await peer.enqueue_one({"t": time.time()})
    elapsed = time.perf_counter() - began
    return count / elapsed if elapsed > 0 else float("inf")


async def _collect(client: redis.asyncio.Redis, key: str, count: int, within: float) -> list[float]:
    deadline = time.monotonic() + within
    while (got := await client.llen(key)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {got} of {count} tasks started within {within:g} s")
        await asyncio.sleep(0.05)
    raw = await client.lrange(key, 0, -1)
    await client.delete(key)
    return [float(v) * 1000 for v in raw]


async def measure_latency(peer: Peer, rate: float, seconds: float) -> dict[str, Any]:
    key = LATENCY_KEY
    peer.use_latency_target()
    warmup = max(10, int(rate * 0.5))
    await _paced(peer, rate, warmup)
    await _collect(peer.client, key, warmup, 30)

    count = max(1, int(rate * seconds))
    achieved = await _paced(peer, rate, count)
    samples = sorted(await _collect(peer.client, key, count, 30))
    return {
        "count": count,
        "rate": rate,
        "achieved_rate": round(achieved, 1),
        "p50_ms": round(percentile(samples, 50), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "mean_ms": round(statistics.fmean(samples), 3),
        "max_ms": round(samples[-1], 3),
    }


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def library_version(dist: str) -> str | None:
    if not dist:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


async def _drive(peer: Peer, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        ENV_URL: args.url,
        ENV_CONCURRENCY: str(args.concurrency),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    workers: list[WorkerProcess] = []

    def start_worker() -> WorkerProcess:
        workers.append(WorkerProcess(peer.worker_command(), env, log))
        return workers[-1]

    try:
        await peer.open()
        if args.mode == "throughput":
            result = await measure_throughput(peer, args.n, start_worker)
        else:
            worker = start_worker()
            if peer.ready_marker:
                await worker.wait_for(peer.ready_marker, peer.workers, 60)
            result = await measure_latency(peer, args.rate, args.seconds)
        for worker in workers:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited during the run:\n{worker.tail()}")
    finally:
        await peer.close()
        for worker in workers:
            worker.stop()
    return result


def main(peer_class: type[Peer]) -> None:
    """Command line of a driver; prints one JSON object (the last line of its output)."""
    parser = argparse.ArgumentParser(description=f"benchmark driver: {peer_class.name}")
    parser.add_argument("mode", choices=["throughput", "latency"])
    parser.add_argument("--url", default=os.environ.get(ENV_URL), help=f"default: ${ENV_URL}")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args()
    if not args.url:
        parser.error(f"give --url or set {ENV_URL}")
    os.environ[ENV_URL] = args.url
    os.environ[ENV_CONCURRENCY] = str(args.concurrency)
    peer = peer_class(args.url, args.workers)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        log = Path(tmp) / "worker.log"
        try:
            result = asyncio.run(_drive(peer, args, log))
        except Exception as exc:
            sys.stderr.write(f"{peer.name}: {exc}\n")
            print(json.dumps({"error": str(exc).splitlines()[0] if str(exc) else repr(exc)}))
            sys.exit(1)
    result.update(
        name=peer.name,
        version=library_version(peer.library),
        workers=peer.workers,
        notes=peer.notes,
    )
    print(json.dumps(result))
