"""Metrics and tracing beside the seed package's, on one embedded Redis Stack.

    .venv-bench/bin/python -m benchmarks.telemetry_seed [--records 2000] [--spans 2000]

The seed package (``redis-openai-agents`` 0.1.0 from PyPI, installed into .venv-bench by
``scripts/bench`` without its dependencies: its metrics and tracing need only redis-py and the
Agents SDK, which the project has) against ours, same server, same process:

- cost per metric record: the seed's ``AgentMetrics.record(latency_ms=…, input_tokens=…,
  output_tokens=…, cache_hit=…)`` (five ``TS.ADD`` round trips) and ours (the same call:
  buffered, written by a background thread; the time includes the final ``close()`` that
  writes everything), and the runtime's own ``MetricsRecorder`` (five calls and one flush);
- samples kept when 4 processes record 1,000 records each at once (a barrier in Redis, then a
  tight loop): the count each side reports afterwards (the seed's series use
  ``DUPLICATE_POLICY LAST`` with a per-process "unique" timestamp, so records of two processes
  in the same millisecond overwrite each other);
- cost per span: 2,000 custom spans in one trace through the SDK with the side's
  ``TracingProcessor`` as the only processor, up to everything written (the seed: its
  ``aforce_flush``; ours: ``force_flush``), and whether the spans stored keep their start
  time and a name other than "unknown".

Writes benchmarks/results/telemetry_seed.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from runtime import EmbeddedRedis, EmbeddedRedisSettings

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 4
PER_PROCESS = 1000


def _seed() -> Any | None:
    try:
        import redis_openai_agents  # type: ignore[import-not-found]
    except ImportError:
        return None
    return redis_openai_agents


def _record_args(i: int) -> dict[str, Any]:
    return {
        "latency_ms": 100.0 + i % 50,
        "input_tokens": 10 + i % 7,
        "output_tokens": 5 + i % 3,
        "cache_hit": i % 4 == 0,
    }


def _seed_records(url: str, n: int) -> float:
    seed = _seed()
    metrics = seed.AgentMetrics(name="bench-seed", redis_url=url)
    began = time.perf_counter()
    for i in range(n):
        metrics.record(**_record_args(i))
    return (time.perf_counter() - began) / n


def _our_records(url: str, n: int) -> float:
    from runtime.observability.agent_metrics import AgentMetrics

    metrics = AgentMetrics("bench-ours", redis_url=url)
    began = time.perf_counter()
    for i in range(n):
        metrics.record(**_record_args(i))
    metrics.close()  # writes what is buffered
    return (time.perf_counter() - began) / n


def _recorder_records(url: str, n: int) -> float:
    from runtime import Keys, load_settings
    from runtime.observability.metrics import MetricsRecorder

    settings = load_settings(env={}, overrides={"redis.url": url})

    async def go() -> float:
        client = redis.asyncio.Redis.from_url(url)
        recorder = MetricsRecorder(Keys("aw"), settings, process="bench:recorder")
        began = time.perf_counter()
        for i in range(n):
            args = _record_args(i)
            recorder.count("runs_completed", 1, agent="bench-rec")
            recorder.observe("run_latency", args["latency_ms"], agent="bench-rec")
            recorder.count("tokens_in", args["input_tokens"], agent="bench-rec")
            recorder.count("tokens_out", args["output_tokens"], agent="bench-rec")
            recorder.count(
                "cache_hits" if args["cache_hit"] else "cache_misses", 1, agent="bench-rec"
            )
        await recorder.flush(client)
        elapsed = time.perf_counter() - began
        await client.aclose()
        return elapsed / n

    return asyncio.run(go())


def _wait_barrier(url: str, name: str) -> None:
    client = redis.Redis.from_url(url)
    client.incr(f"barrier:{name}")
    while int(client.get(f"barrier:{name}") or 0) < PROCESSES:
        time.sleep(0.001)
    client.close()


def _seed_writer(url: str) -> None:
    seed = _seed()
    metrics = seed.AgentMetrics(name="bench-seed-4p", redis_url=url)
    _wait_barrier(url, "seed")
    for i in range(PER_PROCESS):
        metrics.record(**_record_args(i))


def _our_writer(url: str) -> None:
    from runtime.observability.agent_metrics import AgentMetrics

    metrics = AgentMetrics("bench-ours-4p", redis_url=url)
    _wait_barrier(url, "ours")
    for i in range(PER_PROCESS):
        metrics.record(**_record_args(i))
    metrics.close()


def _kept(url: str, writer: Any) -> None:
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=writer, args=(url,)) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)


def _seed_kept(url: str) -> int:
    _kept(url, _seed_writer)
    client = redis.Redis.from_url(url)
    samples = client.execute_command("TS.RANGE", "metrics:bench-seed-4p:count", "-", "+")
    client.close()
    return len(samples)


def _our_kept(url: str) -> int:
    from runtime.observability.agent_metrics import AgentMetrics

    _kept(url, _our_writer)
    with AgentMetrics("bench-ours-4p", redis_url=url) as metrics:
        return int(metrics.get_stats()["count"])


def _spans(processor: Any, n: int) -> None:
    from agents.tracing import custom_span, set_trace_processors, trace

    set_trace_processors([processor])
    with trace("bench-trace"):
        for i in range(n):
            with custom_span("bench-span", {"i": i}):
                pass


async def _seed_span_cost(url: str, n: int) -> tuple[float, dict[str, Any]]:
    seed = _seed()
    processor = seed.RedisTracingProcessor(redis_url=url, stream_name="bench:seed:traces")
    await processor.initialize()
    began = time.perf_counter()
    _spans(processor, n)
    await asyncio.sleep(0)  # let the flush tasks it scheduled start
    for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
        await task
    await processor.aforce_flush()
    elapsed = time.perf_counter() - began
    client = redis.Redis.from_url(url, decode_responses=True)
    stored = [json.loads(v) for key in client.scan_iter("trace:*:spans") for v in client.hvals(key)]
    client.close()
    await processor.close()
    return elapsed / n * 1e6, _span_quality(stored, "started_at", "name", "span_type")


def _our_span_cost(url: str, n: int) -> tuple[float, dict[str, Any]]:
    from runtime.observability.tracing import RedisTracingProcessor

    processor = RedisTracingProcessor(redis_url=url)
    began = time.perf_counter()
    _spans(processor, n)
    processor.force_flush()
    elapsed = time.perf_counter() - began
    processor.shutdown()
    client = redis.Redis.from_url(url, decode_responses=True)
    stored = [
        json.loads(v) for key in client.scan_iter("aw:{trace:*}:spans") for v in client.hvals(key)
    ]
    client.close()
    return elapsed / n * 1e6, _span_quality(stored, "start", "name", "kind")


def _span_quality(stored: list[dict[str, Any]], start: str, name: str, kind: str) -> dict[str, Any]:
    return {
        "stored": len(stored),
        "with_start": sum(1 for s in stored if s.get(start)),
        "named_unknown": sum(1 for s in stored if s.get(name) in (None, "", "unknown")),
        "kind_unknown": sum(1 for s in stored if s.get(kind) in (None, "", "unknown")),
    }


def main(records: int, spans: int) -> None:
    seed = _seed()
    if seed is None:
        print("redis-openai-agents is not installed: run scripts/bench first (it installs it)")
    doc: dict[str, Any] = {"records": records, "spans": spans}
    with tempfile.TemporaryDirectory() as data:
        openssl = str(ROOT / ".agents-worker" / "openssl")
        server = EmbeddedRedis(
            EmbeddedRedisSettings(data_dir=data, appendonly=False, openssl_dir=openssl)
        )
        url = server.start().url
        try:
            doc["ours_record_us"] = _our_records(url, records) * 1e6
            doc["recorder_record_us"] = _recorder_records(url, records) * 1e6
            doc["ours_kept"] = _our_kept(url)
            doc["ours_span_us"], doc["ours_spans"] = _our_span_cost(url, spans)
            if seed is not None:
                doc["seed_record_us"] = _seed_records(url, records) * 1e6
                doc["seed_kept"] = _seed_kept(url)
                doc["seed_span_us"], doc["seed_spans"] = asyncio.run(_seed_span_cost(url, spans))
        finally:
            server.stop()
    _print(doc)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "telemetry_seed.json").write_text(json.dumps(doc, indent=2) + "\n")


def _print(doc: dict[str, Any]) -> None:
    total = PROCESSES * PER_PROCESS
    print(f"{'':44s}{'seed 0.1.0':>14s}{'ours':>14s}{'seed / ours':>14s}")
    seed_rec, ours_rec = doc.get("seed_record_us"), doc["ours_record_us"]
    print(
        f"{'µs per AgentMetrics.record':44s}{_n(seed_rec):>14s}{_n(ours_rec):>14s}"
        f"{_ratio(seed_rec, ours_rec):>14s}"
    )
    print(
        f"{'µs per record, MetricsRecorder (5 calls)':44s}{'':>14s}"
        f"{_n(doc['recorder_record_us']):>14s}"
    )
    print(
        f"{f'samples kept, {PROCESSES} processes × {PER_PROCESS}':44s}"
        f"{_n(doc.get('seed_kept')):>14s}{_n(doc['ours_kept']):>14s}{f'of {total}':>14s}"
    )
    seed_span, ours_span = doc.get("seed_span_us"), doc["ours_span_us"]
    print(
        f"{'µs per span (SDK span + processor + write)':44s}{_n(seed_span):>14s}"
        f"{_n(ours_span):>14s}{_ratio(seed_span, ours_span):>14s}"
    )
    for side in ("seed", "ours"):
        quality = doc.get(f"{side}_spans")
        if quality:
            print(f"  {side} spans stored: {quality}")


def _n(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--spans", type=int, default=2000)
    options = parser.parse_args()
    main(options.records, options.spans)
