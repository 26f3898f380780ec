"""Inspecting and trimming the coordination streams: lengths, groups, pending, trim."""

from __future__ import annotations

from typing import Any

import redis.exceptions

from runtime.coordinator.base import CoordinatorBase
from runtime.coordinator.events import EventType, id_key, text
from runtime.errors import CoordinatorError
from runtime.redis.connection import translate_errors

__all__ = ["Inspector"]


class Inspector(CoordinatorBase):
    """The inspection and upkeep part of :class:`~runtime.coordinator.AgentCoordinator`."""

    async def get_pending_count(self) -> int:
        """Events handed out and not yet acked: this coordinator's group's, summed over the
        type streams (every group's when the coordinator has none).

        >>> await coordinator.get_pending_count()  # doctest: +SKIP
        0
        """
        total = 0
        for info in (await self._stream_details()).values():
            for group in info["groups"]:
                if self.consumer_group is None or group["name"] == self.consumer_group:
                    total += group["pending"]
        return total

    async def get_stream_info(self) -> dict[str, Any]:
        """Lengths, entry ids and consumer groups of the coordination stream.

        Top level (all types together): ``length``, ``first_entry`` / ``last_entry`` (the
        oldest and newest entry ids, or ``None``; ids of different types compare by their
        millisecond time only), ``groups`` (per group name: ``pending``,
        ``lag`` — ``None`` when Redis cannot tell — and ``consumers``, the most any type stream
        has), ``pending`` (all groups). ``types`` holds the same per event type, with the
        stream ``key`` and each group's ``last_delivered_id``.

        >>> info = await coordinator.get_stream_info()  # doctest: +SKIP
        >>> info["length"], info["types"]["handoff_ready"]["length"]  # doctest: +SKIP
        (12, 3)
        """
        types = await self._stream_details()
        groups: dict[str, dict[str, Any]] = {}
        for info in types.values():
            for group in info["groups"]:
                total = groups.setdefault(
                    group["name"], {"name": group["name"], "pending": 0, "lag": 0, "consumers": 0}
                )
                total["pending"] += group["pending"]
                total["consumers"] = max(total["consumers"], group["consumers"])
                if total["lag"] is not None:
                    total["lag"] = None if group["lag"] is None else total["lag"] + group["lag"]
        firsts = [i["first_entry"] for i in types.values() if i["first_entry"]]
        lasts = [i["last_entry"] for i in types.values() if i["last_entry"]]
        return {
            "stream_name": self.stream_name,
            "length": sum(i["length"] for i in types.values()),
            "first_entry": min(firsts, key=id_key) if firsts else None,
            "last_entry": max(lasts, key=id_key) if lasts else None,
            "groups": list(groups.values()),
            "pending": sum(g["pending"] for g in groups.values()),
            "types": {t.value: types[t] for t in EventType},
        }

    async def _stream_details(self) -> dict[EventType, dict[str, Any]]:
        details: dict[EventType, dict[str, Any]] = {}
        with translate_errors("read the coordination streams", self._url):
            for kind, key in self.streams.items():
                details[kind] = await self._one_stream(key)
        return details

    async def _one_stream(self, key: str) -> dict[str, Any]:
        info: dict[str, Any] = {
            "key": key,
            "length": 0,
            "first_entry": None,
            "last_entry": None,
            "groups": [],
        }
        try:
            stream: Any = await self.client.xinfo_stream(key)
            groups: Any = await self.client.xinfo_groups(key)
        except redis.exceptions.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return info
            raise
        first, last = stream.get("first-entry"), stream.get("last-entry")
        info["length"] = int(stream["length"])
        info["first_entry"] = text(first[0]) if first else None
        info["last_entry"] = text(last[0]) if last else None
        info["groups"] = [
            {
                "name": text(g["name"]),
                "pending": int(g["pending"]),
                "lag": None if g.get("lag") is None else int(g["lag"]),
                "consumers": int(g["consumers"]),
                "last_delivered_id": text(g["last-delivered-id"]),
            }
            for g in groups
        ]
        return info

    async def trim_stream(self, max_length: int, approximate: bool = True) -> int:
        """Trim every type stream to *max_length* entries; return how many were removed.

        With *approximate* Redis removes whole internal nodes only (cheaper; a stream may keep
        somewhat more). Pending entries trimmed away are dropped by the next
        :meth:`claim_abandoned_messages`.

        >>> await coordinator.trim_stream(1000)  # doctest: +SKIP
        0
        """
        if max_length < 0:
            raise CoordinatorError(f"max_length must be >= 0, not {max_length}")
        with translate_errors("trim the coordination streams", self._url):
            async with self.client.pipeline(transaction=False) as pipe:
                for key in self.streams.values():
                    pipe.xtrim(key, maxlen=max_length, approximate=approximate)
                return sum(int(n) for n in await pipe.execute())
