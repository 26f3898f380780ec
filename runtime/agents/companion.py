"""What goes on beside an agent run that lasts: its events, its lease, a cancel request.

The SDK's lifecycle hooks (:class:`Hooks`, ``Runner.run``) and stream events (:func:`convert`,
``Runner.run_streamed``) become run events handed to the :class:`Companion`, which writes
them as they come once the run lasts longer than a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import anyio
from agents import Agent, ItemHelpers, RunContextWrapper, RunHooks, Tool
from agents.items import HandoffOutputItem, MessageOutputItem, ToolCallItem, ToolCallOutputItem
from agents.stream_events import StreamEvent
from openai.types.responses import ResponseTextDeltaEvent

from runtime.agents.attempt import Attempt, handoff_events, jsonable, publish, started_event
from runtime.agents.protocol import RunEvent
from runtime.log import get_logger

__all__ = ["Cancelled", "Companion", "Hooks", "LeaseLost", "convert"]

log = get_logger(__name__)

_CANCEL_POLL = 0.25
_DELTA_BATCH = 16


class Cancelled(Exception):
    """A cancel was requested while the run ran."""


class LeaseLost(Exception):
    """The conversation's lease was lost: another attempt of this run owns it now."""


class Companion:
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

    def __init__(self, run: Attempt, scope: anyio.CancelScope, *, linger: float) -> None:
        self._run = run
        self._scope = scope
        started = {"agent": run.agent, "worker": run.ctx.consumer, "attempt": run.ctx.attempt + 1}
        self._buffer = [RunEvent(type="run.started", data=started, at=run.started_at)]
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._renew_at = time.monotonic() + run.res.turns.lease_seconds / 3
        self.begun = False
        """The record says running."""
        self.announced = False
        """``AGENT_STARTED`` was sent (it may be lost, it is not sent twice)."""
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
                        self._halt(Cancelled())
                        return
                if run.turn is not None and now >= next_renew:
                    next_renew = now + renew_every
                    if not await run.res.turns.renew(run.turn):
                        self._halt(LeaseLost())
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
        started = None if self.announced else started_event(run)
        self.announced = True  # coordination events go out at most once
        mark = run.mark()
        worker = None if self.begun else run.ctx.consumer  # until the record says running

        def fill(pipe: Any) -> None:
            run.res.runs.emit(
                pipe, run.request, batch, token=run.token, mark=mark, worker=worker,
                started_at=run.started_at,
            )  # fmt: skip
            publish(run.res, pipe, [started, *handoff_events(run, batch)])
            if worker is not None:  # the record says running from this write on: so does the feed
                run.res.observe.lifecycle(pipe, run.ctx, run.request, "running")

        try:
            await run.res.runs.write(fill)
        except Exception as exc:  # the run goes on: events are best effort
            log.warning("run.events_lost", run=run.request.run_id, error=str(exc))
            return
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


class Hooks(RunHooks[Any]):
    """Run events from the SDK's lifecycle hooks (the non-streamed path)."""

    def __init__(self, writer: Companion) -> None:
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
        output = result if jsonable(result) else str(result)
        self._writer.add("tool.output", agent=agent.name, tool=tool.name, output=output)

    async def on_handoff(
        self, context: RunContextWrapper[Any], from_agent: Agent[Any], to_agent: Agent[Any]
    ) -> None:
        self._writer.add("handoff", **{"from": from_agent.name, "to": to_agent.name})


def convert(event: StreamEvent, writer: Companion) -> None:
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
        output = item.output if jsonable(item.output) else str(item.output)
        writer.add("tool.output", agent=agent, output=output)
    elif isinstance(item, HandoffOutputItem):
        writer.add("handoff", **{"from": item.source_agent.name, "to": item.target_agent.name})
