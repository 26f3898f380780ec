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
   events as they come, renews the lease and looks for a cancel request
   (:mod:`runtime.agents.companion`);
3. one that ends the turn (writing the run's items into the conversation, only when the
   run completed), stores the result with the events not written yet and the terminal
   event (on the run's stream and the lifecycle feed; when the record refuses the result,
   the run having ended already, a second round trip restates its outcome in the feed),
   publishes ``AGENT_STARTED``, ``AGENT_COMPLETED`` / ``ERROR`` and in-run handoffs
   on the coordination stream, and acks the work entry (with a script Redis refuses when
   it refuses the result).

A run that raises, times out or exceeds its turns ends with a ``failed`` result naming why,
and leaves the conversation as it was. A retryable model error (rate limit, 5xx) is retried
by the worker core from the same history, keeping the run's place in the conversation.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import anyio.lowlevel
from agents import Agent, ItemHelpers, MaxTurnsExceeded, Runner
from agents.items import MessageOutputItem
from agents.run_config import RunConfig

from runtime.agents.attempt import (
    Attempt,
    Resources,
    coordination,
    handoff_events,
    jsonable,
    publish,
    started_event,
)
from runtime.agents.companion import Cancelled, Companion, Hooks, LeaseLost, convert
from runtime.agents.conversation import TurnSession
from runtime.agents.models import classify_model_error
from runtime.agents.protocol import TERMINAL_STATUS, RunEvent, RunRequest, RunResult
from runtime.agents.turns import NOT_OURS, check_end
from runtime.app import TaskContext
from runtime.coordinator import CoordinationEvent, EventType
from runtime.dlq import REPLAY_HEADER
from runtime.errors import RetryLater
from runtime.log import get_logger
from runtime.redis.connection import first_error, translate_errors
from runtime.worker.observe import entry_time

__all__ = ["Resources", "execute"]

log = get_logger(__name__)

_LINGER = 0.05  # a plain run's events wait this long, so a quick run writes them once


async def execute(ctx: TaskContext, request: RunRequest, agent: Agent[Any], res: Resources) -> None:
    """Run *request* with *agent* and record its outcome (see the module docstring)."""
    # Let the worker send its next read first: it would otherwise go out right behind this
    # run's first round trip and hold that reply up (measured: ~0.1 ms per run).
    await anyio.lowlevel.checkpoint()
    run = Attempt(ctx, request, res, agent.name, time.time())
    state = await _start(run)
    advance = True
    try:
        await _attempt(run, agent, state)
    except BaseException:
        # the entry runs again (a retry, a write that failed, a shutdown): it keeps its place
        # in the conversation
        advance = False
        raise
    finally:
        if run.turn is not None and run.turn.holds and not run.ended:
            with anyio.CancelScope(shield=True):
                code = await res.turns.end(run.turn, advance=advance)
            if code == NOT_OURS:
                log.warning("turn.lost", session=request.session_id, run=request.run_id)


async def _start(run: Attempt) -> str:
    """Take the run's turn in its conversation (if it has one) and read whether it may
    start: ``"ok"``, ``"done"`` (over already) or ``"cancel"`` (see :meth:`RunStore.peeked`)."""
    request, res = run.request, run.res
    seq = request.seq
    marker = run.ctx.headers.get(REPLAY_HEADER)
    if marker is not None:  # a replayed dead letter: the run goes again, once per replay
        trace = run.ctx.trace.trace_id if run.ctx.trace is not None else None
        if await res.runs.requeue(request, marker, trace_id=trace) in TERMINAL_STATUS:
            log.info("run.replay_finished", run=request.run_id, replay=marker)
            return "done"  # this replay ran already: a redelivered entry
        if request.session_id is not None:
            await res.turns.reassign(request.session_id, request.run_id, marker)
            seq = None  # its new number, looked up by its id
    if request.session_id is None:
        return await res.runs.may_start(request.run_id)
    token = f"{request.run_id}:{run.token}"
    run.turn = await res.turns.acquire(
        request.session_id, request.run_id, token, res.runs,
        seq=seq, enqueued_at=entry_time(run.ctx.entry_id),
    )  # fmt: skip
    run.started_at = time.time()  # the run starts once it has its turn
    if run.turn.passed and run.turn.state == "ok":
        log.warning("turn.passed", session=request.session_id, run=request.run_id)
    return run.turn.state


async def _attempt(run: Attempt, agent: Agent[Any], state: str) -> None:
    ctx, request, res = run.ctx, run.request, run.res
    if state == "done":
        log.info("run.already_finished", run=request.run_id)
        return
    if state == "cancel":
        await _finish(run, "cancelled", error="cancelled before it started")
        return
    if run.turn is not None:
        run.session = run.turn.session()
    res.observe.started(request)
    began = time.monotonic()
    limit = ctx.settings.runs.timeout_seconds
    stream = request.stream if request.stream is not None else ctx.settings.runs.stream_deltas
    # one scope: the run's time limit, and the handle the companion stops the run with
    run_scope = anyio.CancelScope(deadline=anyio.current_time() + limit)
    companion = run.companion = Companion(run, run_scope, linger=0.0 if stream else _LINGER)
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


