"""The observability commands against a real Redis: ``runs list|show|cancel`` and
``status --watch`` (``trace`` and ``metrics`` are in test_cli_observability_traces.py).

Data is seeded with the owners' writer functions (the lifecycle feed's ``append_lifecycle``,
the fleet's ``publish_member``) or made by real runs of an in-process worker; the commands run
in a subprocess, as an operator runs them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
import redis.asyncio

from runtime import Keys
from runtime.agents import AgentClient
from runtime.observability.fleet import FleetMember, WorkerInfo, publish_member, touch_targets
from runtime.observability.lifecycle import LifecycleEvent, append_lifecycle
from runtime.redis.embedded import EmbeddedRedis
from tests.agent_apps import make_app
from tests.conftest import OPENSSL_DIR, free_port, make_settings
from tests.helpers import running_worker, wait_until
from tests.test_cli import run_cli

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli_args(redis_url: str, keys: Keys) -> list[str]:
    return ["--redis-url", redis_url, "--key-prefix", keys.prefix]


async def _feed(client: redis.asyncio.Redis, keys: Keys, *events: LifecycleEvent) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for event in events:
            append_lifecycle(pipe, keys, 10_000, event)
        await pipe.execute()


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command in a subprocess, off the event loop (an in-process worker keeps running)."""
    return await anyio.to_thread.run_sync(lambda: run_cli(*args))


