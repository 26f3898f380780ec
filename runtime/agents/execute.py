"""Running one agent run in a worker: turn, session, SDK ``Runner``, events, result.

The handler of every agent target calls :func:`execute`. One run costs two round trips of
its own:

1. one that takes the conversation's turn and its lease, reads the history, and reads
   whether the run is over already (a redelivered entry) or was cancelled before it started
   (:mod:`runtime.agents.turns`; a run without a conversation only reads the latter);
2. the agent runs on a :class:`~runtime.agents.conversation.TurnSession` (the history as
   read, the run's writes held back) — ``Runner.run`` with hooks that report agent changes,
   tool calls and outputs and handoffs, or ``Runner.run_streamed`` when the run asked for
   text deltas; a run that lasts longer than a moment gets a companion task that writes its
   events as they come, renews the lease and looks for a cancel request;
3. one that ends the turn (writing the run's items into the conversation, only when the
   run completed), stores the result with the events not written yet and the terminal
   event, publishes ``AGENT_STARTED``, ``AGENT_COMPLETED`` / ``ERROR`` and in-run handoffs
   on the coordination stream, and acks the work entry.

A run that raises, times out or exceeds its turns ends with a ``failed`` result naming why,
and leaves the conversation as it was. A retryable model error (rate limit, 5xx) is retried
by the worker core from the same history, keeping the run's place in the conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from typing import Any

import anyio
import anyio.lowlevel
from agents import Agent, ItemHelpers, MaxTurnsExceeded, RunContextWrapper, RunHooks, Runner, Tool
from agents.items import HandoffOutputItem, MessageOutputItem, ToolCallItem, ToolCallOutputItem
from agents.run_config import RunConfig
from agents.stream_events import StreamEvent
from openai.types.responses import ResponseTextDeltaEvent

from runtime.agents.conversation import TurnSession
from runtime.agents.models import classify_model_error
from runtime.agents.protocol import RunEvent, RunRequest, RunResult
from runtime.agents.runs import RunStore
from runtime.agents.turns import NOT_OURS, SessionTurns, Turn, check_end
from runtime.app import TaskContext
from runtime.coordinator import EVENT_FIELD, CoordinationEvent, EventType
from runtime.errors import RetryLater
from runtime.log import get_logger
from runtime.redis.connection import first_error, translate_errors

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
    agent: str
    started_at: float
    turn: Turn | None = None
    session: TurnSession | None = None
    companion: _Companion | None = None
    ended: bool = False
    """The turn was ended together with the result."""


class _Cancelled(Exception):
    """A cancel was requested while the run ran."""


class _LeaseLost(Exception):
    """The conversation's lease was lost: another attempt of this run owns it now."""


async def execute(ctx: TaskContext, request: RunRequest, agent: Agent[Any], res: Resources) -> None:
    """Run *request* with *agent* and record its outcome (see the module docstring)."""
    # Let the worker send its next read first: it would otherwise go out right behind this
    # run's first round trip and hold that reply up (measured: ~0.1 ms per run).
    await anyio.lowlevel.checkpoint()
    run = _Run(ctx, request, res, agent.name, time.time())
    if request.session_id is not None:
        token = f"{request.run_id}:{os.urandom(4).hex()}"
        run.turn = await res.turns.acquire(
            request.session_id, request.run_id, token, res.runs,
            seq=request.seq, submitted_at=request.submitted_at or ctx.created_at,
        )  # fmt: skip
        state = run.turn.state
        run.started_at = time.time()  # the run starts once it has its turn
        if run.turn.passed and state == "ok":
            log.warning("turn.passed", session=request.session_id, run=request.run_id)
    else:
        state = await res.runs.may_start(request.run_id)
    advance = True
    try:
        await _attempt(run, agent, state)
    except RetryLater:
        advance = False  # the retry keeps this run's place in the conversation
        raise
    finally:
        if run.turn is not None and run.turn.holds and not run.ended:
            with anyio.CancelScope(shield=True):
                code = await res.turns.end(run.turn, advance=advance)
            if code == NOT_OURS:
                log.warning("turn.lost", session=request.session_id, run=request.run_id)


