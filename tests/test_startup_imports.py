"""Start-up: the stream core, the CLI's help and version and a plain worker load no SDK.

``agents-worker --version`` took about 3 s because ``import runtime`` imported the Agents SDK
(issue 10, item 11). Each check runs in a fresh interpreter and reads its ``sys.modules``;
how fast that is, is measured by ``benchmarks/startup.py``, not asserted here.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import click
import msgspec
import pytest

from runtime.cli import COMMANDS, cli
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("agents", "openai", "redisvl", "opentelemetry", "mcp", "pydantic")
"""Top-level packages none of these paths may import..."""
REDIS_PY_IMPORTS = {"opentelemetry"}
"""...except what redis-py 8 imports itself when it is installed (``redis.observability``
loads ``opentelemetry.sdk.metrics``): a path that talks to Redis cannot avoid it."""

# Runs a module as __main__ with the given argv and writes the names of every module it
# imported to the file named by $MODULES_OUT when the interpreter exits (a worker process ends
# with os._exit, which skips atexit: that is caught too).
WRAPPER = """
import atexit, json, os, runpy, sys
def _dump():
    with open(os.environ["MODULES_OUT"], "w") as out:
        json.dump(sorted(sys.modules), out)
atexit.register(_dump)
_exit = os._exit
def _dump_then_exit(code):
    _dump()
    _exit(code)
os._exit = _dump_then_exit
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


STDIN = ["--settings-stdin"]


def _env(out: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_WORKER_")}
    env.pop("REDIS_URL", None)
    env["MODULES_OUT"] = str(out)
    env["PYTHONPATH"] = str(ROOT)
    return env


def _heavy(modules: list[str], *, allowed: set[str] | frozenset[str] = frozenset()) -> list[str]:
    return sorted({m.split(".")[0] for m in modules} & (set(HEAVY) - allowed))


def test_importing_the_runtime_core_and_cli_loads_no_sdk(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "import runtime, runtime.worker, runtime.producer, runtime.cli, runtime.coordinator\n"
        "import runtime.app, runtime.dlq, runtime.streams\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_env(tmp_path / "unused"),
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    modules = json.loads(done.stdout)
    assert _heavy(modules, allowed=REDIS_PY_IMPORTS) == []
    assert "runtime.agents.app" not in modules


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_the_cli_help_and_version_load_no_sdk_nor_commands(tmp_path: Path, flag: str) -> None:
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, "runtime.cli", flag],
        capture_output=True,
        text=True,
        env=_env(out),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert ("Commands:" in done.stdout) if flag == "--help" else ("version" in done.stdout)
    modules = json.loads(out.read_text())
    assert _heavy(modules) == []
    assert "redis" not in modules  # no Redis client either: nothing talks to Redis
    assert [m for m in modules if m.endswith("_cmd")] == []


def test_a_plain_worker_process_loads_no_sdk(tmp_path: Path, redis_url: str) -> None:
    out = tmp_path / "modules.json"
    settings = make_settings(redis_url, f"awtest:startup{os.getpid()}")
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, "runtime.worker", "--app", "tests.apps:app", *STDIN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(out),
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(msgspec.json.encode(settings) + b"\n")
        proc.stdin.flush()
        line = proc.stdout.readline().decode()  # the process's first status line
        assert line.startswith("READY"), proc.stderr.read() if proc.stderr else line
        proc.send_signal(signal.SIGTERM)  # graceful: drains, exits 0, the modules written
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    modules = json.loads(out.read_text())
    assert "runtime.worker.consumer" in modules  # it did serve
    assert _heavy(modules, allowed=REDIS_PY_IMPORTS) == []


def test_the_lazy_command_table_matches_the_commands() -> None:
    """``--help`` shows the table's help without importing the commands: keep it true."""
    ctx = click.Context(cli)
    for name, (target, short_help) in COMMANDS.items():
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert cli.get_command(ctx, name) is command
        assert command.name == name
        assert command.get_short_help_str(limit=1000) == short_help
