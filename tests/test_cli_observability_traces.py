"""``agents-worker trace`` and ``agents-worker metrics`` against a real Redis.

Spans are written with the tracing owner's :class:`TraceRecorder`, metric samples with the
metrics owner's :class:`MetricsRecorder` (or by real runs of an in-process worker); the
commands run in a subprocess, as an operator runs them.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis.asyncio

from runtime import Keys, Settings
from runtime.agents import AgentClient
from runtime.agents.client import RunHandle
from runtime.observability.metrics import MetricsRecorder
from runtime.observability.spans import TraceRecorder, TraceSummary
from runtime.observability.timeseries import MetricsStore
from runtime.observability.trace_store import TraceStore
from runtime.observability.tracecontext import new_trace_id
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until
from tests.test_cli import run_cli

pytestmark = pytest.mark.anyio


@pytest.fixture
def cli_args(redis_url: str, keys: Keys) -> list[str]:
    return ["--redis-url", redis_url, "--key-prefix", keys.prefix]


@pytest.fixture
def fast(redis_url: str, keys: Keys) -> Settings:
    return make_settings(redis_url, keys.prefix)


async def _seed_trace(
    client: redis.asyncio.Redis, keys: Keys, settings: Settings, run_id: str
) -> str:
    """A run's trace as the worker writes it: submit, inbox, an attempt, two agents with a
    handoff, a model call, a failed tool call and a span still running."""
    rec = TraceRecorder(keys, settings, resource={"worker": "w1"})
    tid = new_trace_id()
    t0 = time.time() - 5
    submit = rec.span(tid, "submit triage", "submit", start=t0, end=t0 + 0.002)
    rec.span(tid, "inbox", "inbox", parent_id=submit.span_id, start=t0 + 0.002, end=t0 + 0.05)
    attempt = rec.span(
        tid, "attempt 1", "attempt", parent_id=submit.span_id, start=t0 + 0.05, end=t0 + 1.5
    )
    triage = rec.span(
        tid, "agent: triage", "agent", parent_id=attempt.span_id, start=t0 + 0.06, end=t0 + 0.7
    )
    rec.span(
        tid, "generation: gpt-4o", "generation", parent_id=triage.span_id, start=t0 + 0.07,
        end=t0 + 0.5, attrs={"usage": {"input_tokens": 120, "output_tokens": 30}},
    )  # fmt: skip
    rec.span(
        tid, "handoff: triage → billing", "handoff", parent_id=triage.span_id,
        start=t0 + 0.5, end=t0 + 0.5,
    )  # fmt: skip
    billing = rec.span(
        tid, "agent: billing", "agent", parent_id=attempt.span_id, start=t0 + 0.7, end=t0 + 1.49
    )
    rec.span(
        tid, "function: lookup_invoice", "function", parent_id=billing.span_id,
        start=t0 + 0.8, end=t0 + 0.9, error="KeyError: 1042",
    )  # fmt: skip
    rec.span(tid, "still going", "custom", parent_id=billing.span_id, start=t0 + 1.2)
    rec.end_trace(
        TraceSummary(
            trace_id=tid, name="triage", run_id=run_id, agent="triage", start=t0,
            end=t0 + 1.5, status="ok", spans=9,
        )
    )  # fmt: skip
    await rec.flush(client)
    await client.hset(keys.run(run_id), mapping={"status": "completed", "trace_id": tid})
    return tid


EXPECTED_TREE = [
    (0, "submit triage"),
    (1, "inbox"),
    (1, "attempt 1"),
    (2, "agent: triage"),
    (3, "generation: gpt-4o"),
    (3, "handoff: triage → billing"),
    (2, "agent: billing"),
    (3, "function: lookup_invoice"),
    (3, "still going"),
]


async def test_trace_shows_the_span_tree_with_timings(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys, fast: Settings
) -> None:
    tid = await _seed_trace(client, keys, fast, "run-42")

    doc = json.loads(run_cli(*cli_args, "trace", "run-42", "--json").stdout)
    assert doc["trace"]["trace_id"] == tid and doc["trace"]["run_id"] == "run-42"
    spans = doc["spans"]
    assert [(s["depth"], s["name"]) for s in spans] == EXPECTED_TREE
    by_name = {s["name"]: s for s in spans}
    assert by_name["submit triage"]["offset_ms"] == 0
    assert by_name["attempt 1"]["offset_ms"] == pytest.approx(50, abs=0.01)
    assert by_name["attempt 1"]["duration_ms"] == pytest.approx(1450, abs=0.01)
    assert by_name["still going"]["duration_ms"] is None
    assert by_name["function: lookup_invoice"]["error"] == "KeyError: 1042"
    assert by_name["agent: triage"]["parent_id"] == by_name["attempt 1"]["span_id"]

    for given in ("run-42", tid, f"trace_{tid}"):  # a run id, a trace id, the SDK's form
        shown = run_cli(*cli_args, "trace", given)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines()[0].startswith(f"Trace {tid} · triage · run run-42")
    lines = shown.stdout.splitlines()
    rows = [next(line for line in lines if name in line) for _, name in EXPECTED_TREE]
    assert [lines.index(row) for row in rows] == sorted(lines.index(row) for row in rows)
    assert "├─ inbox" in rows[1] and "└─ attempt 1" in rows[2]
    assert "│  └─ handoff: triage → billing" in rows[5]
    failed = rows[7]
    assert "function: lookup_invoice ✗" in failed and "+800 ms" in failed
    assert "100 ms" in failed and "█" in failed
    assert lines[-1] == "✗ function: lookup_invoice (+800 ms): KeyError: 1042"  # in full
    assert "120 → 30" in rows[4]
    assert "running" in rows[8] and "▒" in rows[8]
    assert "9 spans" in lines[0] and "1.50 s" in lines[0] and "1 failed" in lines[0]
    narrow = run_cli(*cli_args, "trace", "run-42", env={"COLUMNS": "80"}).stdout.splitlines()
    table = [line for line in narrow if line[:1] in "┏┃┡│└"]
    assert max(len(line) for line in table) <= 80  # the kind and tokens columns left out
    assert "kind" not in table[1] and "waterfall" in table[1]
    assert narrow[-1] == "✗ function: lookup_invoice (+800 ms): KeyError: 1042"


async def test_trace_refuses_what_it_cannot_show(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys
) -> None:
    unknown = run_cli(*cli_args, "trace", "no-such-run")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "Error: no run or trace 'no-such-run' (unknown, or expired)"
    await client.hset(keys.run("untraced"), "status", "completed")
    untraced = run_cli(*cli_args, "trace", "untraced")
    assert untraced.returncode == 1
    assert "run untraced has no trace (it ran with tracing off)" in untraced.stderr
    gone = run_cli(*cli_args, "trace", "cd" * 16)
    assert gone.returncode == 1 and f"no spans of trace {'cd' * 16}" in gone.stderr
    malformed = run_cli(*cli_args, "trace", "a:b")
    assert malformed.returncode == 2 and "Invalid value for 'RUN_ID'" in malformed.stderr
    for result in (unknown, untraced, gone, malformed):
        assert "Traceback" not in result.stderr


def _record_fleet(keys: Keys, settings: Settings, clock: float) -> list[MetricsRecorder]:
    """Two worker processes' records at the time *clock*: 2 × 10 triage runs (latency
    100..109 ms, 120 tokens in and 30 out per model call), billing failures, tool calls and
    retries."""
    recorders = []
    for process in ("box:1:0", "box:1:1"):
        m = MetricsRecorder(keys, settings, process=process, clock=lambda: clock)
        for i in range(10):
            m.count("runs_completed", 1, agent="triage")
            m.observe("run_latency", 100 + i, agent="triage")
            m.count("model_calls", 1, agent="triage", model="gpt-4o")
            m.count("tokens_in", 120, agent="triage", model="gpt-4o")
            m.count("tokens_out", 30, agent="triage", model="gpt-4o")
        m.count("runs_failed", 2, agent="billing")
        m.count("tool_calls", 3, agent="billing", tool="lookup_invoice")
        m.count("retries", 4, target="billing")
        recorders.append(m)
    return recorders


TRIAGE = {
    "agent": "triage", "runs_completed": 20.0, "runs_failed": 0.0, "model_calls": 20.0,
    "tokens_in": 2400.0, "tokens_out": 600.0, "tool_calls": 0.0, "avg_latency_ms": 104.5,
}  # fmt: skip
BILLING = {
    "agent": "billing", "runs_completed": 0.0, "runs_failed": 4.0, "model_calls": 0.0,
    "tokens_in": 0.0, "tokens_out": 0.0, "tool_calls": 6.0, "avg_latency_ms": None,
}  # fmt: skip


async def test_metrics_per_agent_and_inbox_totals_and_a_window(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys, fast: Settings
) -> None:
    empty = run_cli(*cli_args, "metrics")
    assert empty.returncode == 0, empty.stderr
    assert "No metrics recorded yet" in empty.stdout
    assert "history is off" not in empty.stderr  # Redis Stack: TimeSeries is there

    for m in _record_fleet(keys, fast, time.time() - 2 * 3600):  # two hours ago
        await m.flush(client)
    await client.xadd(keys.inbox("billing"), {"v": "1"})
    await client.xadd(keys.dlq("billing"), {"reason": "x"})

    doc = json.loads(run_cli(*cli_args, "metrics", "--json").stdout)
    assert doc["history"] is True and doc["window_s"] is None
    assert doc["agents"] == [BILLING, TRIAGE]
    [billing] = doc["inboxes"]  # read live: the inboxes there are
    assert billing["target"] == "billing" and billing["length"] == 1 and billing["dlq"] == 1
    assert billing["retries"] == 8.0

    hour = json.loads(run_cli(*cli_args, "metrics", "--window", "1h", "--json").stdout)
    assert hour["window_s"] == 3600
    assert all(row[k] == 0 for row in hour["agents"] for k in ("runs_completed", "runs_failed"))
    day = json.loads(run_cli(*cli_args, "metrics", "--window", "3h", "--json").stdout)
    assert day["agents"] == [BILLING, TRIAGE] and day["inboxes"][0]["retries"] == 8.0

    table = run_cli(*cli_args, "metrics", "--window", "3h")
    assert table.returncode == 0, table.stderr
    assert "Agents (last 3 h)" in table.stdout
    triage = next(line for line in table.stdout.splitlines() if "triage" in line)
    assert [cell.strip() for cell in triage.split("│")[1:-1]] == [
        "triage", "20", "0", "104 ms", "2,400", "600", "20", "0"
    ]  # fmt: skip
    bad = run_cli(*cli_args, "metrics", "--window", "15x")
    assert bad.returncode == 2 and "'15x' is not a window such as 90s, 15m" in bad.stderr


async def test_metrics_without_timeseries_says_history_is_off(plain_redis_url: str) -> None:
    """On a Redis without the module the totals are shown, and why there is no window."""
    keys = Keys(f"awtest:{uuid.uuid4().hex[:12]}")
    settings = make_settings(plain_redis_url, keys.prefix)
    args = ["--redis-url", plain_redis_url, "--key-prefix", keys.prefix]
    async with redis.asyncio.Redis.from_url(plain_redis_url) as client:
        try:
            for m in _record_fleet(keys, settings, time.time()):
                await m.flush(client)
            shown = run_cli(*args, "metrics", "--window", "15m")
            doc = json.loads(run_cli(*args, "metrics", "--window", "15m", "--json").stdout)
        finally:
            found = [key async for key in client.scan_iter(match=f"{keys.prefix}:*")]
            if found:
                await client.delete(*found)
    assert shown.returncode == 0, shown.stderr
    assert "Metrics history is off: this Redis has no TimeSeries module." in shown.stderr
    assert "Agents (since the deployment began)" in shown.stdout
    assert doc["history"] is False and doc["window_s"] is None
    assert doc["agents"] == [BILLING, TRIAGE]


async def test_real_runs_in_runs_list_trace_and_metrics(
    cli_args: list[str], client: redis.asyncio.Redis, keys: Keys, redis_url: str
) -> None:
    """Two runs of the 3-agent app (one fails in its last agent) through an in-process
    worker: the lifecycle feed, the span tree and the fleet's figures the commands show."""
    from tests.observability_apps import INPUT_TOKENS, OUTPUT_TOKENS, make_app

    settings = make_settings(redis_url, keys.prefix, observability__flush_interval_seconds="0.05")
    runs = AgentClient(client, keys=keys, settings=settings)
    async with running_worker(settings, client, serving=make_app()):
        good = await runs.run("triage", "refund order 42")
        bad = await runs.run("triage", "boom")
        assert (await good.result(timeout=20)).status == "completed"
        assert (await bad.result(timeout=20)).status == "failed"

        async def flushed() -> bool:
            totals = {(t.metric, tuple(t.labels.items())): t.value for t in await
                      MetricsStore(client, keys).totals()}  # fmt: skip
            spans = await TraceStore(client, keys).get_spans(await _trace_of(client, keys, bad))
            return totals.get(("model_calls", (("agent", "triage"),))) == 8 and any(
                s.kind == "agent" and s.status == "error" for s in spans
            )

        await wait_until(flushed, what="the metrics and spans flushed")
    listed = json.loads(run_cli(*cli_args, "runs", "list", "--json").stdout)
    rows = {r["run_id"]: r for r in listed}  # the two ran at once: either may end first
    assert [r["at"] for r in listed] == sorted((r["at"] for r in listed), reverse=True)
    assert len(listed) == 2 and {r["agent"] for r in listed} == {"triage"}
    assert rows[good.run_id]["status"] == "completed" and rows[bad.run_id]["status"] == "failed"
    assert rows[good.run_id]["trace_id"] == await _trace_of(client, keys, good)
    assert "refunds broke" in rows[bad.run_id]["error"]
    shown = run_cli(*cli_args, "runs", "show", good.run_id)
    assert f"agents-worker trace {good.run_id}" in shown.stdout

    tree = json.loads(run_cli(*cli_args, "trace", good.run_id, "--json").stdout)
    spans = tree["spans"]
    assert (spans[0]["depth"], spans[0]["name"]) == (0, "submit triage")
    ids = {s["span_id"]: s for s in spans}
    for span in spans[1:]:  # every other span hangs under its parent, one level down
        assert ids[span["parent_id"]]["depth"] == span["depth"] - 1
    names = [s["name"] for s in spans]
    for name in ("inbox", "attempt 1", "function: lookup_order"):
        assert name in names
    assert {s["kind"] for s in spans} >= {"agent", "generation", "function", "handoff"}
    text = run_cli(*cli_args, "trace", bad.run_id)
    assert text.returncode == 0, text.stderr
    assert "refunds broke" in text.stdout and "attempt 1" in text.stdout

    figures = json.loads(run_cli(*cli_args, "metrics", "--json").stdout)
    [triage] = [row for row in figures["agents"] if row["agent"] == "triage"]
    tokens_in = 2 * (INPUT_TOKENS["triage"] + 2 * INPUT_TOKENS["billing"]) + INPUT_TOKENS["refunds"]
    assert triage == {
        "agent": "triage", "runs_completed": 1.0, "runs_failed": 1.0, "model_calls": 8.0,
        "tokens_in": float(tokens_in), "tokens_out": 7.0 * OUTPUT_TOKENS, "tool_calls": 2.0,
        "avg_latency_ms": triage["avg_latency_ms"],
    }  # fmt: skip
    assert triage["avg_latency_ms"] is not None and triage["avg_latency_ms"] > 0
    assert [box["target"] for box in figures["inboxes"]] == ["billing", "refunds", "triage"]


async def _trace_of(client: redis.asyncio.Redis, keys: Keys, handle: RunHandle) -> str:
    return (await client.hget(keys.run(handle.run_id), "trace_id") or b"").decode()