async def test_runs_list_newest_first_with_filters(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys
) -> None:
    empty = run_cli(*cli_args, "runs", "list")
    assert empty.returncode == 0, empty.stderr
    assert "No runs recorded yet." in empty.stdout
    now = time.time()
    tid = "ab" * 16
    await _feed(
        client, keys,
        LifecycleEvent(run="r-1", agent="triage", status="queued", at=now - 30, session="s-1"),
        LifecycleEvent(run="r-2", agent="billing", status="queued", at=now - 20),
        LifecycleEvent(run="r-1", agent="triage", status="running", at=now - 19, worker="h:1:0"),
        LifecycleEvent(
            run="r-1", agent="triage", status="completed", at=now - 18, worker="h:1:0",
            duration_ms=1234.5, session="s-1", trace=tid,
        ),
        LifecycleEvent(run="r-2", agent="billing", status="running", at=now - 10),
        LifecycleEvent(
            run="r-2", agent="billing", status="failed", at=now - 9, error="ValueError: no",
            duration_ms=12.0,
        ),
        LifecycleEvent(run="r-3", agent="triage", status="queued", at=now - 1),
    )  # fmt: skip

    doc = json.loads(run_cli(*cli_args, "runs", "list", "--json").stdout)
    assert [(r["run_id"], r["status"]) for r in doc] == [
        ("r-3", "queued"), ("r-2", "failed"), ("r-1", "completed")
    ]  # fmt: skip
    done = doc[2]
    assert done["trace_id"] == tid and done["duration_ms"] == 1234.5
    assert done["session"] == "s-1" and done["worker"] == "h:1:0" and done["agent"] == "triage"
    assert doc[1]["error"] == "ValueError: no"

    failed = json.loads(run_cli(*cli_args, "runs", "list", "--status", "failed", "--json").stdout)
    assert [r["run_id"] for r in failed] == ["r-2"]
    triage = json.loads(run_cli(*cli_args, "runs", "list", "--agent", "triage", "--json").stdout)
    assert [r["run_id"] for r in triage] == ["r-3", "r-1"]
    one = json.loads(run_cli(*cli_args, "runs", "list", "--limit", "1", "--json").stdout)
    assert [r["run_id"] for r in one] == ["r-3"]

    table = run_cli(*cli_args, "runs", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    row = {run: next(line for line in lines if run in line) for run in ("r-1", "r-2", "r-3")}
    assert lines.index(row["r-3"]) < lines.index(row["r-2"]) < lines.index(row["r-1"])
    assert "completed" in row["r-1"] and "1.23 s" in row["r-1"] and " s ago" in row["r-1"]
    assert "failed" in row["r-2"] and "ValueError: no" in row["r-2"]
    none = run_cli(*cli_args, "runs", "list", "--status", "cancelled", "--agent", "triage")
    assert "No recent run matches --status cancelled --agent triage." in none.stdout
    bad = run_cli(*cli_args, "runs", "list", "--status", "lost")
    assert bad.returncode == 2 and "'lost' is not one of" in bad.stderr


async def test_runs_show_a_real_run_and_its_events(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys, redis_url: str
) -> None:
    app, _model = make_app()
    settings = make_settings(redis_url, keys.prefix)
    async with running_worker(settings, client, "show:0", serving=app):
        handle = await AgentClient(client, keys=keys, settings=settings).run(
            "triage", "hello there", session_id="conv-7"
        )
        result = await handle.result(timeout=30)
        assert result.ok
        shown = await cli(*cli_args, "runs", "show", handle.run_id, "--json")
        table = await cli(*cli_args, "runs", "show", handle.run_id)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    run = doc["run"]
    assert run["run_id"] == handle.run_id and run["status"] == "completed"
    assert run["agent"] == "triage" and run["session_id"] == "conv-7"
    assert run["final_output"] == "reply to hello there"
    assert run["worker"] == "show:0" and run["attempts"] == 1
    assert run["duration_ms"] is not None and run["duration_ms"] >= 0
    types = [event["type"] for event in doc["events"]]
    assert types[0] == "run.started" and types[-1] == "run.completed"
    assert "message" in types
    assert table.returncode == 0, table.stderr
    for text in (handle.run_id, "completed", "conv-7", "reply to hello there", "run.started"):
        assert text in table.stdout, text
    assert "Events (" in table.stdout


async def test_runs_show_and_cancel_refuse_unknown_and_malformed_ids(
    cli_args: list[str],
) -> None:
    unknown = run_cli(*cli_args, "runs", "show", "no-such-run")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "Error: no run 'no-such-run' (unknown, or its record expired)"
    gone = run_cli(*cli_args, "runs", "cancel", "no-such-run")
    assert gone.returncode == 1 and "no run 'no-such-run'" in gone.stderr
    for command in ("show", "cancel"):
        malformed = run_cli(*cli_args, "runs", command, "a{b}")
        assert malformed.returncode == 2, malformed.stderr
        assert "Invalid value for 'RUN_ID'" in malformed.stderr
        assert "Traceback" not in malformed.stderr


async def test_runs_cancel_says_what_happened(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys, redis_url: str
) -> None:
    settings = make_settings(redis_url, keys.prefix)
    runs = AgentClient(client, keys=keys, settings=settings)
    queued = await runs.run("triage", "wait for me")
    said = run_cli(*cli_args, "runs", "cancel", queued.run_id)
    assert said.returncode == 0, said.stderr
    assert f"cancel requested: run {queued.run_id} is queued" in said.stdout

    app, _model = make_app(delay=30)  # every model call takes 30 s: the run is running
    async with running_worker(settings, client, "cancel:0", serving=app):
        assert (await queued.result(timeout=30)).status == "cancelled"
        running = await runs.run("triage", "stop me")

        async def started() -> bool:
            return await client.hget(keys.run(running.run_id), "status") == b"running"

        await wait_until(started, what="the run to start")
        said = await cli(*cli_args, "runs", "cancel", running.run_id)
        assert said.returncode == 0, said.stderr
        assert f"cancel requested: run {running.run_id} is running" in said.stdout
        result = await running.result(timeout=30)
    assert result.status == "cancelled"
    again = run_cli(*cli_args, "runs", "cancel", running.run_id)
    assert again.returncode == 1
    assert f"run {running.run_id} already ended (cancelled): nothing to cancel" in again.stderr


async def test_observability_commands_say_redis_is_down_in_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    for args in (
        ["runs", "list"], ["runs", "show", "r-1"], ["runs", "cancel", "r-1"],
        ["trace", "r-1"], ["metrics"], ["status"], ["status", "--watch"],
    ):  # fmt: skip
        down = run_cli("--redis-url", url, *args)
        assert down.returncode == 1, (args, down.stdout, down.stderr)
        assert down.stderr.startswith("Error: ") and "cannot reach Redis" in down.stderr, args
        assert len(down.stderr.strip().splitlines()) == 1, (args, down.stderr)


def _member(instance: str, *workers: WorkerInfo, targets: list[str]) -> FleetMember:
    now = time.time()
    return FleetMember(
        instance=instance, host="box", pid=4242, started_at=now - 60, http="127.0.0.1:8080",
        targets=targets, workers=list(workers), seen=now,
    )  # fmt: skip


async def test_status_shows_the_fleet(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys
) -> None:
    await client.xadd(keys.inbox("triage"), {"v": "1"})
    started = time.time() - 90
    workers = [
        WorkerInfo("box:sup1:0", 5001, "busy", started, 17, 81.4),
        WorkerInfo("box:sup1:1", 5002, "paused", started, 3, None),
    ]
    await publish_member(client, keys, _member("box:sup1", *workers, targets=["triage"]), ttl=30)
    shown = run_cli(*cli_args, "status")
    assert shown.returncode == 0, shown.stderr
    assert "Fleet: 1 supervisor(s), 2 worker(s)" in shown.stdout
    busy = next(line for line in shown.stdout.splitlines() if "box:sup1:0" in line)
    assert "busy" in busy and "5001" in busy and "17" in busy and "81 MiB" in busy
    assert "box:sup1 (pid 4242)" in shown.stdout and "127.0.0.1:8080" in shown.stdout
    assert "paused" in shown.stdout
    doc = json.loads(run_cli(*cli_args, "status", "--json").stdout)
    assert [(s["target"], s["length"]) for s in doc] == [("triage", 1)]  # unchanged format


def _watch(url: str, prefix: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_WORKER_")}
    env.pop("REDIS_URL", None)
    env["AGENTS_WORKER_REDIS_EMBEDDED_OPENSSL_DIR"] = OPENSSL_DIR
    command = ["--redis-url", url, "--key-prefix", prefix, "status", "--watch", *args]
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", *command],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip


def _read_until(proc: subprocess.Popen[str], marker: str, times: int) -> str:
    """stdout until *marker* was seen *times* times (each line read blocks: the test's
    own timeout bounds it)."""
    assert proc.stdout is not None
    seen, lines = 0, []
    while seen < times:
        line = proc.stdout.readline()
        assert line, f"the command ended early: {proc.stderr.read() if proc.stderr else ''}"
        lines.append(line)
        seen += marker in line
    return "".join(lines)


def _scans(url: str) -> int:
    import redis

    with redis.Redis.from_url(url) as plain:
        stats = plain.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


@pytest.mark.parametrize("as_json", [False, True])
async def test_status_watch_without_a_terminal_prints_each_interval_without_scanning(
    own_server: tuple[EmbeddedRedis, str], keys: Keys, as_json: bool
) -> None:
    """Off a terminal each refresh is printed (a log keeps them all); with the targets known
    (the fleet's set), no refresh scans for inbox streams; Ctrl-C ends it (status 130)."""
    _server, url = own_server
    async with redis.asyncio.Redis.from_url(url) as client:
        await client.xadd(keys.inbox("triage"), {"v": "1"})
        await client.xadd(keys.inbox("triage"), {"v": "2"})
        await touch_targets(client, keys, ["triage"])
        member = _member("box:w", WorkerInfo("box:w:0", 7, "ready", time.time(), 0, 50.0),
                         targets=["triage"])  # fmt: skip
        await publish_member(client, keys, member, ttl=30)
        before = _scans(url)
        proc = _watch(url, keys.prefix, "--interval", "0.2", *(["--json"] if as_json else []))
        try:
            marker = '"target": "triage"' if as_json else "Inbox streams at"
            out = await anyio.to_thread.run_sync(lambda: _read_until(proc, marker, 3))
            await client.xadd(keys.inbox("triage"), {"v": "3"})
            more = await anyio.to_thread.run_sync(lambda: _read_until(proc, marker, 2))
            proc.send_signal(signal.SIGINT)
            code = await anyio.to_thread.run_sync(lambda: proc.wait(30))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        assert code == 130
        assert _scans(url) == before  # three refreshes and more, not one SCAN
    if as_json:
        docs = [json.loads(line) for line in (out + more).splitlines()]
        assert docs[0][0]["target"] == "triage" and docs[0][0]["length"] == 2
        assert docs[-1][0]["length"] == 3  # refreshed: the new entry is seen
    else:
        assert "box:w:0" in out and "ready" in out  # the fleet, each time
        assert "│ triage │ 3" in more or any(
            "triage" in line and " 3 " in line for line in more.splitlines()
        )


def _on_terminal(url: str, prefix: str, terminal: int) -> subprocess.Popen[bytes]:
    """``status --watch`` with a terminal (*terminal*, a pty) as its stdio."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_WORKER_")}
    for name in ("REDIS_URL", "NO_COLOR"):
        env.pop(name, None)
    env.update(AGENTS_WORKER_REDIS_EMBEDDED_OPENSSL_DIR=OPENSSL_DIR, COLUMNS="120", LINES="40")
    command = ["--redis-url", url, "--key-prefix", prefix, "status", "--watch", "--interval", "0.2"]
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", *command],
        stdin=terminal, stdout=terminal, stderr=terminal, env=env, cwd=ROOT,
    )  # fmt: skip


def _read_pty(fd: int, marker: bytes, times: int) -> bytes:
    out = b""
    while out.count(marker) < times:
        chunk = os.read(fd, 65536)
        assert chunk, out.decode(errors="replace")
        out += chunk
    return out


async def test_status_watch_on_a_terminal_redraws_in_place(
    own_server: tuple[EmbeddedRedis, str], keys: Keys
) -> None:
    """On a terminal the view is redrawn in place (rich Live), still without scanning."""
    import pty

    _server, url = own_server
    async with redis.asyncio.Redis.from_url(url) as client:
        await client.xadd(keys.inbox("triage"), {"v": "1"})
        await touch_targets(client, keys, ["triage"])
    before = _scans(url)
    leader, follower = pty.openpty()
    proc = _on_terminal(url, keys.prefix, follower)
    os.close(follower)
    try:
        out = await anyio.to_thread.run_sync(lambda: _read_pty(leader, b"Inbox streams at", 3))
        proc.send_signal(signal.SIGINT)
        code = await anyio.to_thread.run_sync(lambda: proc.wait(30))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    assert code == 130
    assert b"\x1b[1A" in out or b"\x1b[2K" in out  # the cursor goes back up: a redraw
    assert b"triage" in out
    assert _scans(url) == before


async def test_status_watch_scans_only_while_no_target_is_known(
    own_server: tuple[EmbeddedRedis, str], keys: Keys
) -> None:
    _server, url = own_server
    async with redis.asyncio.Redis.from_url(url) as client:
        await client.xadd(keys.inbox("orphan"), {"v": "1"})
        proc = _watch(url, keys.prefix, "--interval", "0.2", "--json")
        try:
            out = await anyio.to_thread.run_sync(lambda: _read_until(proc, "orphan", 1))
        finally:
            proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    assert json.loads(out.splitlines()[-1])[0]["target"] == "orphan"


async def test_status_watch_goes_on_through_a_redis_outage(
    own_server: tuple[EmbeddedRedis, str], keys: Keys
) -> None:
    """A Redis that stops while watched is said once per refresh, and the view comes back
    when it does; the watch does not end (it did: the first failed read ended it, exit 1)."""
    server, url = own_server
    async with redis.asyncio.Redis.from_url(url) as client:
        await client.xadd(keys.inbox("triage"), {"v": "1"})
        await touch_targets(client, keys, ["triage"])
    proc = _watch(url, keys.prefix, "--interval", "0.2", "--json")
    assert proc.stderr is not None
    try:
        await anyio.to_thread.run_sync(lambda: _read_until(proc, "triage", 1))
        await anyio.to_thread.run_sync(server.stop)
        said = await anyio.to_thread.run_sync(proc.stderr.readline)
        assert "cannot reach Redis" in said and "trying again every 0.2 s" in said, said
        await anyio.to_thread.run_sync(server.start)  # empty: no AOF, the stream is gone
        async with redis.asyncio.Redis.from_url(url) as client:
            await client.xadd(keys.inbox("triage"), {"v": "2"})
            await client.xadd(keys.inbox("triage"), {"v": "3"})
        back = await anyio.to_thread.run_sync(lambda: _read_until(proc, '"length": 2', 1))
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert json.loads(back.splitlines()[-1])[0]["length"] == 2
