"""Items as JSON (msgspec): encoded once on write, decoded on read with clear errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import msgspec

from runtime.sessions.errors import SessionDataError

if TYPE_CHECKING:
    from agents.items import TResponseInputItem

__all__ = [
    "corrupt",
    "decode_array",
    "decode_item",
    "decode_items",
    "encode_items",
    "normalize",
    "text",
]

_encoder = msgspec.json.Encoder()
# A stored item nested deeper than the decoder can follow reads as corrupt, not as a crash.
_UNREADABLE = (msgspec.DecodeError, RecursionError)
_item_decoder = msgspec.json.Decoder(dict[str, Any])
_array_decoder = msgspec.json.Decoder(list[dict[str, Any]])


def encode_items(conversation_id: str, items: Sequence[Any]) -> list[bytes]:
    """The items as JSON; :class:`SessionDataError` names the first one that is not JSON."""
    try:
        return [_encoder.encode(item) for item in items]
    except (TypeError, ValueError, RecursionError, msgspec.EncodeError) as exc:
        raise SessionDataError(
            f"conversation {conversation_id!r}: an item cannot be stored as JSON: {exc}"
        ) from exc


def decode_items(conversation_id: str, raw: Sequence[bytes | str]) -> list[TResponseInputItem]:
    """Stored items (one JSON object each) back as SDK input items."""
    try:
        return cast("list[TResponseInputItem]", [_item_decoder.decode(r) for r in raw])
    except _UNREADABLE:
        pass
    for index, one in enumerate(raw):
        try:
            _item_decoder.decode(one)
        except _UNREADABLE as exc:
            raise corrupt(conversation_id, one, f"item {index + 1} of the {len(raw)} read") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def decode_item(conversation_id: str, raw: bytes | str, where: str) -> TResponseInputItem:
    try:
        return cast("TResponseInputItem", _item_decoder.decode(raw))
    except _UNREADABLE as exc:
        raise corrupt(conversation_id, raw, where) from exc


def decode_array(conversation_id: str, raw: bytes | str | None) -> list[TResponseInputItem]:
    """A JSON array of stored items (a RedisJSON reply) back as SDK input items."""
    if raw is None:
        return []
    try:
        return cast("list[TResponseInputItem]", _array_decoder.decode(raw))
    except _UNREADABLE as exc:
        error = exc
    try:
        values = msgspec.json.decode(raw)
    except _UNREADABLE:
        raise corrupt(conversation_id, raw, "the reply") from error
    for index, value in enumerate(values):
        if not isinstance(value, dict):
            where = f"item {index + 1} of the {len(values)} read"
            raise corrupt(conversation_id, _encoder.encode(value), where) from error
    raise corrupt(conversation_id, raw, "the reply") from error


def corrupt(conversation_id: str, raw: bytes | str, where: str) -> SessionDataError:
    shown = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    snippet = shown if len(shown) <= 80 else shown[:77] + "..."
    return SessionDataError(
        f"conversation {conversation_id!r}: {where} is not a JSON object: {snippet!r}", raw
    )


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def normalize(encoded: bytes) -> dict[str, Any]:
    """An encoded item decoded again: what reading it back from Redis gives."""
    return _item_decoder.decode(encoded)
