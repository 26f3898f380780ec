"""Running one agent run in a worker: turn, session, SDK ``Runner``, events, result.

The handler of every agent target calls :func:`execute`. It

1. waits for the conversation's turn and takes its lease (:mod:`runtime.agents.turns`);
2. marks the run running in one script that also skips a run that already finished (a
   redelivered entry) and honours a cancel requested before it started;
3. runs the agent on a fenced Redis session — ``Runner.run`` with hooks that report agent
   changes, tool calls and outputs and handoffs, or ``Runner.run_streamed`` when the run asked
   for text deltas — while a writer puts its events on the run's event stream in order, off the
   run's critical path, and a watcher renews the lease and looks for a cancel request;
4. stores the result and the terminal event atomically and publishes ``AGENT_STARTED``,
   ``AGENT_COMPLETED`` / ``ERROR`` and in-run handoffs on the coordination stream.

A run that raises, times out or exceeds its turns ends with a ``failed`` result naming why. A
retryable model error (rate limit, 5xx) undoes the attempt's session items and is retried by
the worker core, keeping the run's place in the conversation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from agents import Agent, ItemHelpers, MaxTurnsExceeded, RunContextWrapper, RunHooks, Runner, Tool
from agents.items import HandoffOutputItem, MessageOutputItem, ToolCallItem, ToolCallOutputItem
from agents.run_config import RunConfig
from agents.stream_events import StreamEvent
from openai.types.responses import ResponseTextDeltaEvent

from runtime.agents.models import classify_model_error
from runtime.agents.protocol import RunEvent, RunRequest, RunResult
from runtime.agents.runs import RunStore
from runtime.agents.turns import SessionTurns, Turn
from runtime.app import TaskContext
from runtime.coordinator import EVENT_FIELD, CoordinationEvent, EventType
from runtime.errors import RetryLater
from runtime.log import get_logger
from runtime.sessions import AgentSession

__all__ = ["Resources", "execute"]

log = get_logger(__name__)

_CANCEL_POLL = 0.25
_DELTA_BATCH = 16
_LINGER = 0.05  # a plain run's events wait this long, so a quick run writes them once


@dataclasses.dataclass
class Resources:
    """What the runs of one worker process share."""

    runs: RunStore
    turns: SessionTurns
    run_config: RunConfig
    model_note: str
    publisher: Any = None
    """An AgentCoordinator to publish lifecycle events with (best effort)."""


@dataclasses.dataclass
class _Run:
    """One attempt of a run, as the outcome writers need it."""

    ctx: TaskContext
    request: RunRequest
    res: Resources
    turn: Turn | None = None
    started_at: float | None = None
    pending: list[RunEvent] = dataclasses.field(default_factory=list)
    """Events not written yet: they go out with the result."""
    writer: _EventWriter | None = None
    released: bool = False
    """The turn was released together with the result."""


class _Cancelled(Exception):
    """A cancel was requested while the run ran."""


class _LeaseLost(Exception):
    """The conversation's lease was lost: another attempt of this run owns it now."""


async def execute(ctx: TaskContext, request: RunRequest, agent: Agent[Any], res: Resources) -> None:
    """Run *request* with *agent* and record its outcome (see the module docstring)."""
    turn: Turn | None = None
    if request.session_id is not None:
        token = f"{request.run_id}:{os.urandom(4).hex()}"
        turn = await res.turns.acquire(request.session_id, request.seq, token, res.runs)
    run = _Run(ctx, request, res, turn, time.time())
    advance = True
    try:
        await _attempt(run, agent)
    except RetryLater:
        advance = False  # the retry keeps this run's place in the conversation
        raise
    finally:
        if turn is not None and not run.released:
            with anyio.CancelScope(shield=True):
                await res.turns.release(turn, advance=advance)


