"""Redis: connections and error translation, server facts, and the embedded Redis Stack."""

from runtime.redis.connection import (
    MODULES,
    Connection,
    ServerInfo,
    create_client,
    open_redis,
    read_server_info,
    require_modules,
    translate_errors,
)
from runtime.redis.embedded import EmbeddedRedis, ServerState, ServerStatus, bundled_server
from runtime.redis.modules import ModuleCheck, exercise_modules

__all__ = [
    "MODULES",
    "Connection",
    "EmbeddedRedis",
    "ModuleCheck",
    "ServerInfo",
    "ServerState",
    "ServerStatus",
    "bundled_server",
    "create_client",
    "exercise_modules",
    "open_redis",
    "read_server_info",
    "require_modules",
    "translate_errors",
]
