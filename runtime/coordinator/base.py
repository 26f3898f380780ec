"""What every part of the coordinator shares: its client, keys, streams and consumer group.

Built from the deployment's settings unless told otherwise: with no ``redis_url`` and no
``client``, the URL is ``redis.url`` (or ``REDIS_URL``), else that of the embedded server
started by ``agents-worker redis start``; with no ``keys``, the prefix is
``redis.key_prefix``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from types import TracebackType
from typing import Self

import redis.asyncio

from runtime.coordinator.events import EventType
from runtime.coordinator.handoffs import HandoffSink
from runtime.errors import CoordinatorError
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.redis.connection import create_client, translate_errors
from runtime.redis.embedded import EmbeddedRedis
from runtime.settings.loader import load_settings
from runtime.settings.model import Settings

__all__ = ["CoordinatorBase"]

log = get_logger("runtime.coordinator")


class CoordinatorBase:
    """The coordinator's state and lifecycle; see :class:`runtime.coordinator.AgentCoordinator`
    for the arguments."""

    def __init__(
        self,
        redis_url: str | None = None,
        stream_name: str = "agent_events",
        consumer_group: str | None = None,
        consumer_name: str | None = None,
        *,
        client: redis.asyncio.Redis | None = None,
        keys: Keys | None = None,
        maxlen: int = 10_000,
        handoff_sink: HandoffSink | None = None,
        continue_handoffs: bool = True,
        settings: Settings | None = None,
    ) -> None:
        if maxlen < 1:
            raise CoordinatorError(f"maxlen must be at least 1, not {maxlen}")
        if consumer_group is not None and not consumer_group:
            raise CoordinatorError("consumer_group must not be empty")
        self._settings = settings
        self.keys = keys if keys is not None else Keys(self.settings.redis.key_prefix)
        self.stream_name = stream_name
        self.streams: dict[EventType, str] = {
            t: self.keys.coordination(stream_name, t.value) for t in EventType
        }
        """The Redis key of each event type's stream."""
        self.consumer_group = consumer_group
        self.consumer_name = consumer_name or (
            f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
            if consumer_group
            else None
        )
        self.maxlen = maxlen
        self.handoff_sink = handoff_sink
        self.continue_handoffs = continue_handoffs
        self.malformed = 0
        self._owns_client = client is None
        if client is None:
            self._url: str | None = redis_url or self._settings_url()
            self.client = create_client(self.settings.redis, self._url)
        else:
            self._url = None
            self.client = client
        self._types_by_stream = {key: t for t, key in self.streams.items()}
        self._initialized = False
        self._setup()

    def _setup(self) -> None:
        """Set up what a part needs once the client is known (parts extend it)."""

    @property
    def settings(self) -> Settings:
        """The settings given, else the deployment's (:func:`runtime.load_settings`, read
        once when first needed)."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def _settings_url(self) -> str:
        url = self.settings.redis.url
        if url is not None:
            return url
        running = EmbeddedRedis(self.settings.redis.embedded).status()
        if running is None:
            raise CoordinatorError(
                "no Redis to connect to: set redis.url (or REDIS_URL), start the embedded "
                "server with `agents-worker redis start`, or pass redis_url= or client="
            )
        return running.url

    # --- lifecycle ----------------------------------------------------------------------
    async def initialize(self) -> None:
        """Create the consumer group on every type stream (from the start, creating the
        streams); does nothing without a group. Safe to call again: existing groups stay."""
        if self.consumer_group is not None:
            await self._create_groups(self.consumer_group)
        self._initialized = True

    async def _create_groups(self, group: str) -> None:
        with translate_errors("create the coordination consumer groups", self._url):
            async with self.client.pipeline(transaction=False) as pipe:
                for key in self.streams.values():
                    pipe.xgroup_create(key, group, id="0", mkstream=True)
                replies = await pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                    raise reply
        log.debug("coordinator.groups_ready", stream=self.stream_name, group=group)

    async def _ensure_initialized(self) -> None:
        if not self._initialized:
            await self.initialize()

    async def close(self) -> None:
        """Close the client the coordinator opened itself (a given client is left open)."""
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> Self:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- checks shared by the parts -----------------------------------------------------
    def _require_group(self, action: str) -> tuple[str, str]:
        if self.consumer_group is None or self.consumer_name is None:
            raise CoordinatorError(
                f"{action} needs a consumer group: AgentCoordinator(..., consumer_group=...)"
            )
        return self.consumer_group, self.consumer_name

    def _streams_of(self, event_types: Iterable[str] | None) -> list[str]:
        if event_types is None:
            return list(self.streams.values())
        if isinstance(event_types, str):
            event_types = [event_types]
        chosen: list[str] = []
        for name in event_types:
            try:
                key = self.streams[EventType(name)]
            except ValueError:
                known = ", ".join(t.value for t in EventType)
                raise CoordinatorError(f"unknown event type {name!r} (known: {known})") from None
            if key not in chosen:
                chosen.append(key)
        if not chosen:
            raise CoordinatorError("event_types is empty (None subscribes to every type)")
        return chosen
