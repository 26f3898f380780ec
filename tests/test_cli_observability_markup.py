"""The observability commands print run data as text, never as rich markup.

Run ids, agents, sessions, errors, results, event texts, targets and instance names are data:
``[/INST]`` (common in open-model output) must not end a command with a ``MarkupError``, and
``[bold red]x[/]`` or ``[link=…]y[/link]`` must be printed as written, not as a style or a
hyperlink. Data is seeded with the owners' writers; the commands run in a subprocess.
"""

from __future__ import annotations

import subprocess
import time

import pytest
import redis.asyncio

from runtime import Keys, Settings
from runtime.agents.protocol import RunEvent, RunResult
from runtime.agents.runs import RunStore
from runtime.observability.fleet import FleetMember, WorkerInfo, publish_member
from runtime.observability.lifecycle import LifecycleEvent, append_lifecycle
from runtime.observability.spans import TraceRecorder, TraceSummary
from runtime.observability.tracecontext import new_trace_id
from tests.conftest import make_settings
from tests.test_cli import run_cli

pytestmark = pytest.mark.anyio

TEXT = "[/INST] [bold red]x[/] [link=http://e]y[/link]"
"""Free text (an error, a result, a message): every kind of markup at once."""
CLOSE, STYLE, LINK = "[/INST]", "[bold]s[/]", "[link=e]y[/link]"
"""Names (no whitespace or ':', so valid ids) that rich would read as markup."""
RUN = "r-[/INST]"
WIDE = {"COLUMNS": "400"}  # no cell wrapped: each text is on one line


@pytest.fixture
def cli_args(redis_url: str, keys: Keys) -> list[str]:
    return ["--redis-url", redis_url, "--key-prefix", keys.prefix]


@pytest.fixture
def fast(redis_url: str, keys: Keys) -> Settings:
    return make_settings(redis_url, keys.prefix)


def shown(*args: str) -> str:
    """The command's output; it must have succeeded without a traceback."""
    done: subprocess.CompletedProcess[str] = run_cli(*args, env=WIDE)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def assert_literal(output: str, *texts: str) -> None:
    for text in texts:
        assert text in output, (text, output)


async def test_runs_list_prints_markup_in_run_data_literally(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys
) -> None:
    now = time.time()
    async with client.pipeline(transaction=False) as pipe:
        for status, at in (("queued", now - 3), ("running", now - 2)):
            event = LifecycleEvent(run=RUN, agent=CLOSE, status=status, at=at, session=STYLE)
            append_lifecycle(pipe, keys, 10_000, event)
        failed = LifecycleEvent(
            run=RUN, agent=CLOSE, status="failed", at=now - 1, session=STYLE, worker=LINK,
            error=TEXT, duration_ms=5.0,
        )  # fmt: skip
        append_lifecycle(pipe, keys, 10_000, failed)
        await pipe.execute()

    table = shown(*cli_args, "runs", "list")
    row = next(line for line in table.splitlines() if RUN in line)
    assert_literal(row, CLOSE, STYLE, LINK, TEXT)
    filtered = shown(*cli_args, "runs", "list", "--agent", CLOSE)
    assert_literal(filtered, RUN, TEXT)
    none = shown(*cli_args, "runs", "list", "--agent", STYLE)
    assert f"No recent run matches --agent {STYLE}." in none


