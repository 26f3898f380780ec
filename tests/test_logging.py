"""Structured logs: event name plus fields, console or JSON, secrets masked; the runtime's
records reach an application's own handlers, and only its processes install one."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from runtime import configure_logging, get_logger, redact_url
from runtime.redaction import redact_text
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A stream to configure logging onto; the logging setup is restored afterwards."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    levels = {name: logging.getLogger(name).level for name in ("runtime", "workers")}
    out = io.StringIO()
    yield out
    root.handlers[:] = handlers
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _fresh(stream: io.StringIO, level: str = "INFO", fmt: str = "console") -> None:
    """configure_logging as in a fresh process: pytest puts capturing handlers on the root."""
    logging.getLogger().handlers[:] = []
    configure_logging(level, fmt, stream)


def test_console_line(stream: io.StringIO) -> None:
    _fresh(stream)
    get_logger("runtime.test").info("redis.started", port=6379, note="two words", ms=1.23456)
    line = stream.getvalue().strip()
    assert line.endswith(
        'INFO    runtime.test  redis.started port=6379 note="two words" ms=1.23456'
    )


def test_json_lines_and_levels(stream: io.StringIO) -> None:
    _fresh(stream, "WARNING", "json")
    log = get_logger("runtime.test")
    log.info("hidden")
    log.warning("lease.lost", entry="1-0", url="redis://:pw@h:1/0")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handler.failed", entry="2-0")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "lease.lost" and first["level"] == "warning"
    assert first["entry"] == "1-0" and first["url"] == "redis://:***@h:1/0"
    assert second["event"] == "handler.failed" and "ValueError: boom" in second["exception"]


def test_configure_is_idempotent(stream: io.StringIO) -> None:
    _fresh(stream)
    configure_logging("INFO", "console", stream)
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "agents-worker"]
    assert len(ours) == 1
    get_logger("runtime.test").info("once")
    assert stream.getvalue().count("once") == 1


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_an_apps_own_root_handler_receives_the_runtimes_records(stream: io.StringIO) -> None:
    """configure_logging set propagate=False: an app's handlers never saw our records."""
    _fresh(stream)
    app_handler = _Collect()
    logging.getLogger().addHandler(app_handler)  # what an app's logging setup does
    try:
        get_logger("runtime.worker.consumer").info("worker.ready", consumer="c1")
        get_logger("workers.demo").warning("demo.note")
    finally:
        logging.getLogger().removeHandler(app_handler)
    assert [r.getMessage() for r in app_handler.records] == ["worker.ready", "demo.note"]
    assert app_handler.records[0].aw_fields == {"consumer": "c1"}  # type: ignore[attr-defined]
    assert stream.getvalue().count("worker.ready consumer=c1") == 1
    assert all(logging.getLogger(n).propagate for n in ("runtime", "workers"))


# Imports the library and uses some of it, then prints what the logging setup looks like.
_LIBRARY_USE = """
import json, logging
def state():
    loggers = {n: l for n, l in logging.root.manager.loggerDict.items()
               if isinstance(l, logging.Logger)}
    return {
        "root": [type(h).__name__ for h in logging.root.handlers],
        "root_level": logging.root.level,
        "handlers": sorted(n for n, l in loggers.items() if l.handlers),
        "no_propagate": sorted(n for n, l in loggers.items() if not l.propagate),
    }
before = state()
import runtime, runtime.worker, runtime.producer, runtime.coordinator, runtime.sessions
import runtime.agents, runtime.cli, runtime.supervisor
from runtime import AgentCoordinator, Keys, get_logger, load_settings
load_settings(env={})
import redis.asyncio
AgentCoordinator(client=redis.asyncio.Redis(), keys=Keys("x"), continue_handoffs=False)
get_logger("runtime.test").warning("used")
print(json.dumps({"before": before, "after": state()}))
"""


def test_using_the_library_installs_no_handler_and_keeps_propagation() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LIBRARY_USE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    states = json.loads(done.stdout)
    assert states["after"]["root"] == states["before"]["root"] == []
    assert states["after"]["root_level"] == states["before"]["root_level"]
    ours = [n for n in states["after"]["handlers"] if n.split(".")[0] in ("runtime", "workers")]
    assert ours == []
    assert [n for n in states["after"]["no_propagate"] if n.startswith("runtime")] == []
    assert "used" in done.stderr  # logging's last resort: a warning is not lost either


def _run_worker(app: str, redis_url: str, key_prefix: str, env: dict[str, str]) -> str:
    """Start a worker process of *app*, wait for READY, stop it (SIGTERM); its stderr."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_WORKER_")}
    environ.update(PYTHONPATH=str(ROOT), **env)
    command = ["-m", "runtime.worker", "--app", app, "--settings-stdin"]
    proc = subprocess.Popen(
        [sys.executable, *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(msgspec.json.encode(make_settings(redis_url, key_prefix)) + b"\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith(b"READY")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            pipe.close()
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    return stderr


def test_a_worker_process_logs_into_its_apps_own_handlers(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    """The app's handler (added at import) receives the runtime's records; the worker adds
    no console handler of its own over the app's setup."""
    log_file = tmp_path / "app.log"
    env = {"LOGGING_APP_FILE": str(log_file)}
    stderr = _run_worker("tests.logging_app:app", redis_url, key_prefix, env)
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    events = [line["msg"] for line in lines if line["logger"].startswith("runtime.")]
    assert "worker.ready" in events and "worker.stopped" in events
    assert "worker.ready" not in stderr  # the app's logging setup, not ours on top of it


def test_an_apps_basic_config_is_kept_in_a_worker_process(redis_url: str, key_prefix: str) -> None:
    """The worker configured logging before importing the app: its basicConfig was a silent
    no-op (its INFO records lost, the runtime's printed in our format, not the app's)."""
    stderr = _run_worker("tests.logging_basic_app:app", redis_url, key_prefix, {})
    lines = stderr.splitlines()
    assert "APPFMT logging_basic_app INFO app imported" in lines
    assert "APPFMT runtime.worker.consumer INFO worker.ready" in lines
    assert "APPFMT runtime.worker.consumer INFO worker.stopped" in lines
    assert not [line for line in lines if "worker.ready" in line and "APPFMT" not in line]


def test_configure_keeps_an_existing_root_handler(stream: io.StringIO) -> None:
    logging.getLogger().handlers[:] = []
    app_handler = _Collect()
    logging.getLogger().addHandler(app_handler)  # an app's basicConfig, made first
    configure_logging("DEBUG", "console", stream)
    get_logger("runtime.test").debug("lease.renewed", entry="1-0")
    assert logging.getLogger().handlers == [app_handler]
    assert [r.getMessage() for r in app_handler.records] == ["lease.renewed"]
    assert stream.getvalue() == ""


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://default:s3cret@cache:6380", "rediss://default:***@cache:6380"),
        ("unix:///tmp/r.sock?db=0&password=s3cret", "unix:///tmp/r.sock?db=0&password=***"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "s3cret" not in redact_text(f"cannot reach {url} now")
