"""What both Redis sessions share: the Session protocol, the conversation helpers, item JSON.

A session holds one conversation's history as the SDK's input items (JSON objects), oldest
first. :class:`BaseSession` implements the SDK's ``Session`` protocol (``get_items``,
``add_items``, ``pop_item``, ``clear_session``) and the conversation helpers (``create``,
``load``, ``store_agent_result``, ``to_agent_inputs``) on top of a few storage primitives that
:class:`~runtime.sessions.AgentSession` (hash + list) and :class:`~runtime.sessions.JSONSession`
(one RedisJSON document) provide, each write as one Lua script: one round trip, atomic, and
Cluster-safe because every key of a conversation shares the hash tag ``{session:<id>}``.

Every write is atomic: if the call is cancelled or the connection drops while it is in flight,
it happened entirely or not at all (``length()`` tells which). Every argument (TTL, items,
limits, ``session_settings``…) is checked before the first write
(:mod:`runtime.sessions.checks`): a call refused with ``TypeError``, ``ValueError`` or
:class:`~runtime.errors.SessionDataError` wrote nothing.
"""

from __future__ import annotations

import contextlib
import uuid
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Self

import anyio
import msgspec
import redis.asyncio
from agents.memory.session import SessionABC

from runtime.errors import KeyNameError
from runtime.keys import Keys, hash_tag
from runtime.redis.connection import create_client, translate_errors
from runtime.sessions.checks import (
    check_count,
    check_fence,
    check_items,
    check_keys,
    check_limit,
    check_session_settings,
    check_ttl,
    check_user_id,
)
from runtime.sessions.codec import decode_item, encode_items, normalize
from runtime.sessions.errors import (
    SessionError,
    SessionFenceError,
    SessionNotFound,
)
from runtime.sessions.scripts import CONFLICT, FENCED, StoreScripts
from runtime.settings.model import RedisSettings

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
    from agents.memory import SessionSettings
    from agents.result import RunResultBase

__all__ = ["BaseSession", "Fence", "SessionInfo"]

Fence = tuple[str, str]
"""``(lease key, token)``: writes succeed only while ``GET lease_key == token``."""

