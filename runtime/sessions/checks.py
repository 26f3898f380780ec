"""The arguments of a session, checked before anything is written.

A write script that fails half-way has still written its first half (Lua scripts are not
rolled back): a TTL that Redis refuses made ``PEXPIRE`` fail after the items were pushed, and
a retry duplicated them. So every argument is checked here, in Python, before the first
write; a call refused here wrote nothing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from agents.memory import SessionSettings

from runtime.keys import Keys
from runtime.sessions.errors import SessionDataError

__all__ = [
    "MAX_TTL_SECONDS",
    "check_count",
    "check_fence",
    "check_items",
    "check_keys",
    "check_limit",
    "check_session_settings",
    "check_ttl",
    "check_user_id",
]

_MAX_EXPIRE_MS = 2**63 - 1  # Redis refuses an expiry time past this many ms since the epoch
_YEAR_10000_MS = 253_402_300_800_000
MAX_TTL_SECONDS = (_MAX_EXPIRE_MS - _YEAR_10000_MS) // 1000
"""The longest TTL a session takes: what Redis accepts from now until the year 10000
(about 292 million years)."""


def check_ttl(ttl: object) -> int:
    """*ttl* (seconds, or ``None``) as the milliseconds the write scripts take (0: none).

    Raises:
        TypeError: not a number.
        ValueError: not finite, under 1 ms, or longer than Redis can expire.
    """
    if ttl is None:
        return 0
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be a number of seconds or None, not {type(ttl).__name__}")
    if not math.isfinite(ttl) or not ttl * 1000 >= 1:
        raise ValueError(f"ttl must be at least 0.001 s, not {ttl!r}")
    if ttl > MAX_TTL_SECONDS:
        raise ValueError(
            f"ttl {ttl!r} s is longer than Redis can expire a key (at most {MAX_TTL_SECONDS} s)"
        )
    return round(ttl * 1000)


def check_keys(keys: object) -> Keys:
    if keys is None:
        return Keys()
    if not isinstance(keys, Keys):
        raise TypeError(f"keys must be a runtime.Keys or None, not {type(keys).__name__}")
    return keys


def check_fence(fence: object) -> tuple[str, str] | None:
    if fence is None:
        return None
    if (
        not isinstance(fence, tuple)
        or len(fence) != 2
        or not all(isinstance(part, str) and part for part in fence)
    ):
        raise TypeError(f"fence must be a (lease key, token) pair of strings, not {fence!r}")
    return fence[0], fence[1]


def check_session_settings(value: object) -> SessionSettings | None:
    """*value* as :class:`SessionSettings`: one, a dict of its fields (as the SDK's sessions
    take), or ``None``.

    Raises:
        TypeError: another type, an unknown field, or a ``limit`` that is not an int.
        ValueError: a field value the SDK's settings refuse.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = set(value) - {field.name for field in dataclasses.fields(SessionSettings)}
        if unknown:
            raise TypeError(f"session_settings: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            value = SessionSettings(**value)
        except TypeError as exc:
            raise TypeError(f"session_settings: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"session_settings: {exc}") from None
    if not isinstance(value, SessionSettings):
        raise TypeError(
            "session_settings must be an agents.memory.SessionSettings, a dict of its fields "
            f"or None, not {type(value).__name__}"
        )
    check_limit(value.limit, "session_settings.limit")
    return value


def check_limit(limit: object, name: str = "limit") -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"{name} must be an int or None, not {type(limit).__name__}")
    return limit


def check_count(count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int, not {type(count).__name__}")
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    return count


def check_user_id(user_id: object) -> str | None:
    if user_id is not None and not isinstance(user_id, str):
        raise TypeError(f"user_id must be a str or None, not {type(user_id).__name__}")
    return user_id


def check_items(conversation_id: str, items: object) -> Sequence[Any]:
    """*items* if it is a list of JSON objects (dicts); :class:`SessionDataError` names the
    first item that is not one, :class:`TypeError` a value that is not a list."""
    if not isinstance(items, Sequence) or isinstance(items, str | bytes | bytearray):
        raise TypeError(f"items must be a list of input items, not {type(items).__name__}")
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise SessionDataError(
                f"conversation {conversation_id!r}: item {index + 1} of {len(items)} is a "
                f"{type(item).__name__}, not a JSON object (an SDK input item is a dict)"
            )
    return items
