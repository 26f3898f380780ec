"""The base of every settings section, and the markers its fields carry."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from runtime.redaction import redact_url

__all__ = ["SECRET", "URL", "PositiveFloat", "Section", "field_extra"]

# Fields whose values never appear in clear in reprs, logs or `config show`.
SECRET = {"secret": True}
# A field holding a URL: only the password inside it is secret.
URL = {"url": True}

PositiveFloat = Annotated[float, Meta(gt=0)]


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every settings section: strict fields and a repr that hides secrets."""

    def __repr__(self) -> str:
        parts = []
        for field in msgspec.inspect.type_info(type(self)).fields:  # type: ignore[attr-defined]
            value = getattr(self, field.name)
            parts.append(f"{field.name}={_shown(field.type, value)!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


def field_extra(field_type: Any) -> dict[str, Any]:
    """The ``Meta(extra=…)`` markers of a field type (empty when it has none)."""
    if isinstance(field_type, msgspec.inspect.Metadata):
        return field_type.extra or {}
    return {}


def _shown(field_type: Any, value: Any) -> Any:
    extra = field_extra(field_type)
    if value is None:
        return value
    if extra.get("secret"):
        return "***"
    if extra.get("url") and isinstance(value, str):
        return redact_url(value)
    return value
