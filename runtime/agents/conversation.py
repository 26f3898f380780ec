"""The conversation as one run sees it: read when its turn begins, written when it ends.

A worker runs an agent on a :class:`TurnSession`, not on a live :class:`AgentSession`. The
history is read in the same round trip that takes the conversation's turn, the SDK's writes
(``add_items``, ``pop_item``, ``clear_session``) are kept in memory, and everything the run
changed is written in the round trip that stores its result and ends its turn
(:meth:`runtime.agents.turns.SessionTurns.queue_end`). The run holds the conversation's lease
the whole time, so nothing else writes it by the rules of the runtime and this view stays
exact; an app that appends to a running conversation anyway keeps its items (they are
placed before the run's).

What this buys:

- a turn is atomic: a run that crashes, times out or is retried leaves no trace in the
  history, and its next attempt starts from the history as it was, never duplicating input;
- the run's session costs no round trip of its own (the SDK's ``Runner`` reads the session
  once and writes it two or more times per run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from agents.memory.session import SessionABC

from runtime.sessions.codec import decode_item, decode_items, encode_items

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
    from agents.memory import SessionSettings

__all__ = ["TurnSession"]


class TurnSession(SessionABC):
    """An SDK ``Session`` over a snapshot of a conversation, with its writes held back."""

    session_settings: SessionSettings | None = None

    def __init__(self, session_id: str, held: Sequence[bytes]) -> None:
        """*held*: the conversation's items (stored JSON, oldest first) when the turn began."""
        self.session_id = session_id
        self._held = list(held)
        self._keep = len(self._held)
        self._added: list[bytes] = []

    def __repr__(self) -> str:
        return f"TurnSession({self.session_id!r}, held={len(self._held)}, added={len(self._added)})"

    # --- the SDK Session protocol ---------------------------------------------------------
    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The latest *limit* items (all when ``None``), oldest first, as fresh objects."""
        items = self._held[: self._keep] + self._added
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return decode_items(self.session_id, items)

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        self._added += encode_items(self.session_id, items)

    async def pop_item(self) -> TResponseInputItem | None:
        if self._added:
            raw = self._added.pop()
        elif self._keep:
            self._keep -= 1
            raw = self._held[self._keep]
        else:
            return None
        return decode_item(self.session_id, raw, "the popped item")

    async def clear_session(self) -> None:
        self._keep = 0
        self._added = []

    # --- for the commit -------------------------------------------------------------------
    @property
    def held(self) -> int:
        """How many items the conversation held when the turn began."""
        return len(self._held)

    @property
    def keep(self) -> int:
        """How many of those the run kept (fewer after ``pop_item`` / ``clear_session``)."""
        return self._keep

    @property
    def added(self) -> list[bytes]:
        """The items the run appended, as stored JSON, oldest first."""
        return self._added

    @property
    def changed(self) -> bool:
        return self._keep < len(self._held) or bool(self._added)
