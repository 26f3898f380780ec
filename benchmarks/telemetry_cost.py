"""What tracing and metrics cost: the same work with them on and off, in one run.

    python -m benchmarks.telemetry_cost [--runs 500] [--n 10000] [--rounds 6]

On one embedded Redis Stack, two deployments (two key prefixes) that differ only in
``observability.tracing`` and ``observability.metrics``:

- agent run overhead: one worker process each (``python -m runtime.worker``, the single-turn
  agent of :mod:`benchmarks.run_overhead`), ``AgentClient.run`` + ``handle.result()`` in
  alternating blocks of 50 runs so a change in the machine's load hits both alike. Goal: on
  adds ≤ 0.15 ms at p50 (the median of the per-block differences is given too);
- no-op throughput: the supervisor CLI with one worker process drains N no-op tasks
  (:func:`benchmarks.common.measure_throughput`), on and off back to back, *rounds* times
  (each side first in every other round). Goal: on ≥ 0.9 × off (the median of the rounds'
  ratios: this machine's speed drifts between rounds by more than the difference).
- where an agent run's added time goes, in-process (``Runner.run`` of the same agent, no
  Redis): the SDK's tracing with a processor that does nothing, and with ours (recorder mode),
  against tracing disabled — the SDK's own span machinery, which any ``TracingProcessor``
  needs, against what our processor adds to it.

Writes benchmarks/results/telemetry_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio
from agents import RunConfig, Runner
from agents.tracing import TracingProcessor, set_trace_processors

from benchmarks.common import WorkerProcess, concurrency, measure_throughput
from benchmarks.peers.ours import Ours
from benchmarks.run_overhead import _BLOCK, AGENT, _ours
from runtime import EmbeddedRedis, EmbeddedRedisSettings, Keys, load_settings
from runtime.agents import AgentClient
from runtime.observability.spans import TraceRecorder
from runtime.observability.tracing import RedisTracingProcessor

ROOT = Path(__file__).resolve().parent.parent
OFF = {"observability.tracing": "false", "observability.metrics": "false"}
ON = {"observability.tracing": "true", "observability.metrics": "true"}
SIDES = {"on": ON, "off": OFF}


def _env(url: str, prefix: str, overrides: dict[str, str]) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AGENTS_WORKER_REDIS_URL": url,
        "AGENTS_WORKER_REDIS_KEY_PREFIX": prefix,
        "AGENTS_WORKER_OBSERVABILITY_LOG_LEVEL": "WARNING",
    }
    for path, value in overrides.items():
        env["AGENTS_WORKER_" + path.replace(".", "_").upper()] = value
    return env


async def _overhead(url: str, runs: int) -> dict[str, list[float]]:
    client = redis.asyncio.Redis.from_url(url)
    workers, runners = [], {}
    for side, overrides in SIDES.items():
        prefix = f"tc{side}"
        workers.append(
            subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
                [sys.executable, "-m", "runtime.worker", "--app", "benchmarks.run_overhead:app"],
                env=_env(url, prefix, overrides),
                cwd=ROOT,
            )
        )
        settings = load_settings(
            env={}, overrides={"redis.url": url, "redis.key_prefix": prefix, **overrides}
        )
        runners[side] = AgentClient(client, keys=Keys(prefix), settings=settings)
    samples: dict[str, list[float]] = {side: [] for side in SIDES}
    try:
        for side, runner in runners.items():  # warm-up: workers start, scripts load
            for n in range(20):
                await (await runner.run("bench", "hello", session_id=f"w-{side}-{n}")).result(60)
        for round_ in range(-(-runs // _BLOCK)):
            size = min(_BLOCK, runs - round_ * _BLOCK)
            for side, runner in runners.items():
                samples[side] += await _ours(runner, size, f"{side}{round_}", one_call=False)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(30)
        await client.aclose()
    return samples


class _Side(Ours):
    def __init__(self, url: str, overrides: dict[str, str]) -> None:
        super().__init__(url, 1)
        self.overrides = overrides

    def worker_command(self) -> list[str]:
        command = super().worker_command()
        at = command.index("run")
        extra = [part for path, v in self.overrides.items() for part in ("--set", f"{path}={v}")]
        return command[:at] + extra + command[at:]


async def _throughput(url: str, n: int, rounds: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as logs:
        for round_ in range(rounds):
            order = list(SIDES.items())
            if round_ % 2:  # each side goes first as often: the machine's drift hits both
                order.reverse()
            for side, overrides in order:
                peer = _Side(url, overrides)
                await peer.client.flushall()
                worker: WorkerProcess | None = None

                def start(peer: _Side = peer, name: str = f"{side}-{round_}") -> WorkerProcess:
                    nonlocal worker
                    worker = WorkerProcess(
                        peer.worker_command(), dict(os.environ), Path(logs) / f"{name}.log"
                    )
                    return worker

                try:
                    result = await measure_throughput(peer, n, start)
                finally:
                    if worker is not None:
                        worker.stop()
                    await peer.close()
                rates[side].append(result["tasks_per_s"])
    return rates


class _NoopProcessor(TracingProcessor):
    """Takes every trace and span and does nothing: the SDK's own cost of tracing."""

    def on_trace_start(self, trace: Any) -> None:
        return None

    def on_trace_end(self, trace: Any) -> None:
        return None

    def on_span_start(self, span: Any) -> None:
        return None

    def on_span_end(self, span: Any) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self) -> None:
        return None