# A run result that only repeats the stored history is retried this often when another
# writer appends between reading the history and appending (see store_agent_result).
_STORE_ATTEMPTS = 5


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Metadata of one conversation; times are Unix seconds (server clock)."""

    conversation_id: str
    user_id: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    item_count: int = 0


def common_length(held_tail: Sequence[Any], new: Sequence[Any]) -> int:
    """The longest run of items that ends *held_tail* and starts *new*."""
    for count in range(min(len(held_tail), len(new)), 0, -1):
        if held_tail[len(held_tail) - count :] == new[:count]:
            return count
    return 0


class BaseSession(SessionABC):
    """The SDK ``Session`` protocol and conversation helpers on a Redis client.

    Subclasses store the items; this class holds what the protocol and the helpers share.
    *ttl* (seconds) expires an idle conversation: every write sets it again on the
    conversation's keys. *fence* ``(lease_key, token)`` makes every write check the lease
    first (:class:`SessionFenceError` when it is held by another token or has expired); the
    lease key must share the conversation's hash tag.
    """

    kind = "session"
    """Name used in error messages."""

    session_id: str

    def __init__(
        self,
        session_id: str,
        client: redis.asyncio.Redis,
        *,
        keys: Keys | None = None,
        ttl: float | None = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        fence: Fence | None = None,
    ) -> None:
        # Every argument is checked before anything is written (runtime.sessions.checks).
        self.keys = check_keys(keys)
        self.session_id = session_id
        self.session_settings = session_settings
        self.client = client
        tag = hash_tag(self.keys.session(session_id))  # validates the id
        ttl_ms = check_ttl(ttl)
        self._ttl = ttl
        fence = check_fence(fence)
        if fence is not None and hash_tag(fence[0]) != tag:
            raise KeyNameError(
                f"the lease key {fence[0]!r} must share the hash tag {{{tag}}} of the "
                "conversation, so one script can check it and write (Redis Cluster)"
            )
        self._fence = fence
        self.lease_key = fence[0] if fence else self.keys.session_lease(session_id)
        # ARGV[1..3] of every write script (see LUA_PRELUDE)
        self._head: tuple[str, int, str] = (fence[1] if fence else "", ttl_ms, session_id)
        self._owns_client = False
        self._closed = False
        self._bind()

    @abstractmethod
    def _bind(self) -> None:
        """Set the store's keys (``_write_keys``…) and scripts (``_scripts``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.session_id!r}, keys={self.keys!r})"

    @property
    def session_settings(self) -> SessionSettings | None:
        """The SDK's session settings (``limit``: the default of :meth:`get_items`).

        Set from a :class:`~agents.memory.SessionSettings`, a dict of its fields (as the SDK's
        own sessions take) or ``None``; anything else is refused at once.
        """
        return self._session_settings

    @session_settings.setter
    def session_settings(self, value: SessionSettings | dict[str, Any] | None) -> None:
        self._session_settings = check_session_settings(value)

    @property
    def conversation_id(self) -> str:
        """The conversation's id (the same as ``session_id``)."""
        return self.session_id

    @property
    def ttl(self) -> float | None:
        """Seconds an idle conversation lives after its last write (``None``: forever)."""
        return self._ttl

    @property
    def fence(self) -> Fence | None:
        """The ``(lease_key, token)`` every write checks, if any."""
        return self._fence

    # --- the SDK Session protocol ---------------------------------------------------------
    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The latest *limit* items, oldest first (all when ``None``), in one round trip.

        Without *limit*, ``session_settings.limit`` applies, as in the SDK's sessions.
        """
        self._check_open()
        limit = check_limit(limit)
        if limit is None and self.session_settings is not None:
            limit = check_limit(self.session_settings.limit, "session_settings.limit")
        if limit is not None and limit <= 0:
            return []
        return await self._read(limit)

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append *items* (oldest first) in one atomic round trip.

        Also sets ``updated_at`` and ``item_count`` (and ``created_at`` on the first write)
        in the metadata, and the TTL of the conversation's keys when there is one.
        """
        self._check_open()
        check_items(self.session_id, items)
        if items:
            self._written(await self._append(encode_items(self.session_id, items), -1))

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item (``None`` when there is none), atomically."""
        self._check_open()
        code, raw = await self._pop()
        self._written(code)
        if raw is None:
            return None
        return decode_item(self.session_id, raw, "the popped item (now removed)")

    async def clear_session(self) -> None:
        """Remove every item; the conversation itself (its metadata) remains."""
        self._check_open()
        self._written(await self._trim(0))

    # --- beyond the protocol --------------------------------------------------------------
    @abstractmethod
    async def length(self) -> int:
        """How many items the conversation holds."""

    async def rollback_to(self, count: int) -> int:
        """Keep only the first *count* items (undo what a failed attempt appended).

        Fenced like every write. Returns the length afterwards (less than *count* when the
        conversation held fewer items).
        """
        self._check_open()
        result = await self._trim(check_count(count))
        self._written(result)
        return result

    async def exists(self) -> bool:
        """Whether the conversation exists (created, or written to, and not expired)."""
        self._check_open()
        return await self._exists()

    async def info(self) -> SessionInfo:
        """The conversation's metadata; :class:`SessionNotFound` when it does not exist."""
        self._check_open()
        found = await self._info()
        if found is None:
            raise SessionNotFound(self.session_id)
        return found

    async def delete(self) -> None:
        """Delete the conversation: its items and metadata (fenced like every write)."""
        self._check_open()
        self._written(await self._delete())

    async def to_agent_inputs(self) -> list[TResponseInputItem]:
        """The whole history as SDK input items (``session_settings.limit`` does not apply).

        Pass it (plus the new message) as the input of a run that does not use the session.
        """
        self._check_open()
        return await self._read(None)

    async def store_agent_result(self, result: RunResultBase) -> int:
        """Append what *result* adds to the history; returns how many items were appended.

        ``result.to_input_list()`` is the run's input followed by the items it generated. The
        longest run of items that ends the stored history and starts that list is already
        held, and only the rest is appended, so:

        - a run given ``await session.to_agent_inputs() + [new message]`` (or only the new
          message) appends the new message and the generated items;
        - a run that itself used this session (``Runner.run(..., session=session)``) has
          already stored everything: nothing is appended, calling this is harmless.

        Items are matched by content; generated items carry unique ids (message, call ids).
        The append is atomic and checks that no other writer appended since the history was
        read (it reads again and retries if one did).
        """
        self._check_open()
        new = result.to_input_list()
        encoded = encode_items(self.session_id, new)
        normalized = [normalize(one) for one in encoded]
        for _ in range(_STORE_ATTEMPTS):
            length, tail = await self._tail(len(normalized))
            held = common_length(tail, normalized)
            if held == len(normalized):
                return 0
            appended = await self._append(encoded[held:], length)
            if appended != CONFLICT:
                self._written(appended)
                return len(normalized) - held
        raise SessionError(
            f"conversation {self.session_id!r}: other writers kept appending while the run "
            f"result was being stored ({_STORE_ATTEMPTS} attempts)"
        )

    # --- creating, loading, closing -------------------------------------------------------
    @classmethod
    async def create(
        cls,
        user_id: str | None = None,
        *,
        redis_url: str | None = None,
        client: redis.asyncio.Redis | None = None,
        conversation_id: str | None = None,
        ttl: float | None = None,
        keys: Keys | None = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> Self:
        """Start a new conversation (a new random id unless *conversation_id* is given).

        Stores its metadata (``user_id``, ``created_at``). Give *client*, or *redis_url* for
        a client the session owns and closes in :meth:`close`. :class:`SessionError` when
        *conversation_id* already exists.
        """

        check_user_id(user_id)

        async def new(session: Self) -> None:
            if not await session._create(user_id):
                raise SessionError(
                    f"conversation {session.session_id!r} already exists: load() it instead"
                )

        session_id = conversation_id if conversation_id is not None else uuid.uuid4().hex
        return await cls._open(
            session_id, redis_url, client, new,
            keys=keys, ttl=ttl, session_settings=session_settings,
        )  # fmt: skip

    @classmethod
    async def load(
        cls,
        conversation_id: str,
        *,
        redis_url: str | None = None,
        client: redis.asyncio.Redis | None = None,
        keys: Keys | None = None,
        ttl: float | None = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> Self:
        """Open an existing conversation; :class:`SessionNotFound` when there is none.

        Give *client*, or *redis_url* for a client the session owns and closes in
        :meth:`close`.
        """

        async def existing(session: Self) -> None:
            if not await session._exists():
                raise SessionNotFound(conversation_id)

        return await cls._open(
            conversation_id, redis_url, client, existing,
            keys=keys, ttl=ttl, session_settings=session_settings,
        )  # fmt: skip

    @classmethod
    async def _open(
        cls,
        session_id: str,
        redis_url: str | None,
        client: redis.asyncio.Redis | None,
        check: Callable[[Self], Awaitable[None]],
        **options: Any,
    ) -> Self:
        """A session on *client* or on a client of its own for *redis_url*, once *check*
        passed; a client of its own is closed again when anything fails."""
        connection, owned = _connect(redis_url, client)
        try:
            session = cls(session_id, connection, **options)
            session._owns_client = owned
            await check(session)
        except BaseException:
            if owned:
                with anyio.CancelScope(shield=True):
                    await connection.aclose()
            raise
        return session

    async def close(self) -> None:
        """Close the client if the session created it (from ``redis_url``); else nothing.

        A session whose client was closed refuses further use; a given client stays open
        and usable, and is its owner's to close.
        """
        if self._owns_client and not self._closed:
            self._closed = True
            await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.close()

    # --- helpers for subclasses -----------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SessionError(f"{self.kind} {self.session_id!r} is closed")

    def _written(self, code: int) -> None:
        if code == FENCED:
            raise SessionFenceError(self.session_id, self.lease_key)

    # --- storage primitives ---------------------------------------------------------------
    @abstractmethod
    async def _read(self, limit: int | None) -> list[TResponseInputItem]:
        """The latest *limit* items (all when ``None``; *limit* > 0), oldest first."""

    # Both stores keep the same scripts (add, pop, trim, delete, create, tail) over their keys.
    _scripts: StoreScripts
    _write_keys: tuple[str, ...]
    _head: tuple[str, int, str]

    def _guard(self, action: str) -> contextlib.AbstractContextManager[None]:
        """Translate Redis errors met while doing *action* (a store may add its own)."""
        return translate_errors(action)

    async def _append(self, encoded: list[bytes], expected: int) -> int:
        with self._guard("append session items"):
            return int(
                await self._scripts.add(
                    keys=self._write_keys, args=[*self._head, expected, *encoded]
                )
            )

    async def _pop(self) -> tuple[int, bytes | str | None]:
        with self._guard("pop a session item"):
            reply: list[Any] = await self._scripts.pop(keys=self._write_keys, args=self._head)
        return int(reply[0]), (reply[1] if len(reply) > 1 else None)

    async def _trim(self, keep: int) -> int:
        with self._guard("trim session items"):
            return int(await self._scripts.trim(keys=self._write_keys, args=[*self._head, keep]))

    async def _delete(self) -> int:
        with self._guard("delete a session"):
            return int(await self._scripts.delete(keys=self._write_keys, args=self._head))

    async def _create(self, user_id: str | None) -> bool:
        _, ttl_ms, session_id = self._head  # creating is never fenced
        args: list[str | int] = [
            "",
            ttl_ms,
            session_id,
            user_id or "",
            str(int(user_id is not None)),
        ]
        with self._guard("create a session"):
            return bool(await self._scripts.create(keys=self._write_keys, args=args))

    @abstractmethod
    async def _exists(self) -> bool: ...

    @abstractmethod
    async def _info(self) -> SessionInfo | None: ...

    @abstractmethod
    async def _tail(self, count: int) -> tuple[int, list[TResponseInputItem]]:
        """(length, the latest *count* items) read atomically."""


def _connect(
    redis_url: str | None, client: redis.asyncio.Redis | None
) -> tuple[redis.asyncio.Redis, bool]:
    """The client to use and whether the session owns it."""
    if (redis_url is None) == (client is None):
        raise ValueError("give exactly one of redis_url= and client=")
    if client is not None:
        return client, False
    assert redis_url is not None
    return create_client(RedisSettings(), redis_url), True
