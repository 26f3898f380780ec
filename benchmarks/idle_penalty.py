"""How much slower one ``Runner.run`` is in a process that was idle just before.

    python -m benchmarks.idle_penalty [--runs 800]

Context for ``run_overhead``: a worker is idle between two runs while the app and Redis do
their part, and on a virtual machine a process woken from idle runs the same code slower
than one kept busy. This runs the same single-turn agent (fixed answer, no network, a
history held in memory, no Redis) back to back, and with the process idle for 1.5 ms before
each run, in alternating blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import anyio
from agents import Agent, RunConfig, Runner

from benchmarks.run_overhead import FixedModel
from runtime.agents.conversation import TurnSession

_IDLE = 0.0015
_BLOCK = 100


async def _block(agent: Agent[None], config: RunConfig, runs: int, idle: float) -> list[float]:
    samples = []
    for _ in range(runs):
        if idle:
            await asyncio.sleep(idle)
        began = time.perf_counter()
        await Runner.run(agent, "hello", run_config=config, session=TurnSession("s", []))
        samples.append(time.perf_counter() - began)
    return samples


async def main(runs: int) -> None:
    agent = Agent(name="bench", instructions="Answer.", model=FixedModel())
    config = RunConfig(tracing_disabled=True)
    await _block(agent, config, 100, 0.0)  # warm-up
    busy: list[float] = []
    idle: list[float] = []
    for _ in range(max(1, runs // _BLOCK)):
        busy += await _block(agent, config, _BLOCK, 0.0)
        idle += await _block(agent, config, _BLOCK, _IDLE)
    b, i = statistics.median(busy) * 1000, statistics.median(idle) * 1000
    print(f"Runner.run p50, back to back:          {b:.3f} ms")
    print(f"Runner.run p50, after {_IDLE * 1000:.1f} ms idle:     {i:.3f} ms  (+{i - b:.3f} ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=800)
    anyio.run(main, parser.parse_args().runs)
