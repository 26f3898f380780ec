"""Load :class:`Settings` from defaults ← TOML file ← environment ← command-line overrides.

Every layer is checked on its own, so an error names the setting and the place it came from
(``config/agents-worker.toml: worker.concurrency: expected int, got str``).
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from runtime.errors import ConfigError
from runtime.keys import validate_prefix
from runtime.redaction import redact_url
from runtime.settings.model import Settings
from runtime.settings.section import field_extra

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_FILE",
    "ENV_PREFIX",
    "FieldSpec",
    "Resolved",
    "env_name",
    "iter_fields",
    "load_settings",
    "resolve_settings",
    "url_problem",
]

ENV_PREFIX = "AGENTS_WORKER_"
CONFIG_ENV = "AGENTS_WORKER_CONFIG"
DEFAULT_CONFIG_FILE = Path("config/agents-worker.toml")
# Variables with the prefix that are not settings, so they are not rejected as unknown.
_NOT_SETTINGS = frozenset({CONFIG_ENV, "AGENTS_WORKER_TEST_REDIS_URL"})
_URL_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class FieldSpec:
    """One leaf setting: its dotted path, msgspec type, default and description."""

    path: str
    type: Any
    default: Any
    description: str

    @property
    def env(self) -> str:
        return env_name(self.path)

    @property
    def secret(self) -> bool:
        return bool(field_extra(self.type).get("secret"))

    @property
    def is_url(self) -> bool:
        return bool(field_extra(self.type).get("url"))


@dataclass(frozen=True)
class Resolved:
    """Loaded settings and, for each dotted path, where its value came from."""

    settings: Settings
    sources: dict[str, str]


def env_name(path: str) -> str:
    """``redis.embedded.port`` → ``AGENTS_WORKER_REDIS_EMBEDDED_PORT``."""
    return ENV_PREFIX + path.replace(".", "_").upper()


def iter_fields(cls: type[msgspec.Struct] = Settings, prefix: str = "") -> Iterator[FieldSpec]:
    """Every leaf setting of *cls*, depth first, in declaration order."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        path = f"{prefix}{field.name}"
        if isinstance(field.type, msgspec.inspect.StructType):
            yield from iter_fields(field.type.cls, f"{path}.")
            continue
        default = field.default
        if default is msgspec.NODEFAULT:
            default = field.default_factory()
        description = ""
        if isinstance(field.type, msgspec.inspect.Metadata):
            description = (field.type.extra_json_schema or {}).get("description", "")
        yield FieldSpec(path, field.type, default, description)