async def _attempt(run: _Run, agent: Agent[Any]) -> None:
    ctx, request, res, turn = run.ctx, run.request, run.res, run.turn
    started = _coordination(
        res,
        EventType.AGENT_STARTED,
        request,
        agent_name=agent.name,
        input_summary=_summary(request),
    )
    state = await res.runs.begin(
        request, ctx.consumer, agent.name, ctx.attempt + 1, also=_also(res, started)
    )
    if state == "done":
        log.info("run.already_finished", run=request.run_id)
        return
    if state == "cancel":
        await _finish(run, "cancelled", error="cancelled before it started")
        return
    session = None
    if turn is not None:
        session = AgentSession(
            turn.session_id,
            ctx.redis,
            keys=ctx.keys,
            ttl=ctx.settings.runs.session_ttl_seconds,
            fence=turn.fence,
        )
    began = time.monotonic()
    limit = ctx.settings.runs.timeout_seconds
    stream = request.stream if request.stream is not None else ctx.settings.runs.stream_deltas
    writer = _EventWriter(res, request, linger=0.0 if stream else _LINGER)
    outcome: BaseException | None = None
    result: Any = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        run_scope = anyio.CancelScope()
        watcher = _Watcher(request, res, turn, run_scope)
        tg.start_soon(watcher.run)
        with run_scope:
            try:
                with anyio.fail_after(limit):
                    result = await _run(ctx, request, agent, res, session, writer, stream=stream)
            except Exception as exc:
                outcome = exc
        run.pending, run.writer = await writer.close(), writer
        tg.cancel_scope.cancel()
    outcome = watcher.stop or outcome
    if outcome is None:
        await _completed(run, result, began)
        return
    await _settle_failure(run, session, turn, outcome, limit)


async def _settle_failure(
    run: _Run,
    session: AgentSession | None,
    turn: Turn | None,
    outcome: BaseException,
    limit: float,
) -> None:
    if isinstance(outcome, _Cancelled):
        await _finish(run, "cancelled", error="cancelled while running")
    elif isinstance(outcome, _LeaseLost):
        log.warning("run.lease_lost", run=run.request.run_id)  # the attempt that took it ends it
    elif isinstance(outcome, TimeoutError):
        await _failed(run, f"timed out after {limit:g} s", "RunTimeout")
    elif isinstance(outcome, MaxTurnsExceeded):
        await _failed(run, f"exceeded max turns: {outcome}", "MaxTurnsExceeded")
    else:
        decision = classify_model_error(outcome)
        if isinstance(decision, RetryLater):
            if session is not None and turn is not None:
                await session.rollback_to(turn.items_before)  # the retry starts from here
            event = RunEvent(type="run.retrying", data={"error": str(decision)}, at=time.time())
            await run.res.runs.emit(run.request.run_id, [event])
            raise decision from outcome
        await _failed(run, f"{type(outcome).__name__}: {outcome}", type(outcome).__name__)


async def _run(
    ctx: TaskContext,
    request: RunRequest,
    agent: Agent[Any],
    res: Resources,
    session: AgentSession | None,
    writer: _EventWriter,
    *,
    stream: bool,
) -> Any:
    config = dataclasses.replace(
        res.run_config,
        group_id=request.session_id,
        trace_metadata={"run_id": request.run_id, "worker": ctx.consumer},
    )
    max_turns = request.max_turns or ctx.settings.runs.max_turns
    if not stream:
        result = await Runner.run(
            agent, _input(request), context=request.context, max_turns=max_turns,
            run_config=config, session=session, hooks=_Hooks(writer),
        )  # fmt: skip
        for item in result.new_items:
            if isinstance(item, MessageOutputItem):
                writer.add(
                    "message", agent=item.agent.name, text=ItemHelpers.text_message_output(item)
                )
        return result
    streamed = Runner.run_streamed(
        agent, _input(request), context=request.context, max_turns=max_turns,
        run_config=config, session=session,
    )  # fmt: skip
    try:
        async for event in streamed.stream_events():
            _convert(event, writer)
    finally:
        if not streamed.is_complete:
            streamed.cancel()
    if streamed.run_loop_exception is not None:  # surfaced by the SDK after the stream ends
        raise streamed.run_loop_exception
    return streamed


