"""Typed settings: the model, its loader and its generated reference."""

from runtime.settings.loader import (
    CONFIG_ENV,
    ENV_PREFIX,
    FieldSpec,
    Resolved,
    env_name,
    iter_fields,
    load_settings,
    resolve_settings,
)
from runtime.settings.model import (
    EmbeddedRedisSettings,
    ObservabilitySettings,
    RedisSettings,
    Settings,
    StreamSettings,
    SupervisorSettings,
    WebSettings,
    WorkerSettings,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "EmbeddedRedisSettings",
    "FieldSpec",
    "ObservabilitySettings",
    "RedisSettings",
    "Resolved",
    "Settings",
    "StreamSettings",
    "SupervisorSettings",
    "WebSettings",
    "WorkerSettings",
    "env_name",
    "iter_fields",
    "load_settings",
    "resolve_settings",
]