async def test_runs_show_prints_markup_in_the_record_and_events_literally(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys, fast: Settings
) -> None:
    store = RunStore(client, keys, fast.runs)
    now = time.time()
    result = RunResult(
        run_id=RUN, status="failed", agent=CLOSE, session_id=STYLE, final_output=TEXT,
        last_agent=LINK, usage={STYLE: 3}, error=TEXT, error_type=CLOSE, worker=LINK,
        submitted_at=now - 3, started_at=now - 2, finished_at=now - 1,
    )  # fmt: skip
    events = [
        RunEvent(type="message", data={"agent": CLOSE, "text": TEXT}, at=now - 1.9),
        RunEvent(
            type="tool.called",
            data={"agent": CLOSE, "tool": STYLE, "arguments": LINK},
            at=now - 1.8,
        ),
        RunEvent(type="tool.output", data={"output": TEXT}, at=now - 1.7),
        RunEvent(type="handoff", data={"from": CLOSE, "to": LINK}, at=now - 1.6),
        RunEvent(type="agent.updated", data={"agent": TEXT}, at=now - 1.5),
    ]
    await store.write(lambda pipe: store.finish(pipe, result, events, trace_id=CLOSE))

    output = shown(*cli_args, "runs", "show", RUN)
    lines = output.splitlines()

    def row(name: str) -> str:
        return next(line for line in lines if line.startswith(name))

    assert_literal(row("run"), RUN)
    assert_literal(row("agent"), f"{CLOSE} (last: {LINK})")
    assert_literal(row("session"), STYLE)
    assert_literal(row("trace"), CLOSE)
    assert_literal(row("worker"), LINK)
    assert_literal(row("usage"), f"{STYLE} 3")
    assert_literal(row("result"), TEXT)
    assert_literal(row("error"), f"{TEXT} ({CLOSE})")
    assert_literal(output, f"{CLOSE}: {TEXT}", f"{CLOSE} → {STYLE}({LINK})", f"← {TEXT}")
    assert_literal(output, f"{CLOSE} → {LINK}", f'{{"agent": "{TEXT}"}}')
    failed = next(line for line in lines if "run.failed" in line)
    assert_literal(failed, TEXT)
    cancel = run_cli(*cli_args, "runs", "cancel", RUN, env=WIDE)
    assert cancel.returncode == 1 and "Traceback" not in cancel.stderr
    assert f"run {RUN} already ended (failed)" in cancel.stderr


async def test_runs_cancel_prints_a_markup_run_id_literally(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys, fast: Settings
) -> None:
    await client.hset(keys.run(RUN), mapping={"status": "running", "agent": CLOSE})
    output = shown(*cli_args, "runs", "cancel", RUN)
    assert f"cancel requested: run {RUN} is running" in output
    assert f"`agents-worker runs show {RUN}`" in output


async def test_status_and_metrics_print_markup_in_names_literally(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys
) -> None:
    await client.xadd(keys.inbox(CLOSE), {"v": "1"})
    await client.xgroup_create(keys.inbox(CLOSE), "workers", id="0")
    await client.xreadgroup("workers", STYLE, {keys.inbox(CLOSE): ">"})
    await client.xadd(keys.dlq(CLOSE), {"reason": "x"})
    now = time.time()
    worker = WorkerInfo(LINK, 5001, "busy", now - 60, 3, 40.0)
    member = FleetMember(
        instance=CLOSE, host="box", pid=4242, started_at=now - 60, http=STYLE,
        targets=[CLOSE], workers=[worker], seen=now,
    )  # fmt: skip
    await publish_member(client, keys, member, ttl=30)

    status = shown(*cli_args, "status")
    inbox = next(line for line in status.splitlines() if CLOSE in line and "pending" in line)
    assert_literal(inbox, f"{STYLE} (1 pending")
    fleet = next(line for line in status.splitlines() if LINK in line)
    assert_literal(fleet, f"{CLOSE} (pid 4242)", STYLE, LINK, "busy")

    metrics = shown(*cli_args, "metrics")
    assert any(
        line.split("│")[1].strip() == CLOSE for line in metrics.splitlines()[1:] if "│" in line
    )


async def test_trace_prints_markup_in_span_data_literally(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys, fast: Settings
) -> None:
    rec = TraceRecorder(keys, fast, resource={"worker": "w1"})
    tid = new_trace_id()
    t0 = time.time() - 5
    root = rec.span(tid, TEXT, CLOSE, start=t0, end=t0 + 1)
    usage = {"input_tokens": STYLE, "output_tokens": LINK}
    rec.span(
        tid, CLOSE, STYLE, parent_id=root.span_id, start=t0 + 0.1, end=t0 + 0.5,
        attrs={"usage": usage}, error=TEXT,
    )  # fmt: skip
    rec.end_trace(
        TraceSummary(
            trace_id=tid, name=TEXT, run_id=RUN, agent=CLOSE, start=t0, end=t0 + 1,
            status="error", spans=2,
        )
    )  # fmt: skip
    await rec.flush(client)
    await client.hset(keys.run(RUN), mapping={"status": "failed", "trace_id": tid})

    output = shown(*cli_args, "trace", RUN)
    lines = output.splitlines()
    assert lines[0].startswith(f"Trace {tid} · {TEXT} · run {RUN} · agent {CLOSE} · error")
    root_row = next(line for line in lines if TEXT in line and "│" in line)
    assert_literal(root_row, CLOSE)
    child = next(line for line in lines if f"{CLOSE} ✗" in line)
    assert_literal(child, STYLE, f"{STYLE} → {LINK}")
    assert lines[-1].startswith(f"✗ {CLOSE} (+") and lines[-1].endswith(f"): {TEXT}")
