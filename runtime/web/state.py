"""What the web routes read: :class:`WebState`."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import redis.asyncio

from runtime.keys import Keys
from runtime.settings.model import Settings
from runtime.web.probes import Probe

__all__ = ["WebState"]


@dataclass
class WebState:
    """The Redis client, the key names, the settings and the supervisor's probe.

    *probe* is the supervisor's; ``None`` in ``agents-worker dashboard`` (no workers of its
    own: ``/healthz`` then says that the process serves, ``/readyz`` whether Redis answers).
    """

    client: redis.asyncio.Redis
    keys: Keys
    settings: Settings
    probe: Probe | None = None
    closing: anyio.Event = field(default_factory=anyio.Event)
    """Set by :func:`runtime.web.serve` as it begins to stop, before the server is told to
    exit: live responses (the dashboard's event streams) end by themselves on it, so the
    server stops at once instead of cutting them after its grace period."""