async def _sdk_breakdown(url: str, runs: int) -> dict[str, list[float]]:
    """In-process ``Runner.run`` with tracing disabled, with the SDK's tracing and a no-op
    processor, and with ours (its buffer written between blocks, off the clock)."""
    client = redis.asyncio.Redis.from_url(url)
    settings = load_settings(env={}, overrides={"redis.url": url})
    recorder = TraceRecorder(Keys("tc"), settings, resource={"worker": "bench"})
    ours = RedisTracingProcessor(recorder=recorder, settings=settings)
    sides: dict[str, tuple[TracingProcessor | None, RunConfig]] = {
        "disabled": (None, RunConfig(tracing_disabled=True)),
        "sdk": (_NoopProcessor(), RunConfig()),
        "ours": (ours, RunConfig()),
    }
    samples: dict[str, list[float]] = {side: [] for side in sides}
    for round_ in range(-(-runs // _BLOCK) + 1):
        for side, (processor, config) in sides.items():
            if processor is not None:
                set_trace_processors([processor])
            block = []
            for _ in range(_BLOCK):
                began = time.perf_counter()
                await Runner.run(AGENT, "hello", run_config=config)
                block.append(time.perf_counter() - began)
            if round_:  # the first round warms up
                samples[side] += block
            await recorder.flush(client)
    set_trace_processors([])
    await client.aclose()
    return samples


def _p50(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def main(runs: int, n: int, rounds: int) -> None:
    doc: dict[str, Any] = {"runs": runs, "n": n, "rounds": rounds, "concurrency": concurrency()}
    with tempfile.TemporaryDirectory() as data:
        openssl = str(ROOT / ".agents-worker" / "openssl")
        server = EmbeddedRedis(
            EmbeddedRedisSettings(data_dir=data, appendonly=False, openssl_dir=openssl)
        )
        url = server.start().url
        try:
            began = time.perf_counter()
            breakdown = await _sdk_breakdown(url, runs)
            overhead = await _overhead(url, runs)
            rates = await _throughput(url, n, rounds)
            doc["seconds"] = round(time.perf_counter() - began, 1)
        finally:
            server.stop()
    on, off = overhead["on"], overhead["off"]
    per_block = [
        statistics.median(on[i : i + _BLOCK]) - statistics.median(off[i : i + _BLOCK])
        for i in range(0, len(off), _BLOCK)
    ]
    added = _p50(on) - _p50(off)
    doc["overhead"] = {
        "on_p50_ms": round(_p50(on), 3),
        "off_p50_ms": round(_p50(off), 3),
        "added_p50_ms": round(added, 3),
        "added_per_block_median_ms": round(statistics.median(per_block) * 1000, 3),
        "goal_met": added <= 0.15,
    }
    # the median of each round's on/off: the two drains of a round ran back to back
    base = _p50(breakdown["disabled"])
    doc["in_process"] = {
        "disabled_p50_ms": round(base, 3),
        "sdk_added_p50_ms": round(_p50(breakdown["sdk"]) - base, 3),
        "ours_added_p50_ms": round(_p50(breakdown["ours"]) - base, 3),
    }
    ratio = statistics.median(a / b for a, b in zip(rates["on"], rates["off"], strict=True))
    doc["throughput"] = {"on": rates["on"], "off": rates["off"], "ratio": round(ratio, 3)}
    doc["throughput"]["goal_met"] = ratio >= 0.9
    o = doc["overhead"]
    print(f"agent run, {runs} runs per side: on p50 {o['on_p50_ms']:.3f} ms, off "
          f"{o['off_p50_ms']:.3f} ms, added {o['added_p50_ms']:.3f} ms "
          f"(per block {o['added_per_block_median_ms']:.3f}) — goal ≤ 0.15 ms: "
          f"{'MET' if o['goal_met'] else 'NOT MET'}")  # fmt: skip
    b = doc["in_process"]
    print(f"in-process Runner.run, {runs} runs per side: disabled p50 {b['disabled_p50_ms']:.3f} "
          f"ms; the SDK's tracing with a no-op processor adds {b['sdk_added_p50_ms']:.3f} ms, "
          f"with ours {b['ours_added_p50_ms']:.3f} ms")  # fmt: skip
    t = doc["throughput"]
    verdict = "MET" if t["goal_met"] else "NOT MET"
    print(f"no-op throughput, {n} tasks × {rounds} rounds: on {t['on']} /s, off {t['off']} /s, "
          f"on/off (median of the rounds' ratios) {t['ratio']:.3f} — goal ≥ 0.9: "
          f"{verdict}")  # fmt: skip
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "telemetry_cost.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=6)
    options = parser.parse_args()
    anyio.run(main, options.runs, options.n, options.rounds)
