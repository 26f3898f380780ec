"""agents-worker: a Redis-native, durable, horizontally scalable runtime for agents.

from runtime import load_settings, open_redis

settings = load_settings()
async with open_redis(settings) as conn:   # embedded Redis Stack when no URL is set
    await conn.client.ping()
"""

from runtime._version import __version__
from runtime.errors import (
    AgentsWorkerError,
    ConfigError,
    EmbeddedRedisError,
    EmbeddedRedisNotInstalled,
    KeyNameError,
    MissingModuleError,
    OpenSSLMissingError,
    PortInUseError,
    RedisCommandError,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
)
from runtime.keys import Keys
from runtime.log import configure_logging, get_logger
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
from runtime.settings import (
    EmbeddedRedisSettings,
    ObservabilitySettings,
    RedisSettings,
    Settings,
    SupervisorSettings,
    WorkerSettings,
    load_settings,
    resolve_settings,
)

__all__ = [
    "AgentsWorkerError",
    "ConfigError",
    "Connection",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "EmbeddedRedisNotInstalled",
    "EmbeddedRedisSettings",
    "KeyNameError",
    "Keys",
    "MissingModuleError",
    "ObservabilitySettings",
    "OpenSSLMissingError",
    "PortInUseError",
    "RedisCommandError",
    "RedisConnectionError",
    "RedisError",
    "RedisSettings",
    "RedisTimeoutError",
    "ServerInfo",
    "ServerStatus",
    "Settings",
    "SupervisorSettings",
    "WorkerSettings",
    "__version__",
    "configure_logging",
    "get_logger",
    "load_settings",
    "open_redis",
    "read_server_info",
    "redact_url",
    "resolve_settings",
    "translate_errors",
]
