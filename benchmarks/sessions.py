"""Session latency: AgentSession and JSONSession side by side with the SDK's RedisSession.

    python -m benchmarks.sessions [--runs 1000] [--url redis://…]

One Redis server (a fresh embedded Redis Stack unless ``--url`` is given), one client per
store, one coroutine: this measures latency, not throughput. The stores take turns call by
call, so noise from the shared machine hits them alike.

- ``add_items``: one typical message item (an assistant message, ~300 characters of text) per
  call, ``--runs`` calls after a warm-up, on a growing conversation; no TTL.
- ``get_items()``: the whole history of a conversation holding 10, 100 and 1,000 such items,
  ``--runs`` calls each.
- ``load``: opening a stored 100-item conversation and reading it all, as a request handler
  does (``load`` + ``get_items()`` for ours, constructor + ``get_items()`` for the SDK's).
- the floor: a bare ``PING`` on a redis-py client, timed among the add_items calls.

Objects alive before the timed calls (the SDK's modules and their dependencies) are frozen out
of Python's collector (``gc.freeze()``): a full collection of them takes ~150 ms and would
otherwise be the p99 of every store alike.

Goals: add_items p50 ≤ 0.2 ms in one round trip; get_items at least as fast as the SDK's at
every size; a 100-item load under 5 ms at p99. Writes benchmarks/results/sessions.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import redis.asyncio
from agents.extensions.memory import RedisSession

from benchmarks.harness import environment, redis_server, table, write_results
from runtime import Keys
from runtime.sessions import AgentSession, JSONSession

SIZES = (10, 100, 1000)
GOAL_ADD_P50_MS = 0.2
GOAL_LOAD_P99_MS = 5.0
WARMUP = 50
PREFIX = "bench-sessions"
Item = dict[str, Any]


def message(n: int) -> Item:
    """A typical assistant message item, as the SDK stores one."""
    text = f"Reply {n}: " + "Redis keeps the conversation close to the worker. " * 6
    return {
        "id": f"msg_{n:08d}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


@dataclass
class Store:
    """One implementation under test: how to open a session of it by id."""

    key: str
    name: str
    client: redis.asyncio.Redis
    open: Callable[[str], Any]
    load: Callable[[str], Awaitable[Any]]


def stores(url: str) -> list[Store]:
    keys = Keys(PREFIX)
    ours, json_client, sdk = (redis.asyncio.Redis.from_url(url) for _ in range(3))

    async def load_list(sid: str) -> Any:
        return await AgentSession.load(sid, client=ours, keys=keys)

    async def load_json(sid: str) -> Any:
        return await JSONSession.load(sid, client=json_client, keys=keys)

    async def load_sdk(sid: str) -> Any:
        return RedisSession(sid, redis_client=sdk, key_prefix=f"{PREFIX}:sdk")

    return [
        Store(
            "agent_session",
            "AgentSession (hash + list)",
            ours,
            lambda sid: AgentSession(sid, ours, keys=keys),
            load_list,
        ),
        Store(
            "json_session",
            "JSONSession (RedisJSON)",
            json_client,
            lambda sid: JSONSession(sid, json_client, keys=keys),
            load_json,
        ),
        Store(
            "sdk_redis_session",
            f"SDK RedisSession {version('openai-agents')}",
            sdk,
            lambda sid: RedisSession(sid, redis_client=sdk, key_prefix=f"{PREFIX}:sdk"),
            load_sdk,
        ),
    ]


def summary(samples_ns: list[int]) -> dict[str, float]:
    ms = [s / 1e6 for s in samples_ns]
    return {
        "count": len(ms),
        "p50_ms": round(statistics.median(ms), 4),
        "p99_ms": round(statistics.quantiles(ms, n=100)[98], 4),
        "mean_ms": round(statistics.fmean(ms), 4),
    }


async def timed_rounds(
    calls: list[Callable[[], Awaitable[Any]]], runs: int, warmup: int = WARMUP
) -> list[list[int]]:
    """Call each of *calls* in turn, *runs* times; the nanoseconds of every call, per call."""
    for _ in range(warmup):
        for call in calls:
            await call()
    samples: list[list[int]] = [[] for _ in calls]
    # Objects alive now (the SDK and its dependencies: about a million) are kept out of the
    # collector; otherwise a full collection stalls whichever call it lands in by ~150 ms.
    gc.collect()
    gc.freeze()
    for _ in range(runs):
        for i, call in enumerate(calls):
            began = time.perf_counter_ns()
            await call()
            samples[i].append(time.perf_counter_ns() - began)
    return samples


async def measure(
    url: str, runs: int, floor: dict[str, dict[str, float]]
) -> dict[str, dict[str, Any]]:
    """The results per store; *floor* gets the round trip of a bare PING."""
    all_stores = stores(url)
    results: dict[str, dict[str, Any]] = {s.key: {"name": s.name} for s in all_stores}
    try:
        # add_items: one message per call on a growing conversation
        sessions = [s.open("adds") for s in all_stores]
        counter = iter(range(10**9))
        adds = [_adder(session, counter) for session in sessions]
        *samples_per_store, pings = await timed_rounds([*adds, all_stores[0].client.ping], runs)
        for store, samples in zip(all_stores, samples_per_store, strict=True):
            results[store.key]["add_items"] = summary(samples)
        floor["ping"] = summary(pings)
        round_trips = await _round_trips(all_stores[0].client, sessions[0])
        results["agent_session"]["add_items"]["round_trips"] = round_trips

        # get_items(): the whole history at each size
        for size in SIZES:
            sessions = [s.open(f"get-{size}") for s in all_stores]
            for session in sessions:
                await session.add_items([message(i) for i in range(size)])
            reads = [session.get_items for session in sessions]
            gets = await timed_rounds(reads, runs, warmup=10)
            for store, samples in zip(all_stores, gets, strict=True):
                results[store.key][f"get_items_{size}"] = summary(samples)

        # load: open a stored 100-item conversation and read it all
        loads = [_loader(store) for store in all_stores]
        for store, samples in zip(all_stores, await timed_rounds(loads, runs), strict=True):
            results[store.key]["load_100"] = summary(samples)
    finally:
        for store in all_stores:
            async for key in store.client.scan_iter(match=f"{PREFIX}:*", count=1000):
                await store.client.unlink(key)
            await store.client.aclose()
    return results


def _adder(session: Any, counter: Any) -> Callable[[], Awaitable[None]]:
    async def add() -> None:
        await session.add_items([message(next(counter))])

    return add


def _loader(store: Store) -> Callable[[], Awaitable[Any]]:
    async def load() -> Any:
        session = await store.load("get-100")
        items = await session.get_items()
        assert len(items) == 100
        return items

    return load


async def _round_trips(client: redis.asyncio.Redis, session: AgentSession) -> int:
    """Commands the client sends for one add_items (each one is a round trip here)."""
    sent = 0
    original = client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        nonlocal sent
        sent += 1
        return await original(*args, **options)

    client.execute_command = counting  # type: ignore[method-assign]
    try:
        await session.add_items([message(0)])
    finally:
        del client.execute_command
    return sent


def goals(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool]]:
    ours, sdk = results["agent_session"], results["sdk_redis_session"]
    add = ours["add_items"]
    rows = [
        (
            "add_items p50 <= 0.2 ms, one round trip (AgentSession)",
            f"{add['p50_ms']:.3f} ms, {add['round_trips']} round trip",
            add["p50_ms"] <= GOAL_ADD_P50_MS and add["round_trips"] == 1,
        )
    ]
    for size in SIZES:
        key = f"get_items_{size}"
        rows.append(
            (
                f"get_items at {size:,} items <= SDK (p50)",
                f"{ours[key]['p50_ms']:.3f} vs {sdk[key]['p50_ms']:.3f} ms",
                ours[key]["p50_ms"] <= sdk[key]["p50_ms"],
            )
        )
    rows.append(
        (
            "100-item load p99 < 5 ms (AgentSession)",
            f"{ours['load_100']['p99_ms']:.3f} ms",
            ours["load_100"]["p99_ms"] < GOAL_LOAD_P99_MS,
        )
    )
    return rows


def report(results: dict[str, dict[str, Any]], floor: dict[str, dict[str, float]]) -> str:
    sdk = results["sdk_redis_session"]
    lines = []
    for measure_key, label in [
        ("add_items", "add_items (1 item)"),
        *[(f"get_items_{n}", f"get_items() at {n:,}") for n in SIZES],
        ("load_100", "load + get_items() at 100"),
    ]:
        for store in results.values():
            r = store[measure_key]
            lines.append(
                [
                    label,
                    store["name"],
                    f"{r['p50_ms']:.3f}",
                    f"{r['p99_ms']:.3f}",
                    f"{r['p50_ms'] / sdk[measure_key]['p50_ms']:.2f}",
                    f"{r['p99_ms'] / sdk[measure_key]['p99_ms']:.2f}",
                ]
            )
    headers = ["operation", "store", "p50 ms", "p99 ms", "p50 / SDK", "p99 / SDK"]
    goal_lines = [[name, got, "met" if ok else "NOT met"] for name, got, ok in goals(results)]
    ping = floor["ping"]
    return (
        table(headers, lines)
        + f"\n\nround-trip floor (redis-py PING, same client kind): p50 {ping['p50_ms']:.3f} ms,"
        + f" p99 {ping['p99_ms']:.3f} ms\n\n"
        + table(["goal", "measured", "status"], goal_lines)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="timed calls per measurement")
    parser.add_argument("--url", help="use this Redis (with the JSON module) instead")
    args = parser.parse_args(argv)
    with redis_server(args.url) as url:
        env = environment(url)
        floor: dict[str, dict[str, float]] = {}
        results = asyncio.run(measure(url, args.runs, floor))
    print(report(results, floor))
    document = {
        "benchmark": "sessions",
        "environment": env,
        "runs": args.runs,
        "goal": {
            "add_items_p50_ms": GOAL_ADD_P50_MS,
            "add_items_round_trips": 1,
            "get_items": "p50 <= the SDK's at every size",
            "load_100_p99_ms": GOAL_LOAD_P99_MS,
        },
        "goals_met": {name: ok for name, _, ok in goals(results)},
        "floor": floor,
        "results": results,
    }
    print(f"written: {write_results('sessions', document)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