_FIELDS: dict[str, FieldSpec] = {spec.path: spec for spec in iter_fields()}
_SECTIONS: frozenset[str] = frozenset(
    path.rsplit(".", i)[0] for path in _FIELDS for i in range(1, path.count(".") + 1)
)


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load the effective settings; see :func:`resolve_settings`."""
    return resolve_settings(config_file, env=env, overrides=overrides).settings


def resolve_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_source: str = "command line",
) -> Resolved:
    """Load the settings and remember the source of every value.

    *config_file* defaults to ``$AGENTS_WORKER_CONFIG``, else ``config/agents-worker.toml`` when
    that file exists. *env* defaults to ``os.environ``. *overrides* maps dotted paths
    (``"worker.concurrency"``) to values; strings are parsed like environment values.

    Raises:
        ConfigError: a key is unknown, a value has the wrong type or is invalid.
    """
    environ = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources = dict.fromkeys(_FIELDS, "default")

    path = _config_path(config_file, environ)
    if path is not None:
        label = str(path)
        for key, value in _flatten(_read_toml(path), "", label):
            values[key] = _checked(key, value, label, strict=True)
            sources[key] = label
    for key, value, label in _env_values(environ):
        values[key] = _checked(key, value, label, strict=False)
        sources[key] = label
    for key, value in (overrides or {}).items():
        if key not in _FIELDS:
            raise ConfigError(_unknown(key, override_source))
        label = f"{override_source} ({key})"
        values[key] = _checked(key, _parse_text(key, value), label, strict=False)
        sources[key] = label

    settings = msgspec.convert(_nest(values), Settings, strict=False)
    _check_semantics(settings, sources)
    return Resolved(settings, sources)


def _config_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if explicit is not None:
        path = Path(explicit)
    elif env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    else:
        return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from exc


def _flatten(table: Mapping[str, Any], prefix: str, label: str) -> Iterator[tuple[str, Any]]:
    for key, value in table.items():
        path = f"{prefix}{key}"
        if path in _FIELDS:
            yield path, value
        elif path in _SECTIONS and isinstance(value, dict):
            yield from _flatten(value, f"{path}.", label)
        elif path in _SECTIONS:
            raise ConfigError(f"{label}: {path} is a section ([{path}]), not a value")
        else:
            raise ConfigError(_unknown(path, label))


def _unknown(path: str, label: str) -> str:
    message = f"{label}: unknown setting {path!r}"
    close = difflib.get_close_matches(path, [*_FIELDS, *_SECTIONS], n=1, cutoff=0.75)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return message + "; every setting is listed in docs/configuration.md"


def _env_values(env: Mapping[str, str]) -> Iterator[tuple[str, Any, str]]:
    by_env = {spec.env: spec for spec in _FIELDS.values()}
    if env.get("REDIS_URL") and not env.get(env_name("redis.url")):
        yield "redis.url", env["REDIS_URL"], "env REDIS_URL"
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS:
            continue
        spec = by_env.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, by_env, n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"environment variable {name} is not a setting{hint}; "
                "every setting is listed in docs/configuration.md"
            )
        yield spec.path, _parse_text(spec.path, env[name]), f"env {name}"


def _parse_text(path: str, value: Any) -> Any:
    """Turn text from the environment or a flag into the shape the field expects."""
    if not isinstance(value, str):
        return value
    spec = _FIELDS[path]
    base = spec.type.type if isinstance(spec.type, msgspec.inspect.Metadata) else spec.type
    if value == "" and _optional(base):
        return None
    if isinstance(base, msgspec.inspect.ListType):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: not a JSON list: {exc}") from exc
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def _optional(info: Any) -> bool:
    return isinstance(info, msgspec.inspect.UnionType) and any(
        isinstance(t, msgspec.inspect.NoneType) for t in info.types
    )


def _checked(path: str, value: Any, label: str, *, strict: bool) -> Any:
    try:
        msgspec.convert(_nest({path: value}), Settings, strict=strict)
    except msgspec.ValidationError as exc:
        reason = str(exc).split(" - at `", 1)[0]
        reason = reason[:1].lower() + reason[1:]
        shown = "***" if _FIELDS[path].secret else repr(value)
        raise ConfigError(f"{label}: {path} = {shown}: {reason}") from None
    return value


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in values.items():
        *sections, leaf = path.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return tree


_RUN_WAIT_BLOCK_S = 1.0  # runtime.agents.waiters.BLOCK_MS (the settings sit below the agents)


def _check_semantics(settings: Settings, sources: Mapping[str, str]) -> None:
    url = settings.redis.url
    if url is not None:
        problem = url_problem(url)
        if problem:
            raise ConfigError(f"{sources['redis.url']}: redis.url: {problem}")
    if settings.worker.block_ms >= settings.redis.socket_timeout * 1000:
        raise ConfigError(
            f"{sources['worker.block_ms']}: worker.block_ms ({settings.worker.block_ms}) must be "
            f"shorter than redis.socket_timeout ({settings.redis.socket_timeout:g} s), or every "
            "idle read would time out"
        )
    if settings.redis.socket_timeout <= _RUN_WAIT_BLOCK_S * 1.2:
        raise ConfigError(
            f"{sources['redis.socket_timeout']}: redis.socket_timeout "
            f"({settings.redis.socket_timeout:g} s) must be more than "
            f"{_RUN_WAIT_BLOCK_S * 1.2:g} s: a wait for an agent run blocks on Redis for up to "
            f"{_RUN_WAIT_BLOCK_S:g} s at a time"
        )
    try:
        validate_prefix(settings.redis.key_prefix)
    except ValueError as exc:
        raise ConfigError(f"{sources['redis.key_prefix']}: redis.key_prefix: {exc}") from None


def url_problem(url: str) -> str | None:
    """Why *url* is not a usable Redis URL, or ``None`` when it is."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{shown!r} is not a valid URL ({exc})"
    if parts.scheme not in _URL_SCHEMES:
        return f"{shown!r} must start with redis://, rediss:// or unix://"
    if parts.scheme == "unix":
        return None if parts.path else f"{shown!r} names no socket path"
    if not parts.hostname:
        return f"{shown!r} names no host"
    if port == 0:
        return f"{shown!r} has port 0"
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        return f"{shown!r}: the database after the host must be a number, not {db!r}"
    return None
