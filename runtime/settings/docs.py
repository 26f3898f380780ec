"""Render the settings reference (``docs/configuration.md``) from the settings model."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import msgspec

from runtime.settings.loader import CONFIG_ENV, DEFAULT_CONFIG_FILE, ENV_PREFIX, iter_fields
from runtime.settings.model import Settings

__all__ = ["render_example", "render_reference", "type_name"]

_HEADER = f"""\
# Configuration

Every setting of agents-worker, generated from the settings model by
`agents-worker config docs > docs/configuration.md` (a test fails when this page is stale).

Values are taken, each overriding the one before:

1. the defaults below;
2. a TOML file: `--config FILE`, else `${CONFIG_ENV}`, else `{DEFAULT_CONFIG_FILE}` in the
   current directory when it exists (the shipped one sets nothing and shows every default);
3. environment variables: `{ENV_PREFIX}<SECTION>_<KEY>`, listed below; the plain `REDIS_URL`
   is honoured too, below `{ENV_PREFIX}REDIS_URL`;
4. command-line flags: `--redis-url`, `--key-prefix`, `--log-level`, `--log-format`, and
   `--set section.key=value` for any setting.

Unknown keys, unknown `{ENV_PREFIX}*` variables and values of the wrong type are refused with a
message that names the setting and where it came from. Environment and flag values are text:
numbers and booleans (`true`/`false`) are converted, lists are comma-separated or JSON, and an
empty value unsets an optional setting. `agents-worker config show` prints the effective values
and the source of each; passwords inside URLs are shown as `***`.
"""


def type_name(info: Any) -> str:
    """A short, readable name of a msgspec type (``int``, ``list[str]``, ``str | None``…)."""
    if isinstance(info, msgspec.inspect.Metadata):
        return type_name(info.type)
    if isinstance(info, msgspec.inspect.UnionType):
        return " | ".join(type_name(t) for t in info.types)
    if isinstance(info, msgspec.inspect.ListType):
        return f"list[{type_name(info.item_type)}]"
    if isinstance(info, msgspec.inspect.LiteralType):
        return " | ".join(json.dumps(v) for v in info.values)
    names: dict[type, str] = {
        msgspec.inspect.StrType: "str",
        msgspec.inspect.IntType: "int",
        msgspec.inspect.FloatType: "float",
        msgspec.inspect.BoolType: "bool",
        msgspec.inspect.NoneType: "none",
    }
    return names.get(type(info), type(info).__name__)


def _toml_value(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def render_reference() -> str:
    """The markdown reference of every setting, grouped by section."""
    lines = [_HEADER]
    section = None
    info = msgspec.inspect.type_info(Settings)
    assert isinstance(info, msgspec.inspect.StructType)
    docs = _section_docs(info)
    for spec in iter_fields():
        current = spec.path.rsplit(".", 1)[0]
        if current != section:
            section = current
            lines += [f"## `[{section}]`", "", docs.get(section, ""), ""]
            lines += ["| setting | type | default | environment variable | meaning |"]
            lines += ["|---|---|---|---|---|"]
        meaning = spec.description.replace("|", "\\|")
        kind = type_name(spec.type).replace("|", "\\|")
        lines.append(
            f"| `{spec.path}` | {kind} | `{_toml_value(spec.default)}` | `{spec.env}` | {meaning} |"
        )
    return _tidy("\n".join(lines))


def _section_docs(info: msgspec.inspect.StructType, prefix: str = "") -> dict[str, str]:
    docs: dict[str, str] = {}
    for field in info.fields:
        if isinstance(field.type, msgspec.inspect.StructType):
            path = f"{prefix}{field.name}"
            docs[path] = (field.type.cls.__doc__ or "").strip()
            docs.update(_section_docs(field.type, f"{path}."))
    return docs


def _tidy(text: str) -> str:
    # A blank line closes each table; the sections follow each other.
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith("## ") and out and out[-1].startswith("|"):
            out.append("")
        out.append(line)
    return "\n".join(out).rstrip() + "\n"


_EXAMPLES = {
    "redis.url": '"redis://localhost:6379/0"',
    "redis.embedded.password": '"change-me"',
    "redis.embedded.server_binary": '"/usr/bin/redis-server"',
    "supervisor.min_workers": "1",
    "supervisor.max_workers": "8",
    "runs.session_ttl_seconds": "604800",
    "models.base_url": '"http://localhost:11434/v1"',
    "models.api_key": '"change-me"',
    "observability.otel_endpoint": '"http://127.0.0.1:4318"',
    "web.token": '"change-me"',
}


def render_example() -> str:
    """``config/agents-worker.toml``: every setting commented out at its default."""
    lines = [
        "# agents-worker settings. Every line is commented out: the values shown are the defaults.",
        "# Precedence: defaults < this file < AGENTS_WORKER_* environment variables < flags.",
        "# Reference: docs/configuration.md · effective values: agents-worker config show",
        "",
    ]
    info = msgspec.inspect.type_info(Settings)
    assert isinstance(info, msgspec.inspect.StructType)
    docs = _section_docs(info)
    section = None
    for spec in iter_fields():
        current, key = spec.path.rsplit(".", 1)
        if current != section:
            section = current
            lines += [f"[{section}]", f"# {docs[section]}", ""]
        lines += textwrap.wrap(spec.description, 96, initial_indent="# ", subsequent_indent="# ")
        if spec.default is None:
            lines += ["# Unset by default; for example:", f"# {key} = {_EXAMPLES[spec.path]}"]
        else:
            lines.append(f"# {key} = {_toml_value(spec.default)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
