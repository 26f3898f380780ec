"""Latency from enqueue to handler start at a steady rate, against peer queues.

    .venv-bench/bin/python -m benchmarks.latency [--rate 500] [--seconds 10] [--peers ours-1]

Per peer, on the same Redis server (flushed in between): its worker (one process) is started
the way its documentation runs one and warmed up for 0.5 s; then one task is enqueued every
1/rate s on an absolute schedule, one call at a time, with ``{"t": time.time()}`` taken just
before the enqueue call. The handler's first statement computes ``time.time() - t`` and pushes
it on a Redis list, read at the end: p50 and p99 in ms over every task.

Goal for ours: p50 ≤ 0.35 ms and p99 ≤ 1 ms. Writes benchmarks/results/latency.json.
"""

from __future__ import annotations

import argparse

from benchmarks.common import CONCURRENCY
from benchmarks.harness import (
    ARQ,
    BARE,
    OURS_1,
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

GOAL_P50_MS = 0.35
GOAL_P99_MS = 1.0
SPECS = [OURS_1, TASKIQ, ARQ, STREAQ, BARE]


def report(rows: list[Row], rate: float, seconds: float) -> tuple[str, dict[str, float] | None]:
    ours = next((r.result for r in rows if r.spec is OURS_1 and r.ok), None)
    lines = []
    for row in rows:
        if not row.ok:
            lines.append([row.name, "-", "-", "-", "-", "-", "-", row.status])
            continue
        r = row.result
        lines.append(
            [
                row.name,
                f"{r['p50_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                f"{r['mean_ms']:.3f}",
                f"{r['max_ms']:.1f}",
                f"{r['achieved_rate']:,.0f}",
                f"{ours['p50_ms'] / r['p50_ms']:.3f}" if ours else "-",
                f"{ours['p99_ms'] / r['p99_ms']:.3f}" if ours else "-",
            ]
        )
    headers = [
        f"enqueue → start, {rate:g}/s × {seconds:g} s",
        "p50 ms",
        "p99 ms",
        "mean ms",
        "max ms",
        "sent/s",
        "ours/it p50",
        "ours/it p99",
    ]
    return table(headers, lines) + footnotes(rows), ours


def verdict(ours: dict[str, float] | None) -> tuple[str, bool]:
    goal = f"goal: p50 ≤ {GOAL_P50_MS} ms and p99 ≤ {GOAL_P99_MS:g} ms"
    if ours is None:
        return f"{goal} — not measured", False
    met = ours["p50_ms"] <= GOAL_P50_MS and ours["p99_ms"] <= GOAL_P99_MS
    measured = f"p50 {ours['p50_ms']:.3f} ms, p99 {ours['p99_ms']:.3f} ms"
    return f"{goal} — {'MET' if met else 'NOT MET'} ({measured})", met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--rate", type=float, default=500.0, help="tasks per second [500]")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long [10]")
    parser.add_argument(
        "--concurrency", type=int, default=CONCURRENCY, help="tasks in flight per worker [100]"
    )
    add_common_arguments(parser)
    args, _ = parser.parse_known_args()  # scripts/bench passes every harness the same options

    specs = selected(SPECS, args.peers)
    driver_args = [
        "--rate", str(args.rate), "--seconds", str(args.seconds),
        "--concurrency", str(args.concurrency),
    ]  # fmt: skip
    with redis_server(args.url) as url:
        env = environment(url)
        print(
            f"latency, {args.rate:g} tasks/s for {args.seconds:g} s per peer, "
            f"Redis {env['redis']}, {env['cpus']} CPUs"
        )
        rows = [
            run_driver(spec, url, "latency", driver_args, timeout=180 + args.seconds)
            for spec in specs
        ]
    text, ours = report(rows, args.rate, args.seconds)
    line, met = verdict(ours)
    print()
    print(text)
    print(line)
    print("ours/it < 1: ours has the lower latency")
    path = write_results(
        "latency",
        {
            "benchmark": "latency",
            "environment": env,
            "rate": args.rate,
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "goal": {"p50_ms": GOAL_P50_MS, "p99_ms": GOAL_P99_MS},
            "goal_met": met,
            "results": {
                row.spec.key: row.result if row.skipped is None else {"skipped": row.skipped}
                for row in rows
            },
        },
    )
    print(f"written: {path.relative_to(path.parents[2])}")


if __name__ == "__main__":
    main()
