"""What a handoff published on the coordinator does: a run that continues the conversation.

The coordinator is below the agents layer and cannot start runs itself; importing
:mod:`runtime.agents` registers :func:`continue_handoff` with it
(:func:`runtime.coordinator.set_handoff_handler`), so that::

    await AgentCoordinator(client=client, keys=keys).publish_handoff_ready(
        "triage", "billing", "c-42", {"invoice": 1042})

enqueues a run of ``billing`` in conversation ``c-42`` and publishes its id as
``data["run_id"]``.
"""

from __future__ import annotations

from runtime.coordinator import CoordinationEvent, HandoffContext, set_handoff_handler

__all__ = ["continue_handoff", "register"]


async def continue_handoff(event: CoordinationEvent, where: HandoffContext) -> str:
    """Enqueue the run of the event's ``to_agent`` that continues its session; its run id."""
    # Imported here, not at the top: registering the handler (on `import runtime.agents`)
    # must not load the Agents SDK, which the client's modules need.
    from runtime.agents.client import AgentClient

    client = AgentClient(where.client, keys=where.keys, settings=where.settings)
    context = event.data.get("context")
    handle = await client.handoff(
        str(event.data["to_agent"]),
        session_id=str(event.session_id),
        from_agent=str(event.data["from_agent"]),
        context=context if isinstance(context, dict) else {},
    )
    return handle.run_id


def register() -> None:
    """Make published handoffs continue the conversation in this process (idempotent)."""
    set_handoff_handler(continue_handoff)
