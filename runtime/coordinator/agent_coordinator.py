"""The AgentCoordinator: publishing, consuming and inspecting, put together."""

from __future__ import annotations

from runtime.coordinator.info import Inspector
from runtime.coordinator.publish import Publisher
from runtime.coordinator.subscribe import Subscriber

__all__ = ["AgentCoordinator"]


class AgentCoordinator(Publisher, Subscriber, Inspector):
    """Publish and subscribe to coordination events between distributed agents.

    Publishing needs no consumer group; subscribing, acking and claiming do.

    >>> async with AgentCoordinator(  # doctest: +SKIP
    ...     consumer_group="workers", consumer_name="w1"
    ... ) as coordinator:
    ...     await coordinator.publish_handoff_ready(
    ...         from_agent="research", to_agent="analysis", session_id="sess_123",
    ...         context={"data": "value"})
    ...     async for event in coordinator.subscribe(max_events=1):
    ...         print(event.type, event["to_agent"], event.id)

    Args:
        redis_url: Used only when no *client* is given: the coordinator then opens a client
            of its own (with the pool and timeouts of ``[redis]``) and closes it in
            :meth:`close`. Default: the settings' ``redis.url`` (or ``REDIS_URL``), else the
            embedded server started by ``agents-worker redis start``
            (:class:`~runtime.errors.CoordinatorError` when none is running).
        stream_name: Name of the coordination stream (one Redis stream per event type).
        consumer_group: Consumer group for subscribing; every group sees every event.
        consumer_name: This consumer within the group (default: host, pid and a random part).
        client: A client to use; it is never closed by the coordinator.
        keys: Key builder of the deployment (default: the settings' ``redis.key_prefix``).
        maxlen: Each type stream is trimmed to about this many entries on publish.
        handoff_sink: Awaited with each handoff event before it is published; a string it
            returns (e.g. the id of the run it enqueued for the target agent) is published as
            ``data["run_id"]``. An exception it raises stops the publish. Without one, a
            published handoff enqueues a run of the target agent that continues the
            conversation (:meth:`runtime.agents.AgentClient.handoff`, registered by the
            agents package: :mod:`runtime.coordinator.handoffs`), unless
            *continue_handoffs* is false (workers announcing in-run handoffs set it so).
        continue_handoffs: See *handoff_sink*.
        settings: The deployment's settings: URL and key prefix when not given otherwise,
            and those of the runs a handoff enqueues. Default: :func:`runtime.load_settings`,
            read when first needed.

    Attributes:
        malformed: Entries of the coordination streams that could not be read as an event
            (no ``event`` field, invalid JSON or UTF-8, nested too deeply, unknown type,
            another schema version, a type other than its stream's). They are logged
            (``coordinator.malformed`` with stream, id and reason), acked (they can never be
            delivered meaningfully) and skipped, and counted here.
    """