class _EventWriter:
    """Puts a run's events on its stream in order, from a background task, coalescing.

    The run appends without waiting. A run that streams deltas has its events written at
    once; a plain run's events wait up to ``_LINGER`` seconds, so a quick run's events go out
    with its result in one atomic write (:meth:`close` hands back what is left) while a long
    run's events still appear live.
    """

    def __init__(self, res: Resources, request: RunRequest, *, linger: float) -> None:
        self._res = res
        self._request = request
        self._buffer: list[RunEvent] = []
        self._wake = anyio.Event()
        self._closed = False
        self._done = anyio.Event()
        self._live_at = time.monotonic() + linger

    def add(self, kind: str, **data: Any) -> None:
        self._buffer.append(RunEvent(type=kind, data=data, at=time.time()))
        if kind != "message.delta" or len(self._buffer) >= _DELTA_BATCH:
            self._wake.set()

    async def run(self) -> None:
        try:
            await anyio.sleep_until(self._live_at)
            while not self._closed:
                await self._wake.wait()
                self._wake = anyio.Event()
                if self._closed:
                    return
                batch, self._buffer = self._buffer, []
                await self._write(batch)
        finally:
            self._done.set()

    async def _write(self, batch: list[RunEvent]) -> None:
        if not batch:
            return
        try:
            await self._res.runs.emit(self._request.run_id, batch)
        except Exception as exc:  # events are best effort; the result is not
            log.warning("run.events_lost", run=self._request.run_id, error=str(exc))
        await self.after_write(batch)

    async def after_write(self, batch: list[RunEvent]) -> None:
        """Publish the handoffs among *batch* on the coordination stream."""
        for event in batch:
            if event.type == "handoff":
                await _publish(
                    self._res, "handoff_ready", str(event.data.get("from")), self._request,
                    to_agent=event.data.get("to"),
                )  # fmt: skip

    async def close(self) -> list[RunEvent]:
        """Stop the background writes; return the events not written yet, in order."""
        self._closed = True
        self._wake.set()
        if time.monotonic() >= self._live_at:  # it may be writing: let that write finish
            await self._done.wait()
        pending, self._buffer = self._buffer, []
        return pending


class _Hooks(RunHooks[Any]):
    """Run events from the SDK's lifecycle hooks (the non-streamed path)."""

    def __init__(self, writer: _EventWriter) -> None:
        self._writer = writer

    async def on_agent_start(self, context: Any, agent: Agent[Any]) -> None:
        self._writer.add("agent.updated", agent=agent.name)

    async def on_tool_start(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool
    ) -> None:
        arguments = getattr(context, "tool_arguments", None)
        self._writer.add("tool.called", agent=agent.name, tool=tool.name, arguments=arguments)

    async def on_tool_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool, result: object
    ) -> None:
        output = result if _jsonable(result) else str(result)
        self._writer.add("tool.output", agent=agent.name, tool=tool.name, output=output)

    async def on_handoff(
        self, context: RunContextWrapper[Any], from_agent: Agent[Any], to_agent: Agent[Any]
    ) -> None:
        self._writer.add("handoff", **{"from": from_agent.name, "to": to_agent.name})


class _Watcher:
    """Renews the conversation's lease and watches for a cancel request while the run runs."""

    def __init__(
        self, request: RunRequest, res: Resources, turn: Turn | None, scope: anyio.CancelScope
    ) -> None:
        self._request = request
        self._res = res
        self._turn = turn
        self._scope = scope
        self.stop: BaseException | None = None

    async def run(self) -> None:
        renew_every = self._res.turns.lease_seconds / 3
        last_renew = time.monotonic()
        while self.stop is None:
            await anyio.sleep(_CANCEL_POLL)
            if await self._res.runs.cancel_requested(self._request.run_id):
                self.stop = _Cancelled()
            elif self._turn is not None and time.monotonic() - last_renew >= renew_every:
                if not await self._res.turns.renew(self._turn):
                    self.stop = _LeaseLost()
                last_renew = time.monotonic()
        self._scope.cancel()


def _convert(event: StreamEvent, writer: _EventWriter) -> None:
    """Hand one SDK stream event to the writer as a run event (the streamed path)."""
    if event.type == "raw_response_event":
        if isinstance(event.data, ResponseTextDeltaEvent):
            writer.add("message.delta", delta=event.data.delta)
        return
    if event.type == "agent_updated_stream_event":
        writer.add("agent.updated", agent=event.new_agent.name)
        return
    item = event.item
    agent = item.agent.name
    if isinstance(item, MessageOutputItem):
        writer.add("message", agent=agent, text=ItemHelpers.text_message_output(item))
    elif isinstance(item, ToolCallItem):
        raw = item.raw_item
        name = getattr(raw, "name", None) or type(raw).__name__
        writer.add("tool.called", agent=agent, tool=name, arguments=getattr(raw, "arguments", None))
    elif isinstance(item, ToolCallOutputItem):
        output = item.output if _jsonable(item.output) else str(item.output)
        writer.add("tool.output", agent=agent, output=output)
    elif isinstance(item, HandoffOutputItem):
        writer.add("handoff", **{"from": item.source_agent.name, "to": item.target_agent.name})