async def _settle_failure(run: Attempt, outcome: BaseException, limit: float) -> None:
    """End an attempt that did not complete; its conversation is left as it was."""
    if isinstance(outcome, Cancelled):
        await _finish(run, "cancelled", error="cancelled while running")
    elif isinstance(outcome, LeaseLost):
        # another attempt holds the conversation: this one writes nothing, keeps the run's
        # place and leaves its entry to the worker's fenced retry (a no-op when the entry is
        # another consumer's now), never acked as if the run were done
        log.warning("run.lease_lost", run=run.request.run_id)
        raise RetryLater(
            "another attempt holds the conversation", delay=run.res.turns.lease_seconds
        )
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
            runs, mark = run.res.runs, run.mark()
            await runs.write(
                lambda pipe: runs.emit(pipe, run.request, events, token=run.token, mark=mark)
            )
            raise decision from outcome
        await _failed(run, f"{type(outcome).__name__}: {outcome}", type(outcome).__name__)


async def _run(
    ctx: TaskContext, request: RunRequest, agent: Agent[Any], res: Resources, run: Attempt, *,
    stream: bool,
) -> Any:  # fmt: skip
    session, writer = run.session, run.companion
    assert writer is not None
    config = res.observe.config(res.run_config, ctx, request)
    try:
        return await _run_sdk(ctx, request, agent, config, session, writer, stream=stream)
    finally:
        res.observe.unbind(config)


async def _run_sdk(
    ctx: TaskContext, request: RunRequest, agent: Agent[Any], config: RunConfig,
    session: TurnSession | None, writer: Companion, *, stream: bool,
) -> Any:  # fmt: skip
    max_turns = request.max_turns or ctx.settings.runs.max_turns
    if not stream:
        result = await Runner.run(
            agent, _input(request), context=request.context, max_turns=max_turns,
            run_config=config, session=session, hooks=Hooks(writer),
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
            convert(event, writer)
    finally:
        if not streamed.is_complete:
            streamed.cancel()
    if streamed.run_loop_exception is not None:  # surfaced by the SDK after the stream ends
        raise streamed.run_loop_exception
    return streamed


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


async def _completed(run: Attempt, result: Any, began: float) -> None:
    usage = _usage(result)
    output = result.final_output
    last_agent = result.last_agent.name
    details = {
        "output_summary": str(output)[:200],
        "duration_ms": (time.monotonic() - began) * 1000,
        "tokens_used": usage.get("total_tokens", 0),
    }
    completed = coordination(
        run.res, EventType.AGENT_COMPLETED, run.request, agent_name=last_agent, **details
    )
    await _finish(
        run, "completed", coordination=completed, session=run.session,
        final_output=output if jsonable(output) else str(output),
        last_agent=last_agent, usage=usage,
    )  # fmt: skip


async def _failed(run: Attempt, error: str, error_type: str) -> None:
    failed = coordination(
        run.res, EventType.ERROR, run.request, agent_name=run.request.agent,
        error_type=error_type, error_message=error,
    )  # fmt: skip
    await _finish(run, "failed", error=error, error_type=error_type, coordination=failed)


async def _finish(
    run: Attempt,
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
    ran = writer is not None
    duration = (result.finished_at - run.started_at) * 1000 if ran and result.finished_at else None
    announced = writer is None or writer.announced
    turn = run.turn if run.turn is not None and run.turn.holds else None
    started = None if announced else started_event(run)
    events = [started, *handoff_events(run, pending), coordination]
    trace = run.ctx.trace
    observe = res.observe

    def fill(pipe: Any) -> None:
        if turn is not None:  # first: the history is complete when the result appears
            res.turns.queue_end(pipe, turn, session)
        # an attempt that ran is counted once: here, unless it was marked running (its token)
        res.runs.finish(
            pipe, result, pending, count_attempt=ran, token=run.token,
            trace_id=trace.trace_id if trace is not None else None,
        )  # fmt: skip
        publish(res, pipe, events)
        observe.lifecycle(pipe, run.ctx, request, result.status, duration_ms=duration, error=error)
        # the entry is done with: no round trip of its own for the ack (a script Redis
        # refuses, on a full Redis say, together with the result before it)
        run.ctx.ack_in(pipe)

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
        # the feed got this attempt's outcome with the refused write: the record's has the
        # last word there
        await res.runs.feed_outcome(request.run_id)
        return
    observe.finished(run.ctx, result)
    log.info("run.finished", run=request.run_id, status=status, error=error)


def _usage(result: Any) -> dict[str, int]:
    usage = result.context_wrapper.usage
    return {
        "requests": usage.requests,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }
