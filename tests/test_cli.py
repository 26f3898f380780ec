"""The command line, run as a real process (and in-process where a failure is simulated)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from runtime.cli import cli
from runtime.redis import openssl
from runtime.settings.docs import render_reference
from tests.conftest import OPENSSL_DIR


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_WORKER_")}
    base.pop("REDIS_URL", None)
    base["AGENTS_WORKER_REDIS_EMBEDDED_OPENSSL_DIR"] = OPENSSL_DIR
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        stdin=subprocess.DEVNULL,  # the demo waits for Enter when stdin is a terminal
        capture_output=True,
        text=True,
        env=base,
        cwd=cwd,
        timeout=60,
        check=False,
    )


@pytest.fixture
def embedded_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {"AGENTS_WORKER_REDIS_EMBEDDED_DATA_DIR": str(tmp_path / "redis")}
    yield env
    run_cli("redis", "stop", env=env)


def test_redis_lifecycle(embedded_env: dict[str, str]) -> None:
    down = run_cli("redis", "status", env=embedded_env)
    assert down.returncode == 3, down.stderr
    assert "not running" in down.stdout

    started = run_cli("redis", "start", env=embedded_env)
    assert started.returncode == 0, started.stderr
    assert "Started embedded Redis Stack" in started.stdout

    url = run_cli("redis", "url", env=embedded_env).stdout.strip()
    assert url.startswith("redis://127.0.0.1:")

    status = run_cli("redis", "status", env=embedded_env)
    assert status.returncode == 0, status.stderr
    assert "start-up to first PING" in status.stdout
    for module in ("search", "json", "timeseries", "bloom"):
        assert module in status.stdout
    doc = json.loads(run_cli("redis", "status", "--json", env=embedded_env).stdout)
    assert doc["url"] == url and doc["embedded"] is True
    assert set(doc["modules"]) == {"search", "json", "timeseries", "bloom"}
    assert 0 < doc["startup_ms"] < 2000
    assert doc["aof_enabled"] is True

    again = run_cli("redis", "start", env=embedded_env)
    assert "already running" in again.stdout

    stopped = run_cli("redis", "stop", env=embedded_env)
    assert stopped.returncode == 0 and "Stopped" in stopped.stdout
    assert run_cli("redis", "status", env=embedded_env).returncode == 3
    missing = run_cli("redis", "url", env=embedded_env)
    assert missing.returncode == 1 and "no embedded Redis is running" in missing.stderr


@pytest.mark.timeout(180)
def test_demo_on_the_embedded_default(tmp_path: Path) -> None:
    result = run_cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "No Redis URL configured: starting the embedded Redis Stack" in out
    assert "modules: search ok, json ok, timeseries ok, bloom ok" in out
    assert "Model: offline demo model" in out
    for label in ("#1", "#2", "#3", "#4"):
        assert label in out
    assert "triage → billing" in out and "triage → technical" in out
    assert "lookup_invoice()" in out and "issue_refund()" in out
    assert "Demo finished: every run completed" in out
    # the default data folder is under the current directory, and the server was stopped
    assert (tmp_path / ".agents-worker" / "redis" / "appendonlydir").is_dir()
    assert not (tmp_path / ".agents-worker" / "redis" / "server.json").exists()


@pytest.mark.timeout(180)
def test_demo_with_redis_url_starts_no_server(redis_url: str, tmp_path: Path) -> None:
    result = run_cli("--key-prefix", "demo-url", "demo", env={"REDIS_URL": redis_url}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Using Redis at {redis_url} (env REDIS_URL)" in result.stdout
    assert "Demo finished" in result.stdout
    assert not (tmp_path / ".agents-worker" / "redis").exists()

    start = run_cli("--redis-url", redis_url, "redis", "start", cwd=tmp_path)
    assert start.returncode == 0
    assert "no embedded server is started" in start.stderr
    assert not (tmp_path / ".agents-worker" / "redis").exists()


@pytest.mark.timeout(180)
def test_demo_on_plain_redis_says_what_is_missing(plain_redis_url: str, tmp_path: Path) -> None:
    result = run_cli("--key-prefix", "demo-plain", "demo", env={"REDIS_URL": plain_redis_url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "search missing, json missing, timeseries missing, bloom missing" in result.stdout
    assert "the agent runtime runs without them" in result.stdout
    assert "Demo finished" in result.stdout


def test_config_show_reports_sources(tmp_path: Path) -> None:
    config = tmp_path / "aw.toml"
    config.write_text("[worker]\nconcurrency = 4\n[supervisor]\nworkers = 3\n")
    env = {
        "AGENTS_WORKER_SUPERVISOR_WORKERS": "5",
        "REDIS_URL": "redis://:pa55word@cache:6379/0",
    }
    result = run_cli(
        "--config", str(config), "--set", "worker.lease_seconds=9", "config", "show", "--json",
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["worker.concurrency"] == {"value": 4, "source": str(config)}
    assert doc["supervisor.workers"] == {
        "value": 5,
        "source": "env AGENTS_WORKER_SUPERVISOR_WORKERS",
    }
    assert doc["worker.lease_seconds"]["source"] == "command line (worker.lease_seconds)"
    assert doc["redis.url"]["value"] == "redis://:***@cache:6379/0"
    assert doc["redis.max_connections"]["source"] == "default"
    assert "pa55word" not in result.stdout
    table = run_cli("--config", str(config), "config", "show", env=env)
    assert "pa55word" not in table.stdout and "env REDIS_URL" in table.stdout


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--config", "{cfg}"], {}, "unknown setting 'worker.concurency'"),
        ([], {"AGENTS_WORKER_WORKER_CONCURRENCY": "lots"}, "expected `int`, got `str`"),
        (["--redis-url", "http://x"], {}, "must start with redis://"),
        ([], {"AGENTS_WORKER_NOPE": "1"}, "AGENTS_WORKER_NOPE is not a setting"),
    ],
)
def test_bad_configuration_gives_one_clear_line(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[worker]\nconcurency = 4\n")
    argv = [a.replace("{cfg}", str(config)) for a in args]
    result = run_cli(*argv, "config", "check", env=env)
    assert result.returncode == 1
    assert expected in result.stderr
    assert result.stderr.startswith("Error: ")
    assert "Traceback" not in result.stderr


def test_set_needs_key_and_value() -> None:
    result = run_cli("--set", "worker.concurrency", "config", "check")
    assert result.returncode == 2
    assert "is not of the form section.key=value" in result.stderr


def test_config_docs_prints_the_reference() -> None:
    assert run_cli("config", "docs").stdout == render_reference()


def test_missing_openssl_is_one_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(openssl, "missing_libraries", lambda binary, dirs=(): ["libssl.so.1.1"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get to fetch it with
    for name in [n for n in os.environ if n.startswith("AGENTS_WORKER_") or n == "REDIS_URL"]:
        monkeypatch.delenv(name)
    args = [
        "--set", f"redis.embedded.data_dir={tmp_path / 'data'}",
        "--set", f"redis.embedded.openssl_dir={tmp_path / 'ssl'}",
        "redis", "start",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "needs OpenSSL 1.1" in result.output
    assert "apt-get is not available" in result.output
    assert "export REDIS_URL=redis://localhost:6379" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
