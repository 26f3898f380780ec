"""Throughput of no-op tasks, end to end (enqueue → handler → ack), against peer queues.

    .venv-bench/bin/python -m benchmarks.throughput [--n 20000] [--peers ours-1,bare]

Per peer, on the same Redis server (flushed in between): N no-op tasks are enqueued with the
peer's own producer API (its batch API where it has one), then its worker is started the way
its documentation runs one and drains them. Every task goes the whole way: producer envelope →
stream/queue → worker → handler → acknowledgement. tasks/s = tasks completed from the first
completion seen to the last (queue empty, nothing pending; polled every 5 ms) / that time, so
the worker's start-up is left out. The producer's enqueue rate is shown beside it.

Rows: ours with 1 and with 2 worker processes (the supervisor CLI), taskiq-redis
(RedisStreamBroker), arq, streaq (1 worker process each) and a bare redis-py loop (XREADGROUP
COUNT 100 + pipelined XACK/XDEL, no envelope): the floor for a Python consumer.

Goal: at least 30,000 tasks/s with one worker process. Writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse

from benchmarks.common import CONCURRENCY
from benchmarks.harness import (
    ARQ,
    BARE,
    OURS_1,
    OURS_2,
    STREAQ,
    TASKIQ,
    Row,
    add_common_arguments,
    environment,
    footnotes,
    redis_server,
    run_driver,
    selected,
    table,
    write_results,
)

GOAL = 30_000.0
SPECS = [OURS_1, OURS_2, TASKIQ, ARQ, STREAQ, BARE]


def report(rows: list[Row], n: int) -> tuple[str, float | None]:
    ours = next((r.result["tasks_per_s"] for r in rows if r.spec is OURS_1 and r.ok), None)
    lines = []
    for row in rows:
        if not row.ok:
            lines.append([row.name, "-", "-", "-", row.status])
            continue
        rate = row.result["tasks_per_s"]
        ratio = f"{ours / rate:.2f}" if ours else "-"
        lines.append(
            [
                row.name,
                f"{rate:,.0f}",
                f"{row.result['drain_s']:.3f}",
                f"{row.result['enqueue_per_s']:,.0f}",
                ratio,
            ]
        )
    headers = [f"no-op tasks, N={n:,}", "tasks/s", "drain s", "enqueue/s", "ours(1) / it"]
    return table(headers, lines) + footnotes(rows), ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--n", type=int, default=20_000, help="tasks per peer [20000]")
    parser.add_argument(
        "--concurrency", type=int, default=CONCURRENCY, help="tasks in flight per worker [100]"
    )
    add_common_arguments(parser)
    args, _ = parser.parse_known_args()  # scripts/bench passes every harness the same options

    specs = selected(SPECS, args.peers)
    driver_args = ["--n", str(args.n), "--concurrency", str(args.concurrency)]
    with redis_server(args.url) as url:
        env = environment(url)
        print(f"throughput, N={args.n:,} per peer, Redis {env['redis']}, {env['cpus']} CPUs")
        rows = [
            run_driver(spec, url, "throughput", driver_args, timeout=180 + args.n / 100)
            for spec in specs
        ]
    text, ours = report(rows, args.n)
    print()
    print(text)
    if ours is None:
        print(f"goal: ≥ {GOAL:,.0f} tasks/s with one worker process — not measured")
    else:
        verdict = "MET" if ours >= GOAL else "NOT MET"
        print(f"goal: ≥ {GOAL:,.0f} tasks/s with one worker process — {verdict} ({ours:,.0f}/s)")
    print("ours(1) / it > 1: ours with one worker process is faster than that row")
    path = write_results(
        "throughput",
        {
            "benchmark": "throughput",
            "environment": env,
            "n": args.n,
            "concurrency": args.concurrency,
            "goal_tasks_per_s": GOAL,
            "goal_met": ours is not None and ours >= GOAL,
            "results": {
                row.spec.key: row.result if row.skipped is None else {"skipped": row.skipped}
                for row in rows
            },
        },
    )
    print(f"written: {path.relative_to(path.parents[2])}")


if __name__ == "__main__":
    main()