async def _attempt(run: _Run, agent: Agent[Any], state: str) -> None:
    ctx, request, res = run.ctx, run.request, run.res
    if state == "done":
        log.info("run.already_finished", run=request.run_id)
        return
    if state == "cancel":
        await _finish(run, "cancelled", error="cancelled before it started")
        return
    if run.turn is not None:
        run.session = run.turn.session()
    began = time.monotonic()
    limit = ctx.settings.runs.timeout_seconds
    stream = request.stream if request.stream is not None else ctx.settings.runs.stream_deltas
    # one scope: the run's time limit, and the handle the companion stops the run with
    run_scope = anyio.CancelScope(deadline=anyio.current_time() + limit)
    companion = run.companion = _Companion(run, run_scope, linger=0.0 if stream else _LINGER)
    outcome: BaseException | None = None
    result: Any = None
    try:
        with run_scope:
            try:
                result = await _run(ctx, request, agent, res, run, stream=stream)
            except Exception as exc:
                outcome = exc
    finally:
        await companion.close()
    if companion.stop is not None:
        outcome = companion.stop
    elif run_scope.cancelled_caught:
        outcome = TimeoutError(f"timed out after {limit:g} s")
    if outcome is None:
        await _completed(run, result, began)
        return
    await _settle_failure(run, outcome, limit)


async def _settle_failure(run: _Run, outcome: BaseException, limit: float) -> None:
    """End an attempt that did not complete; its conversation is left as it was."""
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
            # nothing of this attempt is in the conversation: the retry starts from the same
            # history; its events so far are kept, with a note
            events = run.companion.pending() if run.companion is not None else []
            note = {"error": str(decision)}
            events.append(RunEvent(type="run.retrying", data=note, at=time.time()))
            runs, run_id = run.res.runs, run.request.run_id
            await runs.write(lambda pipe: runs.emit(pipe, run_id, events))
            raise decision from outcome
        await _failed(run, f"{type(outcome).__name__}: {outcome}", type(outcome).__name__)


async def _run(
    ctx: TaskContext, request: RunRequest, agent: Agent[Any], res: Resources, run: _Run, *,
    stream: bool,
) -> Any:  # fmt: skip
    session, writer = run.session, run.companion
    assert writer is not None
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


class _Companion:
    """What goes on beside a run that lasts: its events written as they come, its
    conversation's lease renewed, a cancel request looked for.

    The run appends events without waiting. Nothing starts before ``linger`` seconds, so a
    quick run costs no task and no round trip here: its events go out with its result in
    one atomic write (:meth:`pending` hands back what is left). After that a task writes new
    events at once (text deltas in batches), renews the lease every third of its time and
    polls for a cancel every ``_CANCEL_POLL`` seconds; a cancel or a lost lease stops the run
    (``stop`` says why). Its first write also marks the run running and publishes
    ``AGENT_STARTED``; a run that ends before does both with its result.
    """

    def __init__(self, run: _Run, scope: anyio.CancelScope, *, linger: float) -> None:
        self._run = run
        self._scope = scope
        started = {"agent": run.agent, "worker": run.ctx.consumer, "attempt": run.ctx.attempt + 1}
        self._buffer = [RunEvent(type="run.started", data=started, at=run.started_at)]
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._renew_at = time.monotonic() + run.res.turns.lease_seconds / 3
        self.begun = False
        """The record says running and ``AGENT_STARTED`` went out."""
        self.stop: BaseException | None = None
        """Why the run was stopped from here (a cancel request, a lost lease)."""
        # redis.asyncio runs on asyncio only: a timer, not a task per run, until it lasts
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(linger, self._start) if linger > 0 else None
        if linger <= 0:
            self._start()

    def _start(self) -> None:
        if not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def add(self, kind: str, **data: Any) -> None:
        self._buffer.append(RunEvent(type=kind, data=data, at=time.time()))
        if kind != "message.delta" or len(self._buffer) >= _DELTA_BATCH:
            self._wake.set()

    async def _loop(self) -> None:
        run = self._run
        renew_every = run.res.turns.lease_seconds / 3
        next_poll, next_renew = time.monotonic(), self._renew_at  # the run lasts: look now
        while not self._closed:
            try:
                if self._buffer:
                    batch, self._buffer = self._buffer, []
                    await self._write(batch)
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + _CANCEL_POLL
                    if await run.res.runs.cancel_requested(run.request.run_id):
                        self._halt(_Cancelled())
                        return
                if run.turn is not None and now >= next_renew:
                    next_renew = now + renew_every
                    if not await run.res.turns.renew(run.turn):
                        self._halt(_LeaseLost())
                        return
            except Exception as exc:  # Redis away for a moment: the run goes on
                log.warning("run.companion_failed", run=run.request.run_id, error=str(exc))
            with contextlib.suppress(TimeoutError):
                wait = max(0.0, min(next_poll, next_renew) - time.monotonic())
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    def _halt(self, why: BaseException) -> None:
        self.stop = why
        self._scope.cancel()

    async def _write(self, batch: list[RunEvent]) -> None:
        run = self._run
        started = None if self.begun else _started(run)

        def fill(pipe: Any) -> None:
            if started is not None:
                run.res.runs.begin(pipe, run.request, run.ctx.consumer, run.started_at)
            run.res.runs.emit(pipe, run.request.run_id, batch)
            _publish(run.res, pipe, [started, *_handoffs(run, batch)])

        try:
            await run.res.runs.write(fill)
        except Exception as exc:  # events are best effort (a retry could repeat them)
            log.warning("run.events_lost", run=run.request.run_id, error=str(exc))
        self.begun = True

    async def close(self) -> None:
        """Stop (letting a write in flight finish); the run is over."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._wake.set()
            with anyio.CancelScope(shield=True):
                await self._task

    def pending(self) -> list[RunEvent]:
        """The events not written yet, in order (after :meth:`close`)."""
        pending, self._buffer = self._buffer, []
        return pending


class _Hooks(RunHooks[Any]):
    """Run events from the SDK's lifecycle hooks (the non-streamed path)."""

    def __init__(self, writer: _Companion) -> None:
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


