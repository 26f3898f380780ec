"""The harness side of the side-by-side benchmarks: one Redis server, one driver per peer.

Each peer's driver runs as a subprocess with the Python of the virtualenv that has the peer
(``.venv-bench``, or ``.venv-bench-<peer>`` when the peer pins another redis-py), against the
same embedded Redis server, flushed between peers. A peer whose package is missing is shown as
skipped, so the harness also runs in the project's own virtualenv (ours and the bare loop).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import ENV_URL, ROOT
from runtime import EmbeddedRedis, EmbeddedRedisSettings

RESULTS = ROOT / "benchmarks" / "results"
OPENSSL_DIR = ROOT / ".agents-worker" / "openssl"


@dataclass(frozen=True)
class Spec:
    """One row: a driver module run with some arguments under some Python."""

    key: str
    module: str
    requires: str
    """Top-level module the driver needs (checked before running it)."""
    args: tuple[str, ...] = ()
    venv: str | None = None
    """Its own virtualenv under the repository root, else this Python."""

    @property
    def python(self) -> str:
        if self.venv is None:
            return sys.executable
        return str(ROOT / self.venv / "bin" / "python")


OURS_1 = Spec("ours-1", "benchmarks.peers.ours", "runtime", ("--workers", "1"))
OURS_2 = Spec("ours-2", "benchmarks.peers.ours", "runtime", ("--workers", "2"))
TASKIQ = Spec("taskiq", "benchmarks.peers.taskiq_peer", "taskiq_redis")
ARQ = Spec("arq", "benchmarks.peers.arq_peer", "arq", venv=".venv-bench-arq")
STREAQ = Spec("streaq", "benchmarks.peers.streaq_peer", "streaq")
BARE = Spec("bare", "benchmarks.peers.bare", "redis")
ALL = (OURS_1, OURS_2, TASKIQ, ARQ, STREAQ, BARE)


@dataclass
class Row:
    spec: Spec
    result: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def name(self) -> str:
        return str(self.result.get("name") or self.spec.key)

    @property
    def ok(self) -> bool:
        return self.skipped is None and "error" not in self.result

    @property
    def status(self) -> str:
        return "ok" if self.ok else "skipped" if self.skipped else "FAILED"

    @property
    def why(self) -> str | None:
        return self.skipped or self.result.get("error")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--peers",
        help="comma-separated subset of: "
        + ", ".join(s.key for s in (OURS_1, OURS_2, TASKIQ, ARQ, STREAQ, BARE)),
    )
    parser.add_argument(
        "--url", help="use this Redis instead of starting the embedded one (it is FLUSHALLed)"
    )


def selected(specs: list[Spec], peers: str | None) -> list[Spec]:
    if not peers:
        return specs
    wanted = {p.strip() for p in peers.split(",") if p.strip()}
    unknown = wanted - {s.key for s in specs}
    if unknown:
        raise SystemExit(f"unknown peers: {', '.join(sorted(unknown))}")
    return [s for s in specs if s.key in wanted]


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """The given Redis, or a fresh embedded one (no persistence) stopped afterwards."""
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as data:
        settings = EmbeddedRedisSettings(
            data_dir=data, appendonly=False, openssl_dir=str(OPENSSL_DIR)
        )
        server = EmbeddedRedis(settings)
        status = server.start()
        try:
            yield status.url
        finally:
            server.stop()


def missing(spec: Spec) -> str | None:
    """Why *spec* cannot run here, or ``None``."""
    python = spec.python
    if not Path(python).exists():
        return f"no {spec.venv} (scripts/bench creates it)"
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"
    found = subprocess.run([python, "-c", probe, spec.requires], check=False, cwd=ROOT)
    if found.returncode != 0:
        return f"{spec.requires} is not installed for {python} (scripts/bench installs it)"
    return None


def run_driver(spec: Spec, url: str, mode: str, args: list[str], timeout: float) -> Row:
    """Run one driver against a flushed server and return its row."""
    reason = missing(spec)
    if reason is not None:
        print(f"  {spec.key}: skipped: {reason}", flush=True)
        return Row(spec, skipped=reason)
    with redis.Redis.from_url(url) as client:
        client.flushall()
    env = {**os.environ, ENV_URL: url, "PYTHONPATH": str(ROOT)}
    command = [spec.python, "-m", spec.module, mode, "--url", url, *spec.args, *args]
    began = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        print(f"  {spec.key}: timed out after {timeout:.0f} s", flush=True)
        return Row(spec, {"error": f"timed out after {timeout:.0f} s"})
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"no result (exit status {done.returncode})"}
    if "error" in result:
        print(f"  {spec.key}: FAILED: {result['error']}\n{_tail(done.stderr)}", flush=True)
    else:
        print(f"  {result['name']}: done in {time.monotonic() - began:.1f} s", flush=True)
    return Row(spec, result)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def environment(url: str) -> dict[str, Any]:
    with redis.Redis.from_url(url) as client:
        info = client.info("server")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "redis": info.get("redis_version"),
    }


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table, first column left-aligned, the others right-aligned."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    out = []
    for i, cells in enumerate([headers, *rows]):
        parts = [f"{cells[0]:<{widths[0]}}"]
        parts += [f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True)]
        out.append("  ".join(parts))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def footnotes(rows: list[Row]) -> str:
    """Why rows were skipped or failed, one line each (empty when none was)."""
    notes = [f"\n  {row.name}: {row.status}: {row.why}" for row in rows if not row.ok]
    return "".join(notes)


def write_results(name: str, document: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
