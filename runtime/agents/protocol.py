"""What apps and workers exchange about agent runs: requests, events and results.

A run request is the payload of a work envelope on the agent's inbox. The run's record
(``<prefix>:{run:<id>}``, a hash) holds its status and result; its event stream
(``<prefix>:{run:<id>}:events``) holds what happened, in order, ending with exactly one terminal
event: ``run.completed``, ``run.failed`` or ``run.cancelled`` — unless the run was
dead-lettered and replayed: a ``run.requeued`` event then follows that terminal event, and the
events of the new attempt follow it, up to the terminal event that is the run's outcome.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "REQUEUED",
    "TERMINAL",
    "HandoffInfo",
    "RunEvent",
    "RunRequest",
    "RunResult",
    "RunStatus",
]

RunStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"run.completed", "run.failed", "run.cancelled"})
TERMINAL_STATUS: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
REQUEUED = "run.requeued"
"""The event appended when a dead-lettered run is replayed: the terminal event before it is
not the run's outcome any more; the new attempt's events follow."""


class HandoffInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An app-published handoff: who hands the conversation over, and with what context."""

    from_agent: str
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    event_id: str | None = None


class RunRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The payload of an agent-run envelope."""

    run_id: str
    agent: str
    input: str | list[dict[str, Any]] | None = None
    """The user's input; ``None`` for a handoff that continues the conversation as it is."""
    session_id: str | None = None
    seq: int | None = None
    """Position of the run in its conversation (runs of one session execute in this order).
    ``None``: the number drawn at submit, which the worker looks up by ``run_id``."""
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    """Handed to the agent's tools as the run context (``RunContextWrapper.context``)."""
    max_turns: int | None = None
    handoff: HandoffInfo | None = None
    stream: bool | None = None
    """Publish text deltas (``Runner.run_streamed``); ``None``: as ``runs.stream_deltas`` says."""
    submitted_at: float = 0.0


class RunEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event of a run's event stream."""

    type: str
    """``run.started``, ``agent.updated``, ``message.delta``, ``message``, ``tool.called``,
    ``tool.output``, ``handoff``, ``run.retrying``, ``run.requeued``, or a terminal ``run.*``
    event."""
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    at: float = 0.0
    id: str | None = None
    """The stream entry id (set on events read back): resume after it."""

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a run, as stored under its key."""

    run_id: str
    status: RunStatus
    agent: str
    session_id: str | None = None
    final_output: Any = None
    last_agent: str | None = None
    usage: dict[str, int] = msgspec.field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    worker: str | None = None
    submitted_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "completed"
