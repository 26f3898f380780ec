"""Running one agent run in a worker: turn, session, SDK ``Runner``, events, result.

The handler of every agent target calls :func:`execute`. It

1. skips a run that already finished (a redelivered entry) and honours a cancel requested
   before it started;
2. waits for the conversation's turn and takes its lease (:mod:`runtime.agents.turns`);
3. runs the agent with ``Runner.run_streamed`` on a fenced Redis session, publishing the
   stream's events (agent changes, tool calls and outputs, handoffs, text deltas) on the run's
   event stream, renewing the lease and watching for a cancel request meanwhile;
4. stores the result and the terminal event atomically and publishes ``AGENT_COMPLETED`` /
   ``ERROR`` on the coordination stream.

A run that raises, times out or exceeds its turns ends with a ``failed`` result naming why. A
retryable model error (rate limit, 5xx) undoes the attempt's session items and is retried by
the worker core, keeping the run's place in the conversation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from agents import Agent, ItemHelpers, MaxTurnsExceeded, Runner
from agents.items import (
    HandoffOutputItem,
    MessageOutputItem,
    ToolCallItem,
    ToolCallOutputItem,
)
from agents.run_config import RunConfig
from agents.stream_events import StreamEvent
from openai.types.responses import ResponseTextDeltaEvent

from runtime.agents.models import classify_model_error
from runtime.agents.protocol import TERMINAL_STATUS, RunEvent, RunRequest, RunResult
from runtime.agents.runs import RunStore
from runtime.agents.turns import SessionTurns, Turn
from runtime.app import TaskContext
from runtime.errors import RetryLater
from runtime.log import get_logger
from runtime.sessions import AgentSession

__all__ = ["Resources", "execute"]

log = get_logger(__name__)

_CANCEL_POLL = 0.25
_DELTA_BATCH = 16


@dataclass
class Resources:
    """What the runs of one worker process share."""

    runs: RunStore
    turns: SessionTurns
    run_config: RunConfig
    model_note: str
    publisher: Any = None
    """An AgentCoordinator to publish lifecycle events with (best effort)."""
    started: float = field(default_factory=time.monotonic)


class _Cancelled(Exception):
    """A cancel was requested while the run ran."""


class _LeaseLost(Exception):
    """The conversation's lease was lost: another attempt of this run owns it now."""


async def execute(ctx: TaskContext, request: RunRequest, agent: Agent[Any], res: Resources) -> None:
    """Run *request* with *agent* and record its outcome (see the module docstring)."""
    status = await res.runs.status(request.run_id)
    if status.get("status") in TERMINAL_STATUS:
        log.info("run.already_finished", run=request.run_id, status=status["status"])
        return
    if status.get("cancel_requested"):
        await _finish(ctx, request, res, "cancelled", error="cancelled before it started")
        return
    turn: Turn | None = None
    if request.session_id is not None:
        token = f"{request.run_id}:{os.urandom(4).hex()}"
        turn = await res.turns.acquire(request.session_id, request.seq, token, res.runs)
    advance = True
    try:
        await _attempt(ctx, request, agent, res, turn)
    except RetryLater:
        advance = False  # the retry keeps this run's place in the conversation
        raise
    finally:
        if turn is not None:
            with anyio.CancelScope(shield=True):
                await res.turns.release(turn, advance=advance)


