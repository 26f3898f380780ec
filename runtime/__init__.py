"""agents-worker: a Redis-native, durable, horizontally scalable runtime for agents.

from runtime import load_settings, open_redis

settings = load_settings()
async with open_redis(settings) as conn:   # embedded Redis Stack when no URL is set
    await conn.client.ping()
"""

from runtime._version import __version__
from runtime.agents import AgentApp, AgentClient, DemoModel, RunEvent, RunHandle, RunResult
from runtime.app import App, DeadLetterContext, Handler, TaskContext, load_app
from runtime.coordinator import AgentCoordinator, CoordinationEvent, EventType
from runtime.dlq import DeadLetter, DeadLetters, Replayed
from runtime.envelope import SCHEMA_VERSION, Envelope
from runtime.errors import (
    AgentsWorkerError,
    AppError,
    ConfigError,
    CoordinatorError,
    Defer,
    EmbeddedRedisError,
    EmbeddedRedisNotInstalled,
    EnqueueError,
    KeyNameError,
    MissingModuleError,
    OpenSSLMissingError,
    PermanentError,
    PortInUseError,
    RedisCommandError,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
    RetryLater,
    SessionDataError,
    SessionError,
    SessionFenceError,
    SessionNotFound,
    SupervisorError,
    TaskFailure,
)
from runtime.keys import Keys
from runtime.log import configure_logging, get_logger
from runtime.producer import Enqueued, Producer
from runtime.redaction import redact_url
from runtime.redis import (
    Connection,
    EmbeddedRedis,
    ServerInfo,
    ServerStatus,
    open_redis,
    read_server_info,
    translate_errors,
)
from runtime.sessions import AgentSession, JSONSession
from runtime.settings import (
    EmbeddedRedisSettings,
    ObservabilitySettings,
    RedisSettings,
    Settings,
    StreamSettings,
    SupervisorSettings,
    WorkerSettings,
    load_settings,
    resolve_settings,
)
from runtime.supervisor import Supervisor
from runtime.worker import Worker, WorkerStats

__all__ = [
    "SCHEMA_VERSION",
    "AgentApp",
    "AgentClient",
    "AgentCoordinator",
    "AgentSession",
    "AgentsWorkerError",
    "App",
    "AppError",
    "ConfigError",
    "Connection",
    "CoordinationEvent",
    "CoordinatorError",
    "DeadLetter",
    "DeadLetterContext",
    "DeadLetters",
    "Defer",
    "DemoModel",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "EmbeddedRedisNotInstalled",
    "EmbeddedRedisSettings",
    "EnqueueError",
    "Enqueued",
    "Envelope",
    "EventType",
    "Handler",
    "JSONSession",
    "KeyNameError",
    "Keys",
    "MissingModuleError",
    "ObservabilitySettings",
    "OpenSSLMissingError",
    "PermanentError",
    "PortInUseError",
    "Producer",
    "RedisCommandError",
    "RedisConnectionError",
    "RedisError",
    "RedisSettings",
    "RedisTimeoutError",
    "Replayed",
    "RetryLater",
    "RunEvent",
    "RunHandle",
    "RunResult",
    "ServerInfo",
    "ServerStatus",
    "SessionDataError",
    "SessionError",
    "SessionFenceError",
    "SessionNotFound",
    "Settings",
    "StreamSettings",
    "Supervisor",
    "SupervisorError",
    "SupervisorSettings",
    "TaskContext",
    "TaskFailure",
    "Worker",
    "WorkerSettings",
    "WorkerStats",
    "__version__",
    "configure_logging",
    "get_logger",
    "load_app",
    "load_settings",
    "open_redis",
    "read_server_info",
    "redact_url",
    "resolve_settings",
    "translate_errors",
]
