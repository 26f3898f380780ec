"""One attempt of an agent run in a worker, and the lifecycle events it publishes.

:class:`Attempt` is what the writers of a run's outcome and its companion share: the task
context, the request, the worker's :class:`Resources`, the attempt's token (which fences its
writes: a write sent again after a lost reply is done once) and its conversation's turn. The
lifecycle events go on the coordination stream (``AGENT_STARTED``, ``AGENT_COMPLETED``,
``ERROR``, in-run ``HANDOFF_READY``), queued on the pipeline of a run's write.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

from agents.run_config import RunConfig

from runtime.agents.conversation import TurnSession
from runtime.agents.instrument import RunTelemetry
from runtime.agents.protocol import RunEvent, RunRequest
from runtime.agents.runs import RunStore
from runtime.agents.turns import SessionTurns, Turn
from runtime.app import TaskContext
from runtime.coordinator import EVENT_FIELD, AgentCoordinator, CoordinationEvent, EventType
from runtime.log import get_logger

if TYPE_CHECKING:
    from runtime.agents.companion import Companion

__all__ = [
    "Attempt",
    "Resources",
    "coordination",
    "handoff_events",
    "jsonable",
    "publish",
    "started_event",
]

log = get_logger(__name__)


@dataclasses.dataclass
class Resources:
    """What the runs of one worker process share."""

    runs: RunStore
    turns: SessionTurns
    run_config: RunConfig
    model_note: str
    observe: RunTelemetry
    """What the runs record: traces, metrics, lifecycle events."""
    publisher: AgentCoordinator | None = None
    """An AgentCoordinator to publish lifecycle events with (best effort)."""


@dataclasses.dataclass
class Attempt:
    """One attempt of a run, as the outcome writers need it."""

    ctx: TaskContext
    request: RunRequest
    res: Resources
    agent: str
    started_at: float
    token: str = dataclasses.field(default_factory=lambda: os.urandom(6).hex())
    """This attempt's: fences its writes (a write sent again after a lost reply is not
    repeated) and its conversation's lease."""
    writes: int = 0
    """Event writes so far (see :meth:`mark`)."""
    turn: Turn | None = None
    session: TurnSession | None = None
    companion: Companion | None = None
    ended: bool = False
    """The turn was ended together with the result."""

    def mark(self) -> str:
        """The number of the next event write (with the token, it makes the write's mark:
        the write is done once, even when sent twice)."""
        self.writes += 1
        return str(self.writes)


def started_event(run: Attempt) -> CoordinationEvent | None:
    """``AGENT_STARTED`` for *run*."""
    return coordination(
        run.res, EventType.AGENT_STARTED, run.request,
        agent_name=run.agent, input_summary=_summary(run.request),
    )  # fmt: skip


def handoff_events(run: Attempt, events: list[RunEvent]) -> list[CoordinationEvent | None]:
    """``HANDOFF_READY`` for the in-run handoffs among *events* (the run goes on itself)."""
    context = {"run_id": run.request.run_id, "in_run": True}
    return [
        coordination(
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


def coordination(
    res: Resources, kind: EventType, request: RunRequest, **data: Any
) -> CoordinationEvent | None:
    """A lifecycle event for the coordination stream (``None`` without a publisher)."""
    if res.publisher is None:
        return None
    return CoordinationEvent(
        type=kind, data=data, session_id=request.session_id, timestamp=time.time()
    )


def publish(res: Resources, pipe: Any, events: list[CoordinationEvent | None]) -> None:
    """Queue the XADDs of *events* on *pipe* (best effort: a bad event is only logged)."""
    publisher = res.publisher
    if publisher is None:
        return
    for event in events:
        if event is None:
            continue
        try:
            key, body = publisher.entry(event)
        except Exception as exc:
            log.warning("coordination.publish_failed", kind=str(event.type), error=str(exc))
            continue
        pipe.xadd(key, {EVENT_FIELD: body}, maxlen=publisher.maxlen, approximate=True)


def _summary(request: RunRequest) -> str:
    if request.handoff is not None:
        return f"handoff from {request.handoff.from_agent}"
    return str(request.input)[:200]


def jsonable(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | dict)