async def _attempt(
    ctx: TaskContext, request: RunRequest, agent: Agent[Any], res: Resources, turn: Turn | None
) -> None:
    session = None
    before = 0
    if turn is not None:
        session = AgentSession(
            turn.session_id,
            ctx.redis,
            keys=ctx.keys,
            ttl=ctx.settings.runs.session_ttl_seconds,
            fence=turn.fence,
        )
        before = await session.length()
    await res.runs.start(request.run_id, request, ctx.consumer)
    await res.runs.emit(
        request.run_id,
        [RunEvent(type="run.started", data={"agent": agent.name, "worker": ctx.consumer,
                                            "attempt": ctx.attempt + 1}, at=time.time())],
    )  # fmt: skip
    await _publish(res, "agent_started", agent.name, request, input_summary=_summary(request))
    began = time.monotonic()
    limit = ctx.settings.runs.timeout_seconds
    try:
        result = await _run_streamed(ctx, request, agent, res, session, turn, limit)
    except _Cancelled:
        await _finish(ctx, request, res, "cancelled", error="cancelled while running")
        return
    except _LeaseLost:
        log.warning("run.lease_lost", run=request.run_id)  # the attempt that took it finishes
        return
    except TimeoutError:
        await _failed(ctx, request, res, f"timed out after {limit:g} s", "RunTimeout")
        return
    except MaxTurnsExceeded as exc:
        await _failed(ctx, request, res, f"exceeded max turns: {exc}", "MaxTurnsExceeded")
        return
    except Exception as exc:
        decision = classify_model_error(exc)
        if isinstance(decision, RetryLater):
            if session is not None:
                await session.rollback_to(before)  # the retry starts from the same history
            await res.runs.emit(
                request.run_id,
                [RunEvent(type="run.retrying", data={"error": str(decision)}, at=time.time())],
            )
            raise decision from exc
        await _failed(ctx, request, res, f"{type(exc).__name__}: {exc}", type(exc).__name__)
        return
    usage = _usage(result)
    output = result.final_output
    await _finish(
        ctx, request, res, "completed",
        final_output=output if _jsonable(output) else str(output),
        last_agent=result.last_agent.name, usage=usage,
    )  # fmt: skip
    await _publish(
        res, "agent_completed", result.last_agent.name, request,
        output_summary=str(output)[:200], duration_ms=(time.monotonic() - began) * 1000,
        tokens_used=usage.get("total_tokens", 0),
    )  # fmt: skip


async def _run_streamed(
    ctx: TaskContext,
    request: RunRequest,
    agent: Agent[Any],
    res: Resources,
    session: AgentSession | None,
    turn: Turn | None,
    limit: float,
) -> Any:
    run_config = _config_for(res.run_config, request, ctx)
    max_turns = request.max_turns or ctx.settings.runs.max_turns
    streamed = Runner.run_streamed(
        agent,
        _input(request),
        context=request.context,
        max_turns=max_turns,
        run_config=run_config,
        session=session,
    )
    stop: BaseException | None = None
    error: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal stop
            stop = await _watch(request, res, turn)
            streamed.cancel()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            with anyio.fail_after(limit):
                await _pump(streamed, request, res, ctx.settings.runs.stream_deltas)
        except Exception as exc:  # re-raised below, outside the task group (no ExceptionGroup)
            error = exc
        tg.cancel_scope.cancel()
    if stop is not None:
        raise stop
    if error is not None:
        raise error
    return streamed


async def _watch(request: RunRequest, res: Resources, turn: Turn | None) -> BaseException:
    """Return (never raise) why the run must stop: a cancel request or a lost lease."""
    renew_every = res.turns.lease_seconds / 3
    last_renew = time.monotonic()
    while True:
        await anyio.sleep(_CANCEL_POLL)
        if await res.runs.cancel_requested(request.run_id):
            return _Cancelled()
        if turn is not None and time.monotonic() - last_renew >= renew_every:
            if not await res.turns.renew(turn):
                return _LeaseLost()
            last_renew = time.monotonic()


async def _pump(streamed: Any, request: RunRequest, res: Resources, deltas: bool) -> None:
    """Publish the SDK's stream events on the run's event stream, in order."""
    buffer: list[RunEvent] = []
    async for event in streamed.stream_events():
        converted = _convert(event, deltas)
        if converted is None:
            continue
        buffer.append(converted)
        if converted.type != "message.delta" or len(buffer) >= _DELTA_BATCH:
            await res.runs.emit(request.run_id, buffer)
            buffer = []
        if converted.type == "handoff":
            await _publish(
                res, "handoff_ready", converted.data.get("from", ""), request,
                to_agent=converted.data.get("to", ""),
            )  # fmt: skip
    await res.runs.emit(request.run_id, buffer)
    if streamed.run_loop_exception is not None:  # surfaced by the SDK after the stream ends
        raise streamed.run_loop_exception