def _input(request: RunRequest) -> str | list[Any]:
    if request.handoff is not None:
        context = json.dumps(request.handoff.context, default=str, ensure_ascii=False)
        note = f"Handoff from {request.handoff.from_agent}. Context: {context}"
        items: list[Any] = [{"role": "system", "content": note}]
        if request.input is not None:
            items += _as_items(request.input)
        return items
    if request.input is None:
        return []
    return request.input


def _as_items(value: str | list[dict[str, Any]]) -> list[Any]:
    return [{"role": "user", "content": value}] if isinstance(value, str) else list(value)


async def _completed(run: _Run, result: Any, began: float) -> None:
    usage = _usage(result)
    output = result.final_output
    last_agent = result.last_agent.name
    details = {
        "output_summary": str(output)[:200],
        "duration_ms": (time.monotonic() - began) * 1000,
        "tokens_used": usage.get("total_tokens", 0),
    }
    completed = _coordination(
        run.res, EventType.AGENT_COMPLETED, run.request, agent_name=last_agent, **details
    )
    await _finish(
        run, "completed", coordination=completed,
        final_output=output if _jsonable(output) else str(output),
        last_agent=last_agent, usage=usage,
    )  # fmt: skip


async def _failed(run: _Run, error: str, error_type: str) -> None:
    failed = _coordination(
        run.res, EventType.ERROR, run.request, agent_name=run.request.agent,
        error_type=error_type, error_message=error,
    )  # fmt: skip
    await _finish(run, "failed", error=error, error_type=error_type, coordination=failed)


async def _finish(
    run: _Run,
    status: str,
    *,
    final_output: Any = None,
    last_agent: str | None = None,
    usage: dict[str, int] | None = None,
    error: str | None = None,
    error_type: str | None = None,
    coordination: CoordinationEvent | None = None,
) -> None:
    """Store the result; in the same round trip publish *coordination* and end the turn."""
    request = run.request
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
        worker=run.ctx.consumer,
        submitted_at=request.submitted_at,
        started_at=run.started_at,
        finished_at=time.time(),
    )
    turn = run.turn

    async def also(pipe: Any) -> None:
        await _also(run.res, coordination)(pipe)
        if turn is not None:
            await run.res.turns.release(turn, pipe=pipe)

    await run.res.runs.finish(result, run.pending, also=also)
    run.released = True
    if run.writer is not None and run.pending:
        await run.writer.after_write(run.pending)
    log.info("run.finished", run=request.run_id, status=status, error=error)


async def _publish(res: Resources, kind: str, agent: str, request: RunRequest, **data: Any) -> None:
    """Publish a lifecycle event on the coordination stream; a failure is logged, not raised."""
    if res.publisher is None:
        return
    session = request.session_id or ""
    try:
        if kind == "agent_started":
            await res.publisher.publish_agent_started(agent, session, _summary(request))
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
                agent, str(data["to_agent"]), session, {"run_id": request.run_id, "in_run": True}
            )
    except Exception as exc:
        log.warning("coordination.publish_failed", kind=kind, error=str(exc))


def _coordination(
    res: Resources, kind: EventType, request: RunRequest, **data: Any
) -> CoordinationEvent | None:
    """A lifecycle event for the coordination stream (``None`` without a publisher)."""
    if res.publisher is None:
        return None
    return CoordinationEvent(
        type=kind, data=data, session_id=request.session_id, timestamp=time.time()
    )


def _also(res: Resources, event: CoordinationEvent | None) -> Callable[[Any], Awaitable[None]]:
    """Adds the XADD of *event* to a pipeline (best effort: a bad event is only logged)."""

    async def add(pipe: Any) -> None:
        if event is None:
            return
        try:
            key, body = res.publisher.entry(event)
        except Exception as exc:
            log.warning("coordination.publish_failed", kind=str(event.type), error=str(exc))
            return
        pipe.xadd(key, {EVENT_FIELD: body}, maxlen=res.publisher.maxlen, approximate=True)

    return add


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
