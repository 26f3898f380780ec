"""Coordination events between agents: handoffs, tool results, state changes, lifecycle.

    async with AgentCoordinator(consumer_group="planners") as coordinator:
        await coordinator.publish_handoff_ready("research", "writer", "sess-1", {"topic": "x"})
        async for event in coordinator.subscribe([EventType.HANDOFF_READY]):
            print(event.data["to_agent"], event.session_id)

Each event type has a stream of its own, ``<prefix>:{coord:<stream name>}:<event type>``; the
types of one coordination stream share a Redis Cluster hash tag, so one read covers several of
them on a cluster too. An entry has one field, ``event``, holding a JSON object
(:class:`CoordinationEvent` without ``id`` and ``stream``), so any language can publish::

    XADD 'aw:{coord:agent_events}:state_changed' MAXLEN '~' 10000 '*' event \
      '{"v":1,"type":"state_changed","session_id":"s1","timestamp":1700000000.0,
        "data":{"changes":{"step":2}}}'

Delivery through a consumer group is at-least-once and filtered on the server: a subscriber
reads only the streams of the types it asked for, so it is never handed (and never acks) an
event of another type. Every consumer group sees every event (fan-out); the consumers of one
group share them (each event goes to one of them). An event handed out and not acked stays
pending and can be taken over with :meth:`AgentCoordinator.claim_abandoned_messages`. An entry
that is not an event is logged, acked and skipped.

Streams are bounded: every publish trims its stream to about ``maxlen`` entries.

The package is part of the stream layer and knows nothing of agents: what a published handoff
starts is registered by the agents layer (:mod:`runtime.coordinator.handoffs`). Its modules:
``events`` (types, event, wire format), ``publish``, ``subscribe`` (with ack and claim),
``info`` (stream info and trim), ``base`` (client, keys, lifecycle).
"""

from runtime.coordinator.agent_coordinator import AgentCoordinator
from runtime.coordinator.events import EVENT_FIELD, CoordinationEvent, EventType
from runtime.coordinator.handoffs import (
    HandoffContext,
    HandoffHandler,
    HandoffSink,
    handoff_handler,
    set_handoff_handler,
)
from runtime.errors import CoordinatorError

__all__ = [
    "EVENT_FIELD",
    "AgentCoordinator",
    "CoordinationEvent",
    "CoordinatorError",
    "EventType",
    "HandoffContext",
    "HandoffHandler",
    "HandoffSink",
    "handoff_handler",
    "set_handoff_handler",
]