def _convert(event: StreamEvent, deltas: bool) -> RunEvent | None:
    now = time.time()
    if event.type == "raw_response_event":
        if deltas and isinstance(event.data, ResponseTextDeltaEvent):
            return RunEvent(type="message.delta", data={"delta": event.data.delta}, at=now)
        return None
    if event.type == "agent_updated_stream_event":
        return RunEvent(type="agent.updated", data={"agent": event.new_agent.name}, at=now)
    item = event.item
    agent = item.agent.name
    if isinstance(item, MessageOutputItem):
        text = ItemHelpers.text_message_output(item)
        return RunEvent(type="message", data={"agent": agent, "text": text}, at=now)
    if isinstance(item, ToolCallItem):
        raw = item.raw_item
        name = getattr(raw, "name", None) or type(raw).__name__
        arguments = getattr(raw, "arguments", None)
        data = {"agent": agent, "tool": name, "arguments": arguments}
        return RunEvent(type="tool.called", data=data, at=now)
    if isinstance(item, ToolCallOutputItem):
        output = item.output if _jsonable(item.output) else str(item.output)
        return RunEvent(type="tool.output", data={"agent": agent, "output": output}, at=now)
    if isinstance(item, HandoffOutputItem):
        data = {"from": item.source_agent.name, "to": item.target_agent.name}
        return RunEvent(type="handoff", data=data, at=now)
    return None


def _input(request: RunRequest) -> str | list[Any]:
    if request.handoff is not None:
        note = (
            f"Handoff from {request.handoff.from_agent}. Context: {_json(request.handoff.context)}"
        )
        items: list[Any] = [{"role": "system", "content": note}]
        if request.input is not None:
            items += _as_items(request.input)
        return items
    if request.input is None:
        return []
    return request.input


def _as_items(value: str | list[dict[str, Any]]) -> list[Any]:
    return [{"role": "user", "content": value}] if isinstance(value, str) else list(value)


def _config_for(base: RunConfig, request: RunRequest, ctx: TaskContext) -> RunConfig:
    return dataclasses.replace(
        base,
        group_id=request.session_id,
        trace_metadata={"run_id": request.run_id, "worker": ctx.consumer},
    )


async def _failed(
    ctx: TaskContext, request: RunRequest, res: Resources, error: str, error_type: str
) -> None:
    await _finish(ctx, request, res, "failed", error=error, error_type=error_type)
    await _publish(res, "error", request.agent, request, error_type=error_type, error_message=error)


async def _finish(
    ctx: TaskContext,
    request: RunRequest,
    res: Resources,
    status: str,
    *,
    final_output: Any = None,
    last_agent: str | None = None,
    usage: dict[str, int] | None = None,
    error: str | None = None,
    error_type: str | None = None,
) -> None:
    result = RunResult(
        run_id=request.run_id,
        status=status,  # type: ignore[arg-type]
        agent=request.agent,
        session_id=request.session_id,
        final_output=final_output,
        last_agent=last_agent,
        usage=usage or {},
        error=error,
        error_type=error_type,
        worker=ctx.consumer,
        submitted_at=request.submitted_at,
        finished_at=time.time(),
    )
    data = {"status": status, "final_output": final_output, "last_agent": last_agent,
            "usage": usage or {}, "error": error, "error_type": error_type}  # fmt: skip
    await res.runs.finish(result, RunEvent(type=f"run.{status}", data=data, at=time.time()))
    log.info("run.finished", run=request.run_id, status=status, error=error)


async def _publish(res: Resources, kind: str, agent: str, request: RunRequest, **data: Any) -> None:
    """Publish a lifecycle event on the coordination stream; a failure is logged, not raised."""
    if res.publisher is None:
        return
    session = request.session_id or ""
    try:
        if kind == "agent_started":
            await res.publisher.publish_agent_started(agent, session, data["input_summary"])
        elif kind == "agent_completed":
            await res.publisher.publish_agent_completed(
                agent, session, data["output_summary"], data["duration_ms"], data["tokens_used"]
            )
        elif kind == "error":
            await res.publisher.publish_error(
                session, data["error_type"], data["error_message"], agent_name=agent
            )
        elif kind == "handoff_ready":
            await res.publisher.publish_handoff_ready(
                agent, data["to_agent"], session, {"run_id": request.run_id, "in_run": True}
            )
    except Exception as exc:
        log.warning("coordination.publish_failed", kind=kind, error=str(exc))


def _summary(request: RunRequest) -> str:
    if request.handoff is not None:
        return f"handoff from {request.handoff.from_agent}"
    return str(request.input)[:200]


def _usage(result: Any) -> dict[str, int]:
    usage = result.context_wrapper.usage
    return {
        "requests": usage.requests,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | dict)


def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)
