"""Publishing coordination events: one XADD per event, its stream trimmed to about maxlen."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from runtime.coordinator.base import CoordinatorBase
from runtime.coordinator.events import EVENT_FIELD, CoordinationEvent, EventType, encode, text
from runtime.coordinator.handoffs import HandoffContext, handoff_handler
from runtime.errors import CoordinatorError
from runtime.redis.connection import translate_errors

__all__ = ["Publisher"]


class Publisher(CoordinatorBase):
    """The publishing half of :class:`~runtime.coordinator.AgentCoordinator`."""

    async def publish(self, event: CoordinationEvent) -> str:
        """Add *event* to its type's stream (trimmed to about ``maxlen``); return the entry id.

        >>> await coordinator.publish(CoordinationEvent(  # doctest: +SKIP
        ...     type=EventType.STATE_CHANGED, data={"changes": {"step": 2}},
        ...     session_id="s1", timestamp=time.time()))
        '1700000000000-0'
        """
        key, body = self.entry(event)
        with translate_errors(f"publish a {event.type.value} event", self._url):
            entry_id = await self.client.xadd(
                key, {EVENT_FIELD: body}, maxlen=self.maxlen, approximate=True
            )
        return text(entry_id)

    def entry(self, event: CoordinationEvent) -> tuple[str, bytes]:
        """The stream key and ``event`` field value that publishing *event* writes.

        For callers that add the XADD to a pipeline of their own (one round trip for several
        writes): ``pipe.xadd(key, {EVENT_FIELD: body}, maxlen=coordinator.maxlen,
        approximate=True)``.
        """
        return self.streams[event.type], encode(event)

    async def _publish(self, kind: EventType, session_id: str | None, **data: Any) -> str:
        event = CoordinationEvent(
            type=kind, data=data, session_id=session_id, timestamp=time.time()
        )
        return await self.publish(event)

    async def publish_handoff_ready(
        self, from_agent: str, to_agent: str, session_id: str, context: dict[str, Any]
    ) -> str:
        """Tell *to_agent* that *from_agent* handed the session over; return the entry id.

        The run of *to_agent* that continues the conversation is enqueued first (by the
        ``handoff_sink``, else by the handler the agents layer registers) and its id is
        published as ``data["run_id"]``; with ``continue_handoffs=False`` the handoff is only
        announced.

        >>> await coordinator.publish_handoff_ready(  # doctest: +SKIP
        ...     "research", "writer", "sess-1", {"notes": "…"})

        Raises:
            CoordinatorError: handoffs are to be continued and no handler is registered.
        """
        event = CoordinationEvent(
            type=EventType.HANDOFF_READY,
            data={"from_agent": from_agent, "to_agent": to_agent, "context": context},
            session_id=session_id,
            timestamp=time.time(),
        )
        run_id = await self._continue(event)
        if run_id is not None:
            event = msgspec.structs.replace(event, data={**event.data, "run_id": run_id})
        return await self.publish(event)

    async def _continue(self, event: CoordinationEvent) -> str | None:
        """What the sink or the registered handler returns for *event* (``None``: nothing)."""
        if self.handoff_sink is not None:
            return await self.handoff_sink(event)
        if not self.continue_handoffs:
            return None
        handler = handoff_handler()
        if handler is None:
            raise CoordinatorError(
                "a published handoff starts a run of the target agent, and no handoff "
                "handler is registered: import runtime.agents first (it registers one), pass "
                "handoff_sink=, or continue_handoffs=False to only announce handoffs"
            )
        settings = msgspec.structs.replace(
            self.settings,
            redis=msgspec.structs.replace(self.settings.redis, key_prefix=self.keys.prefix),
        )
        return await handler(event, HandoffContext(self.client, self.keys, settings))

    async def publish_tool_result(
        self, tool_name: str, session_id: str, result: Any, execution_time_ms: float
    ) -> str:
        """Broadcast that *tool_name* finished with *result* (any JSON value).

        >>> await coordinator.publish_tool_result(  # doctest: +SKIP
        ...     "search", "sess-1", result=["a", "b"], execution_time_ms=12.5)
        """
        return await self._publish(
            EventType.TOOL_RESULT,
            session_id,
            tool_name=tool_name,
            result=result,
            execution_time_ms=execution_time_ms,
        )

    async def publish_state_changed(self, session_id: str, changes: dict[str, Any]) -> str:
        """Announce changed session state.

        >>> await coordinator.publish_state_changed("sess-1", {"step": 2})  # doctest: +SKIP
        """
        return await self._publish(EventType.STATE_CHANGED, session_id, changes=changes)

    async def publish_agent_started(
        self, agent_name: str, session_id: str, input_summary: str
    ) -> str:
        """Announce that *agent_name* started on the session.

        >>> await coordinator.publish_agent_started("writer", "sess-1", "draft")  # doctest: +SKIP
        """
        return await self._publish(
            EventType.AGENT_STARTED,
            session_id,
            agent_name=agent_name,
            input_summary=input_summary,
        )

    async def publish_agent_completed(
        self,
        agent_name: str,
        session_id: str,
        output_summary: str,
        duration_ms: float,
        tokens_used: int,
    ) -> str:
        """Announce that *agent_name* finished.

        >>> await coordinator.publish_agent_completed(  # doctest: +SKIP
        ...     "writer", "sess-1", "done", duration_ms=812.0, tokens_used=640)
        """
        return await self._publish(
            EventType.AGENT_COMPLETED,
            session_id,
            agent_name=agent_name,
            output_summary=output_summary,
            duration_ms=duration_ms,
            tokens_used=tokens_used,
        )

    async def publish_error(
        self,
        session_id: str,
        error_type: str,
        error_message: str,
        agent_name: str | None = None,
    ) -> str:
        """Publish an error of the session (``agent_name`` is null when not agent-specific).

        >>> await coordinator.publish_error(  # doctest: +SKIP
        ...     "sess-1", "TimeoutError", "model call timed out", agent_name="writer")
        """
        return await self._publish(
            EventType.ERROR,
            session_id,
            error_type=error_type,
            error_message=error_message,
            agent_name=agent_name,
        )
