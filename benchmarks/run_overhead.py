"""What the runtime adds to one single-turn agent run.

    python -m benchmarks.run_overhead [--runs 300]

Side by side, on one embedded Redis Stack, the same agent, model and kind of session:

- baseline: ``Runner.run(agent, text, session=AgentSession(...))`` in-process;
- ours: ``AgentClient.run(...)`` → inbox stream → a worker process (``python -m runtime.worker``:
  conversation turn and lease, run record, event stream, coordination events, ``Runner.run``,
  the turn's items written with the result) → ``handle.result()``; and the same through
  ``AgentClient.run_and_wait(...)`` (submit and first wait in one round trip);
- floor: the same process crossings with none of the runtime: a bare worker process
  (``--floor-worker``) reads an entry with XREADGROUP, reads the history with LRANGE,
  runs ``Runner.run`` on a :class:`TurnSession`, and writes the items, a reply and the ack in
  one pipeline; the app sends the entry and waits for the reply in one round trip. What ours
  adds over it is the runtime's own work; what it adds over the baseline is the design's.

- reference: ``Runner.run(agent, text)`` in-process without a session, the kind of figure the
  goal was set beside (~0.9 ms p50 with "a minimal model"): how fast this shared machine is
  during the run, to tell a slow period from a slower runtime when runs are compared.

The sides run in alternating blocks of 50, so a change in the machine's load (this is a
shared two-core machine) hits all alike; the difference is also given per block.

The model answers at once with a fixed message (no network) and tracing is off on all sides,
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
from runtime.agents.conversation import TurnSession
from runtime.agents.models import StepModel
from runtime.sessions import AgentSession

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = 50  # runs per side before switching to the next
SIDES = {
    "reference": "Runner.run in-process, no session (machine speed)",
    "baseline": "Runner.run in-process + AgentSession (baseline)",
    "floor": "bare stream worker, same crossings (floor)",
    "run": "runtime: client.run() + handle.result()",
    "run_and_wait": "runtime: client.run_and_wait()",
}
_FLOOR = "floor"  # key names of the bare worker, under the benchmark's prefix
# KEYS: history. ARGV: items → the history's length
_FLOOR_APPEND = "return redis.call('RPUSH', KEYS[1], unpack(ARGV))"


class FixedModel(StepModel):
    """Answers every call with the same message, at once."""

    def step(self, *args: Any) -> ModelStep:
        return ModelStep(output=[assistant_message("done")], usage=Usage(requests=1))


# One agent for every side. Its model is set on it (and is the app's model, which the worker
# passes as ``RunConfig.model``): for an agent without a model of its own the SDK works out
# its default model settings on every turn, ~0.06 ms that in-process runs of such an agent
# pay as much as the worker's.
MODEL = FixedModel()
AGENT = Agent(name="bench", instructions="Answer.", model=MODEL)
app = AgentApp("bench", agents=[AGENT], model=MODEL)


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


async def _reference(runs: int) -> list[float]:
    config = RunConfig(tracing_disabled=True)
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        await Runner.run(AGENT, "hello", run_config=config)
        samples.append(time.perf_counter() - began)
    return samples


async def _baseline(client: redis.asyncio.Redis, keys: Keys, runs: int, tag: str) -> list[float]:
    config = RunConfig(tracing_disabled=True)  # as the worker runs without an OpenAI key
    samples = []
    for n in range(runs):
        session = AgentSession(f"base-{tag}-{n}", client, keys=keys)
        began = time.perf_counter()
        await Runner.run(AGENT, "hello", session=session, run_config=config)
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


async def _floor_worker(url: str, prefix: str) -> None:
    """The bare worker: the least a stream-based runtime does per run (see the module doc)."""
    client = redis.asyncio.Redis.from_url(url)
    inbox = f"{prefix}:{_FLOOR}:inbox"
    await client.xgroup_create(inbox, _FLOOR, id="0", mkstream=True)
    config = RunConfig(tracing_disabled=True)
    append = client.register_script(_FLOOR_APPEND)
    while True:
        got = await client.xreadgroup(_FLOOR, "c", {inbox: ">"}, count=1, block=1000)
        if not got:
            continue
        entry_id, fields = got[0][1][0]
        run_id, session_id = fields[b"run"].decode(), fields[b"session"].decode()
        history_key = f"{prefix}:{_FLOOR}:history:{session_id}"
        history = await client.lrange(history_key, 0, -1)  # the turn's start: one round trip
        session = TurnSession(session_id, history)
        result = await Runner.run(AGENT, "hello", session=session, run_config=config)
        async with client.pipeline(transaction=False) as pipe:
            pipe.eval(append.script, 1, history_key, *session.added)
            pipe.xadd(f"{prefix}:{_FLOOR}:reply:{run_id}", {"output": str(result.final_output)})
            pipe.xack(inbox, _FLOOR, entry_id)
            await pipe.execute()


async def _floor(client: redis.asyncio.Redis, prefix: str, runs: int, tag: str) -> list[float]:
    samples = []
    for n in range(runs):
        run_id = f"floor-{tag}-{n}"
        began = time.perf_counter()
        async with client.pipeline(transaction=False) as pipe:
            pipe.xadd(f"{prefix}:{_FLOOR}:inbox", {"run": run_id, "session": run_id})
            pipe.xread({f"{prefix}:{_FLOOR}:reply:{run_id}": "0-0"}, block=10_000)
            _, reply = await pipe.execute()
        samples.append(time.perf_counter() - began)
        assert reply, "the bare worker did not answer"
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
    floor = subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
        [sys.executable, "-m", "benchmarks.run_overhead", "--floor-worker", url, keys.prefix],
        env=env,
        cwd=ROOT,
    )
    runner = AgentClient(client, keys=keys, settings=settings)
    samples: dict[str, list[float]] = {side: [] for side in SIDES}
    try:
        for n in range(20):  # warm-up: the worker starts, scripts load, connections open
            await (await runner.run("bench", "hello", session_id=f"warm-{n}")).result(60)
        await _reference(20)
        await _baseline(client, keys, 20, "warm")
        await _floor(client, keys.prefix, 20, "warm")
        block = max(1, min(_BLOCK, runs))
        for round_ in range(-(-runs // block)):
            size = min(block, runs - round_ * block)
            samples["reference"] += await _reference(size)
            samples["baseline"] += await _baseline(client, keys, size, str(round_))
            samples["floor"] += await _floor(client, keys.prefix, size, str(round_))
            samples["run"] += await _ours(runner, size, str(round_), one_call=False)
            samples["run_and_wait"] += await _ours(runner, size, str(round_), one_call=True)
    finally:
        floor.kill()
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        floor.wait(30)
    return samples


def _added(ours: list[float], base: list[float]) -> tuple[float, float]:
    """ms *ours* adds to *base* at p50: over all runs, and the median of the differences
    within each block (what drift between blocks cannot bias)."""
    per_block = [
        statistics.median(ours[i : i + _BLOCK]) - statistics.median(base[i : i + _BLOCK])
        for i in range(0, len(base), _BLOCK)
    ]
    added = statistics.median(ours) - statistics.median(base)
    return added * 1000, statistics.median(per_block) * 1000


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
    doc: dict[str, Any] = {"runs": runs, "block": _BLOCK}
    print(
        f"single-turn run, {runs} runs per side{'':17s}p50 ms   p99 ms  / base"
        "   added p50 (per block)   over floor"
    )
    for side, label in SIDES.items():
        summary = _summary(samples[side])
        doc[side] = summary
        row = f"{label:52s} {summary['p50_ms']:7.3f}  {summary['p99_ms']:7.3f}"
        if side not in ("reference", "baseline"):
            added, per_block = _added(samples[side], samples["baseline"])
            summary |= {
                "ratio_p50": round(summary["p50_ms"] / doc["baseline"]["p50_ms"], 3),
                "added_p50_ms": round(added, 3),
                "added_per_block_median_ms": round(per_block, 3),
            }
            row += f"  {summary['ratio_p50']:5.2f}  {added:7.3f} ({per_block:.3f})"
        if side in ("run", "run_and_wait"):
            over, over_block = _added(samples[side], samples["floor"])
            summary |= {
                "over_floor_p50_ms": round(over, 3),
                "over_floor_per_block_median_ms": round(over_block, 3),
                "goal_met": summary["added_p50_ms"] <= 1.0,
            }
            row += f"  {over:7.3f} ({over_block:.3f})"
        print(row)
    print(
        "goal: ≤ 1 ms added at p50 — "
        + ", ".join(
            f"{side}: {'MET' if doc[side]['goal_met'] else 'NOT MET'}"
            for side in SIDES
            if "goal_met" in doc[side]
        )
    )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "run_overhead.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument(
        "--floor-worker", nargs=2, metavar=("URL", "PREFIX"), help=argparse.SUPPRESS
    )
    options = parser.parse_args()
    if options.floor_worker:
        anyio.run(_floor_worker, *options.floor_worker)
    else:
        anyio.run(main, options.runs)
