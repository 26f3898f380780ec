"""The coordinator is built from the deployment's settings and knows nothing of agents.

``AgentCoordinator()`` used ``redis://localhost:6379`` and the prefix ``aw`` whatever the
settings said, and reached up into the agents layer for handoffs (issue 10, item 12).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from runtime import Keys
from runtime.coordinator import (
    AgentCoordinator,
    CoordinationEvent,
    CoordinatorError,
    EventType,
    HandoffContext,
    handoff_handler,
    set_handoff_handler,
)
from runtime.redis import EmbeddedRedis
from tests.conftest import embedded_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"awcoord{uuid.uuid4().hex[:8]}"


async def _cleanup(client: redis.asyncio.Redis, prefix: str) -> None:
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.unlink(key)


async def test_no_arguments_use_the_settings_url_and_prefix(
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    raw: redis.asyncio.Redis,
    prefix: str,
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("AGENTS_WORKER_REDIS_KEY_PREFIX", prefix)
    coordinator = AgentCoordinator(continue_handoffs=False)
    try:
        assert coordinator.keys.prefix == prefix
        entry_id = await coordinator.publish_state_changed("s1", {"step": 1})
        key = coordinator.streams[EventType.STATE_CHANGED]
        assert key.startswith(f"{prefix}:")
        assert [e[0].decode() for e in await raw.xrange(key)] == [entry_id]
    finally:
        await coordinator.close()
        await _cleanup(raw, prefix)


async def test_an_explicit_url_wins_over_the_settings(
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    raw: redis.asyncio.Redis,
    prefix: str,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("AGENTS_WORKER_REDIS_KEY_PREFIX", prefix)
    async with AgentCoordinator(redis_url, continue_handoffs=False) as coordinator:
        await coordinator.publish_agent_started("a", "s1", "in")
        assert await raw.xlen(coordinator.streams[EventType.AGENT_STARTED]) == 1
    await _cleanup(raw, prefix)


async def test_without_a_url_the_running_embedded_server_is_used(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data_dir = tmp_path / "embedded"
    monkeypatch.setenv("AGENTS_WORKER_REDIS_EMBEDDED_DATA_DIR", str(data_dir))
    with pytest.raises(CoordinatorError, match="agents-worker redis start"):
        AgentCoordinator()
    server = EmbeddedRedis(embedded_settings(data_dir, appendonly=False))
    status = server.start()
    try:
        async with AgentCoordinator(continue_handoffs=False) as coordinator:
            assert coordinator.keys.prefix == "aw"
            await coordinator.publish_state_changed("s1", {})
            assert coordinator.client.connection_pool.connection_kwargs["port"] == status.state.port
            assert await coordinator.client.xlen(coordinator.streams[EventType.STATE_CHANGED])
    finally:
        server.stop()


async def test_a_handoff_without_a_registered_handler_is_refused_and_not_published(
    client: redis.asyncio.Redis, keys: Keys
) -> None:
    previous = set_handoff_handler(None)
    try:
        coordinator = AgentCoordinator(client=client, keys=keys)
        with pytest.raises(CoordinatorError, match="no handoff handler is registered"):
            await coordinator.publish_handoff_ready("a", "b", "s1", {})
        assert await client.xlen(coordinator.streams[EventType.HANDOFF_READY]) == 0
        # announcing only needs no handler
        quiet = AgentCoordinator(client=client, keys=keys, continue_handoffs=False)
        await quiet.publish_handoff_ready("a", "b", "s1", {})
        [(_, [(_, fields)])] = await client.xread(
            {coordinator.streams[EventType.HANDOFF_READY]: "0-0"}
        )
        assert b"run_id" not in fields[b"event"]
    finally:
        set_handoff_handler(previous)


async def test_the_registered_handler_gets_the_coordinators_context(
    client: redis.asyncio.Redis, keys: Keys
) -> None:
    seen: list[tuple[CoordinationEvent, HandoffContext]] = []

    async def handler(event: CoordinationEvent, where: HandoffContext) -> str:
        seen.append((event, where))
        return "run-7"

    previous = set_handoff_handler(handler)
    try:
        assert handoff_handler() is handler
        coordinator = AgentCoordinator(client=client, keys=keys, consumer_group="g")
        await coordinator.publish_handoff_ready("a", "b", "s1", {"k": 1})
        [event] = [e async for e in coordinator.subscribe(max_events=1, timeout_ms=1000)]
        assert event.data["run_id"] == "run-7"
        [(sent, where)] = seen
        assert sent.data["to_agent"] == "b" and sent.session_id == "s1"
        assert where.client is client and where.keys is keys
        assert where.settings.redis.key_prefix == coordinator.keys.prefix
    finally:
        set_handoff_handler(previous)


def test_importing_the_agents_package_registers_the_continuation() -> None:
    import runtime.agents
    from runtime.agents.handoffs import continue_handoff

    assert runtime.agents.__name__ == "runtime.agents"
    assert handoff_handler() is continue_handoff
