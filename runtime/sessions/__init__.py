"""Conversation history in Redis for the OpenAI Agents SDK: ``Session`` implementations.

- :class:`AgentSession`: metadata in a hash, items in a list (the default).
- :class:`JSONSession`: one RedisJSON document (needs the JSON module).

Both implement the SDK's ``Session`` protocol (pass one as ``Runner.run(..., session=…)``),
write in one atomic round trip, are Redis Cluster-safe, can expire idle conversations (*ttl*)
and fence their writes with a lease token (*fence*)::

    from runtime.sessions import AgentSession

    session = await AgentSession.create(user_id="user_123", client=client)
    result = await Runner.run(agent, "Hello", session=session)
    again = await AgentSession.load(session.conversation_id, client=client)
    history = await again.to_agent_inputs()
"""

from runtime.sessions.base import BaseSession, Fence, SessionInfo
from runtime.sessions.checks import MAX_TTL_SECONDS
from runtime.sessions.errors import (
    SessionDataError,
    SessionError,
    SessionFenceError,
    SessionNotFound,
)
from runtime.sessions.redis_json import JSONSession
from runtime.sessions.redis_list import AgentSession

__all__ = [
    "MAX_TTL_SECONDS",
    "AgentSession",
    "BaseSession",
    "Fence",
    "JSONSession",
    "SessionDataError",
    "SessionError",
    "SessionFenceError",
    "SessionInfo",
    "SessionNotFound",
]
