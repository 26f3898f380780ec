"""What the dashboard tests put in Redis: runs as the runtime writes them (record, events,
lifecycle feed, spans), a supervisor's heartbeat and dead letters."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import redis.asyncio

from runtime import Keys, Settings
from runtime.agents.protocol import RunEvent, RunRequest
from runtime.envelope import Envelope
from runtime.observability.fleet import FleetMember, WorkerInfo, publish_member, touch_targets
from runtime.observability.lifecycle import LifecycleEvent, append_lifecycle
from runtime.observability.spans import TraceRecorder, TraceSummary
from runtime.observability.tracecontext import new_trace_id

_encode = msgspec.json.Encoder().encode


async def seed_fleet(client: redis.asyncio.Redis, keys: Keys, targets: list[str]) -> None:
    """One supervisor with a busy and a ready worker, serving *targets*."""
    now = time.time()
    workers = [
        WorkerInfo("host-a:sup1:0", 101, "busy", now - 60, 12, 80.5),
        WorkerInfo("host-a:sup1:1", 102, "ready", now - 60, 7, 75.0),
    ]
    member = FleetMember("sup1", "host-a", 100, now - 61, None, targets, workers, now)
    await publish_member(client, keys, member, ttl=60)
    await touch_targets(client, keys, targets)


async def seed_run(
    client: redis.asyncio.Redis,
    keys: Keys,
    settings: Settings,
    run_id: str,
    *,
    agent: str = "triage",
    status: str = "completed",
    error: str | None = None,
    at: float | None = None,
) -> str:
    """A finished (or queued/running) run: its record, events, lifecycle events and a trace
    (submit → inbox → attempt → agent → generation, tool, handoff); returns its trace id."""
    began = (at or time.time()) - 2.0
    tid = new_trace_id()
    record: dict[str, Any] = {
        "status": status,
        "agent": agent,
        "session_id": "s-" + run_id,
        "submitted_at": began,
        "trace_id": tid,
        "attempts": 1,
    }
    if status in ("completed", "failed", "cancelled"):
        record |= {
            "started_at": began + 0.1,
            "finished_at": began + 1.1,
            "worker": "host-a:sup1:0",
            "final_output": _encode("answer to " + run_id) if status == "completed" else "null",
            "usage": _encode({"input_tokens": 12, "output_tokens": 34}),
            "error": error or "",
        }
    events = [
        RunEvent(type="run.started", data={"agent": agent}, at=began + 0.1),
        *[RunEvent(type="message.delta", data={"delta": w}, at=began + 0.2) for w in "abc"],
        RunEvent(type="message", data={"text": "abc"}, at=began + 0.3),
    ]
    if status != "queued":
        events.append(RunEvent(type=f"run.{status}", data={"status": status}, at=began + 1.1))
    async with client.pipeline(transaction=False) as pipe:
        pipe.hset(keys.run(run_id), mapping=record)
        for event in events:
            pipe.xadd(keys.run_events(run_id), {"event": _encode(event)})
        maxlen = settings.observability.events_maxlen
        for step, step_status in enumerate(_steps(status)):
            event = LifecycleEvent(
                run=run_id,
                agent=agent,
                status=step_status,  # type: ignore[arg-type]
                at=began + step * 0.5,
                session="s-" + run_id,
                trace=tid,
                worker="host-a:sup1:0" if step else None,
                duration_ms=1000.0 if step_status in ("completed", "failed") else None,
                error=error if step_status == "failed" else None,
            )
            append_lifecycle(pipe, keys, maxlen, event)
        await pipe.execute()
    await seed_trace(client, keys, settings, tid, run_id, agent, began, error=error)
    return tid


def _steps(status: str) -> list[str]:
    if status == "queued":
        return ["queued"]
    if status == "running":
        return ["queued", "running"]
    return ["queued", "running", status]


async def seed_trace(
    client: redis.asyncio.Redis,
    keys: Keys,
    settings: Settings,
    tid: str,
    run_id: str,
    agent: str,
    began: float,
    *,
    error: str | None = None,
) -> None:
    rec = TraceRecorder(keys, settings, resource={"app": "tests"})
    attrs = {"run_id": run_id, "agent": agent}
    submit = rec.span(tid, f"submit {agent}", "submit", start=began, end=began + 0.01, attrs=attrs)
    rec.span(tid, "inbox", "inbox", parent_id=submit.span_id, start=began + 0.01, end=began + 0.1)
    attempt = rec.span(
        tid, "attempt 1", "attempt", parent_id=submit.span_id, start=began + 0.1, attrs=attrs
    )
    top = rec.span(tid, f"agent: {agent}", "agent", parent_id=attempt.span_id, start=began + 0.1)
    rec.span(
        tid,
        "generation: demo",
        "generation",
        parent_id=top.span_id,
        start=began + 0.15,
        end=began + 0.5,
        attrs={"usage": {"input_tokens": 12, "output_tokens": 34}},
    )
    rec.span(
        tid,
        "function: lookup",
        "function",
        parent_id=top.span_id,
        start=began + 0.5,
        end=began + 0.7,
        error=error,
    )
    rec.span(
        tid, "handoff: a → b", "handoff", parent_id=top.span_id, start=began + 0.7, end=began + 0.71
    )
    rec.end_span(top, end=began + 1.0)
    rec.end_span(attempt, end=began + 1.1, error=error)
    summary = TraceSummary(
        trace_id=tid,
        name=f"submit {agent}",
        run_id=run_id,
        agent=agent,
        start=began,
        end=began + 1.1,
        status="error" if error else "ok",
        error=error,
        spans=7,
    )
    rec.end_trace(summary)
    await rec.flush(client)


async def seed_letter(
    client: redis.asyncio.Redis, keys: Keys, run_id: str, *, agent: str = "triage"
) -> None:
    """A dead letter holding an agent run's envelope (the run's record says failed)."""
    request = RunRequest(run_id=run_id, agent=agent, input="hello", submitted_at=time.time())
    envelope = Envelope(id=run_id, target=agent, payload=msgspec.to_builtins(request))
    await client.hset(
        keys.run(run_id), mapping={"status": "failed", "agent": agent, "error": "it broke"}
    )
    await client.xadd(
        keys.dlq(agent),
        {
            "envelope": msgspec.json.encode(envelope),
            "reason": "max_deliveries",
            "detail": "delivered 3 times",
            "error": "it broke",
            "target": agent,
            "task_id": run_id,
            "entry_id": "1-0",
            "deliveries": "3",
            "attempts": "3",
            "consumer": "host-a:sup1:0",
            "failed_at": repr(time.time()),
        },
    )
