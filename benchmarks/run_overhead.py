"""What the runtime adds to one single-turn agent run.

    python -m benchmarks.run_overhead [--runs 300]

Side by side, on one embedded Redis Stack, the same agent, model and kind of session:

- baseline: ``Runner.run(agent, text, session=AgentSession(...))`` in-process;
- ours: ``AgentClient.run(...)`` → inbox stream → a worker process (``python -m runtime.worker``:
  conversation turn and lease, run record, event stream, coordination events, ``Runner.run``,
  the turn's items written with the result) → ``handle.result()``; and the same through
  ``AgentClient.run_and_wait(...)`` (submit and first wait in one round trip).

The sides run in alternating blocks of 50, so a change in the machine's load (this is a
shared two-core machine) hits all alike; the difference is also given per block.

The model answers at once with a fixed message (no network) and tracing is off on both sides,
so the difference is the runtime's own cost. Goal: ≤ 1 ms p50 added. Writes
benchmarks/results/run_overhead.json.
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
from agents import Agent, RunConfig, Runner, Usage
from agents.testing import ModelStep, assistant_message

from runtime import EmbeddedRedis, EmbeddedRedisSettings, Keys, load_settings
from runtime.agents import AgentApp, AgentClient
from runtime.agents.models import StepModel
from runtime.sessions import AgentSession

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = 50  # runs per side before switching to the next
SIDES = {
    "baseline": "Runner.run in-process + AgentSession (baseline)",
    "run": "runtime: client.run() + handle.result()",
    "run_and_wait": "runtime: client.run_and_wait()",
}


class FixedModel(StepModel):
    """Answers every call with the same message, at once."""

    def step(self, *args: Any) -> ModelStep:
        return ModelStep(output=[assistant_message("done")], usage=Usage(requests=1))


app = AgentApp("bench", agents=[Agent(name="bench", instructions="Answer.")], model=FixedModel())


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(_percentile(ms, 0.99), 3),
        "runs": len(ms),
    }


async def _baseline(client: redis.asyncio.Redis, keys: Keys, runs: int, tag: str) -> list[float]:
    agent = Agent(name="bench", instructions="Answer.", model=FixedModel())
    config = RunConfig(tracing_disabled=True)  # as the worker runs without an OpenAI key
    samples = []
    for n in range(runs):
        session = AgentSession(f"base-{tag}-{n}", client, keys=keys)
        began = time.perf_counter()
        await Runner.run(agent, "hello", session=session, run_config=config)
        samples.append(time.perf_counter() - began)
    return samples


async def _ours(runner: AgentClient, runs: int, tag: str, *, one_call: bool) -> list[float]:
    """*one_call*: ``run_and_wait()``; otherwise ``run()`` then ``handle.result()``."""
    samples = []
    for n in range(runs):
        session = f"ours-{tag}-{n}-{int(one_call)}"
        began = time.perf_counter()
        if one_call:
            result = await runner.run_and_wait("bench", "hello", session_id=session)
        else:
            handle = await runner.run("bench", "hello", session_id=session)
            result = await handle.result(timeout=10)
        samples.append(time.perf_counter() - began)
        assert result.ok, result.error
    return samples


async def _compare(url: str, client: redis.asyncio.Redis, runs: int) -> dict[str, list[float]]:
    """The sides in alternating blocks, so a change in the machine's load hits all alike."""
    keys = Keys("bench")
    settings = load_settings(env={}, overrides={"redis.url": url, "redis.key_prefix": keys.prefix})
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AGENTS_WORKER_REDIS_URL": url,
        "AGENTS_WORKER_REDIS_KEY_PREFIX": keys.prefix,
        "AGENTS_WORKER_OBSERVABILITY_LOG_LEVEL": "WARNING",
    }
    worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
        [sys.executable, "-m", "runtime.worker", "--app", "benchmarks.run_overhead:app"],
        env=env,
        cwd=ROOT,
    )
    runner = AgentClient(client, keys=keys, settings=settings)
    samples: dict[str, list[float]] = {side: [] for side in SIDES}
    try:
        for n in range(20):  # warm-up: the worker starts, scripts load, connections open
            await (await runner.run("bench", "hello", session_id=f"warm-{n}")).result(60)
        await _baseline(client, keys, 20, "warm")
        block = max(1, min(_BLOCK, runs))
        for round_ in range(-(-runs // block)):
            size = min(block, runs - round_ * block)
            samples["baseline"] += await _baseline(client, keys, size, str(round_))
            samples["run"] += await _ours(runner, size, str(round_), one_call=False)
            samples["run_and_wait"] += await _ours(runner, size, str(round_), one_call=True)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    return samples


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as data:
        openssl = str(ROOT / ".agents-worker" / "openssl")
        server = EmbeddedRedis(
            EmbeddedRedisSettings(data_dir=data, appendonly=False, openssl_dir=openssl)
        )
        url = server.start().url
        client = redis.asyncio.Redis.from_url(url)
        try:
            samples = await _compare(url, client, runs)
        finally:
            await client.aclose()
            server.stop()
    base = samples["baseline"]
    doc: dict[str, Any] = {"runs": runs, "block": _BLOCK}
    print(f"single-turn run, {runs} runs per side                    p50 ms   p99 ms   added p50")
    for side, label in SIDES.items():
        summary = _summary(samples[side])
        row = f"{label:52s} {summary['p50_ms']:7.3f}  {summary['p99_ms']:7.3f}"
        doc[side] = summary
        if side != "baseline":
            added = summary["p50_ms"] - doc["baseline"]["p50_ms"]
            ours = samples[side]
            per_block = [  # the difference within each block: what drift cannot bias
                1000
                * (
                    statistics.median(ours[i : i + _BLOCK])
                    - statistics.median(base[i : i + _BLOCK])
                )
                for i in range(0, len(base), _BLOCK)
            ]
            summary |= {
                "added_p50_ms": round(added, 3),
                "added_per_block_median_ms": round(statistics.median(per_block), 3),
                "goal_met": added <= 1.0,
            }
            row += f"  {added:7.3f} (per block {statistics.median(per_block):.3f})"
        print(row)
    print(
        "goal: ≤ 1 ms added at p50 — "
        + ", ".join(
            f"{side}: {'MET' if doc[side]['goal_met'] else 'NOT MET'}"
            for side in SIDES
            if side != "baseline"
        )
    )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "run_overhead.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    anyio.run(main, parser.parse_args().runs)