def _convert(event: StreamEvent, writer: _Companion) -> None:
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
        run, "completed", coordination=completed, session=run.session,
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
    session: TurnSession | None = None,
) -> None:
    """End the attempt in one round trip: end the turn (writing what *session* changed: only
    a completed run's items go into the conversation), store the result with the events not
    written yet, and publish the coordination events."""
    request, res, writer = run.request, run.res, run.companion
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
        started_at=run.started_at if writer is not None else None,
        finished_at=time.time(),
    )
    pending = writer.pending() if writer is not None else []
    begun = writer is None or writer.begun
    turn = run.turn if run.turn is not None and run.turn.holds else None
    events = [None if begun else _started(run), *_handoffs(run, pending), coordination]

    def fill(pipe: Any) -> None:
        if turn is not None:  # first: the history is complete when the result appears
            res.turns.queue_end(pipe, turn, session)
        res.runs.finish(pipe, result, pending, count_attempt=not begun)
        _publish(res, pipe, events)
        run.ctx.ack_in(pipe)  # the entry is done with: no round trip of its own for the ack

    replies = await res.runs.write(fill)
    run.ended = True
    essential = replies[: 2 if turn is not None else 1]  # the turn's end, the result
    with translate_errors("store a run result"):
        first_error(essential)
    for reply in replies[len(essential) :]:
        if isinstance(reply, Exception):
            log.warning("run.finish_side_write_failed", run=request.run_id, error=str(reply))
    stored = essential[-1]
    if turn is not None and (why := check_end(turn.session_id, replies[0])) is not None:
        log.warning("run.turn_not_written", run=request.run_id, why=why)
    if not stored:
        log.warning("run.finished_elsewhere", run=request.run_id)
        return
    log.info("run.finished", run=request.run_id, status=status, error=error)


def _started(run: _Run) -> CoordinationEvent | None:
    return _coordination(
        run.res, EventType.AGENT_STARTED, run.request,
        agent_name=run.agent, input_summary=_summary(run.request),
    )  # fmt: skip


def _handoffs(run: _Run, events: list[RunEvent]) -> list[CoordinationEvent | None]:
    """``HANDOFF_READY`` for the in-run handoffs among *events* (the run goes on itself)."""
    context = {"run_id": run.request.run_id, "in_run": True}
    return [
        _coordination(
            run.res,
            EventType.HANDOFF_READY,
            run.request,
            from_agent=str(event.data.get("from")),
            to_agent=event.data.get("to"),
            context=context,
        )
        for event in events
        if event.type == "handoff"
    ]


def _coordination(
    res: Resources, kind: EventType, request: RunRequest, **data: Any
) -> CoordinationEvent | None:
    """A lifecycle event for the coordination stream (``None`` without a publisher)."""
    if res.publisher is None:
        return None
    return CoordinationEvent(
        type=kind, data=data, session_id=request.session_id, timestamp=time.time()
    )


def _publish(res: Resources, pipe: Any, events: list[CoordinationEvent | None]) -> None:
    """Queue the XADDs of *events* on *pipe* (best effort: a bad event is only logged)."""
    for event in events:
        if event is None:
            continue
        try:
            key, body = res.publisher.entry(event)
        except Exception as exc:
            log.warning("coordination.publish_failed", kind=str(event.type), error=str(exc))
            continue
        pipe.xadd(key, {EVENT_FIELD: body}, maxlen=res.publisher.maxlen, approximate=True)


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
