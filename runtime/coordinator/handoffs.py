"""What a published handoff does: a handler the layer above registers.

The coordinator sits under the agents layer and knows nothing of agent runs. When an app
publishes a handoff (:meth:`~runtime.coordinator.AgentCoordinator.publish_handoff_ready`), the
run that continues the conversation is started by a handler that the agents package
registers when it is imported (:mod:`runtime.agents.handoffs`)::

    set_handoff_handler(continue_handoff)   # what runtime.agents does at import

A coordinator given its own ``handoff_sink`` uses that instead; one made with
``continue_handoffs=False`` only announces handoffs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio

    from runtime.coordinator.events import CoordinationEvent
    from runtime.keys import Keys
    from runtime.settings.model import Settings

__all__ = [
    "HandoffContext",
    "HandoffHandler",
    "HandoffSink",
    "handoff_handler",
    "set_handoff_handler",
]

HandoffSink = Callable[["CoordinationEvent"], Awaitable["str | None"]]
"""Called with a handoff event before it is published; what it returns becomes ``run_id``."""


@dataclass(frozen=True, slots=True)
class HandoffContext:
    """Where the coordinator publishing a handoff lives: its client, keys and settings."""

    client: redis.asyncio.Redis
    keys: Keys
    settings: Settings
    """The coordinator's settings (its key prefix is ``keys.prefix``)."""


HandoffHandler = Callable[["CoordinationEvent", HandoffContext], Awaitable["str | None"]]
"""A registered handler: like a :data:`HandoffSink`, with the coordinator's context."""

_handler: list[HandoffHandler] = []


def set_handoff_handler(handler: HandoffHandler | None) -> HandoffHandler | None:
    """Register what a published handoff does in this process; return the one it replaces.

    ``None`` unregisters it: coordinators that continue handoffs then refuse to publish one.
    """
    previous = _handler[0] if _handler else None
    _handler.clear()
    if handler is not None:
        _handler.append(handler)
    return previous


def handoff_handler() -> HandoffHandler | None:
    """The registered handler, or ``None``."""
    return _handler[0] if _handler else None
