"""agents-worker: a Redis-native, durable, horizontally scalable runtime for agents.

from runtime import load_settings, open_redis

settings = load_settings()
async with open_redis(settings) as conn:   # embedded Redis Stack when no URL is set
    await conn.client.ping()

Every public name is imported from its module when first used, so ``import runtime`` (and
the stream core, the worker of plain tasks, ``agents-worker --help``) does not load the
Agents SDK, the OpenAI client or other heavy libraries: only what the caller touches.
"""

import typing as _typing

from runtime._lazy import lazy_exports as _lazy_exports

if _typing.TYPE_CHECKING:
    from runtime._version import __version__
    from runtime.agents import (
        AgentApp,
        AgentClient,
        DemoModel,
        RunEvent,
        RunHandle,
        RunResult,
    )
    from runtime.app import (
        App,
        DeadLetterContext,
        Handler,
        TaskContext,
        load_app,
    )
    from runtime.coordinator import (
        AgentCoordinator,
        CoordinationEvent,
        EventType,
    )
    from runtime.dlq import (
        DeadLetter,
        DeadLetters,
        Replayed,
    )
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
    from runtime.observability import (
        AgentMetrics,
        MetricsStore,
        PrometheusExporter,
        RedisTracingProcessor,
        TraceStore,
    )
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
        WebSettings,
        WorkerSettings,
        load_settings,
        resolve_settings,
    )
    from runtime.supervisor import Supervisor
    from runtime.worker import Worker, WorkerStats

# name → the module it is imported from, on first use
_EXPORTS = {
    "__version__": "runtime._version",
    "AgentApp": "runtime.agents",
    "AgentClient": "runtime.agents",
    "DemoModel": "runtime.agents",
    "RunEvent": "runtime.agents",
    "RunHandle": "runtime.agents",
    "RunResult": "runtime.agents",
    "App": "runtime.app",
    "DeadLetterContext": "runtime.app",
    "Handler": "runtime.app",
    "TaskContext": "runtime.app",
    "load_app": "runtime.app",
    "AgentCoordinator": "runtime.coordinator",
    "CoordinationEvent": "runtime.coordinator",
    "EventType": "runtime.coordinator",
    "DeadLetter": "runtime.dlq",
    "DeadLetters": "runtime.dlq",
    "Replayed": "runtime.dlq",
    "SCHEMA_VERSION": "runtime.envelope",
    "Envelope": "runtime.envelope",
    "AgentsWorkerError": "runtime.errors",
    "AppError": "runtime.errors",
    "ConfigError": "runtime.errors",
    "CoordinatorError": "runtime.errors",
    "Defer": "runtime.errors",
    "EmbeddedRedisError": "runtime.errors",
    "EmbeddedRedisNotInstalled": "runtime.errors",
    "EnqueueError": "runtime.errors",
    "KeyNameError": "runtime.errors",
    "MissingModuleError": "runtime.errors",
    "OpenSSLMissingError": "runtime.errors",
    "PermanentError": "runtime.errors",
    "PortInUseError": "runtime.errors",
    "RedisCommandError": "runtime.errors",
    "RedisConnectionError": "runtime.errors",
    "RedisError": "runtime.errors",
    "RedisTimeoutError": "runtime.errors",
    "RetryLater": "runtime.errors",
    "SessionDataError": "runtime.errors",
    "SessionError": "runtime.errors",
    "SessionFenceError": "runtime.errors",
    "SessionNotFound": "runtime.errors",
    "SupervisorError": "runtime.errors",
    "TaskFailure": "runtime.errors",
    "Keys": "runtime.keys",
    "AgentMetrics": "runtime.observability",
    "MetricsStore": "runtime.observability",
    "PrometheusExporter": "runtime.observability",
    "RedisTracingProcessor": "runtime.observability",
    "TraceStore": "runtime.observability",
    "configure_logging": "runtime.log",
    "get_logger": "runtime.log",
    "Enqueued": "runtime.producer",
    "Producer": "runtime.producer",
    "redact_url": "runtime.redaction",
    "Connection": "runtime.redis",
    "EmbeddedRedis": "runtime.redis",
    "ServerInfo": "runtime.redis",
    "ServerStatus": "runtime.redis",
    "open_redis": "runtime.redis",
    "read_server_info": "runtime.redis",
    "translate_errors": "runtime.redis",
    "AgentSession": "runtime.sessions",
    "JSONSession": "runtime.sessions",
    "EmbeddedRedisSettings": "runtime.settings",
    "ObservabilitySettings": "runtime.settings",
    "WebSettings": "runtime.settings",
    "RedisSettings": "runtime.settings",
    "Settings": "runtime.settings",
    "StreamSettings": "runtime.settings",
    "SupervisorSettings": "runtime.settings",
    "WorkerSettings": "runtime.settings",
    "load_settings": "runtime.settings",
    "resolve_settings": "runtime.settings",
    "Supervisor": "runtime.supervisor",
    "Worker": "runtime.worker",
    "WorkerStats": "runtime.worker",
}

_lazy_getattr, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())


def __getattr__(name: str) -> _typing.Any:
    if name == "AgentCoordinator":
        # The coordinator is below the agents layer; this facade is above both. Importing
        # runtime.agents (light: its names are lazy too) registers what a handoff published
        # on the coordinator does, as the coordinator had done before the layers were split.
        import runtime.agents  # noqa: F401
    return _lazy_getattr(name)


__all__ = [
    "SCHEMA_VERSION",
    "AgentApp",
    "AgentClient",
    "AgentCoordinator",
    "AgentMetrics",
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
    "MetricsStore",
    "MissingModuleError",
    "ObservabilitySettings",
    "OpenSSLMissingError",
    "PermanentError",
    "PortInUseError",
    "Producer",
    "PrometheusExporter",
    "RedisCommandError",
    "RedisConnectionError",
    "RedisError",
    "RedisSettings",
    "RedisTimeoutError",
    "RedisTracingProcessor",
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
    "TraceStore",
    "WebSettings",
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
