"""A worker's writes for a run, sent again after the connection dropped with the reply (the
write ran): nothing is written twice — events, attempts, history, lifecycle events
(issue 10, item 6). The worker's client has a retry policy (redis-py's ``Retry``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from runtime import Keys, Settings
from runtime.agents import AgentApp, AgentClient
from runtime.agents.runs import RunStore
from runtime.sessions import AgentSession
from tests.agent_apps import make_app
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until
from tests.runs_faults import FaultyProxy

pytestmark = pytest.mark.anyio


@pytest.fixture
def agent_settings(redis_url: str, keys: Keys) -> Settings:
    return make_settings(redis_url, keys.prefix, **{"runs.timeout_seconds": "10"})


@asynccontextmanager
async def worker_behind(
    proxy: FaultyProxy, settings: Settings, app: AgentApp
) -> AsyncIterator[None]:
    """A worker whose client reaches Redis through *proxy* and retries (3 times)."""
    port = int(proxy.url.rsplit(":", 1)[1])
    retrying = redis.asyncio.Redis(port=port, retry=Retry(NoBackoff(), 3))
    try:
        async with running_worker(settings, retrying, serving=app):
            yield
    finally:
        await retrying.aclose()


async def types_of(store: RunStore, run_id: str) -> list[str]:
    return [event.type for event in await store.read_events(run_id)]


async def lifecycle(client: redis.asyncio.Redis, keys: Keys, kind: str) -> int:
    return int(await client.xlen(keys.coordination("agent_events", kind)))


@pytest.mark.parametrize(
    ("what", "marker", "delay"),
    [
        ("the write that marks the run running", b"run.started", 0.3),
        ("the write of the result", b"run.completed", 0.0),
    ],
)
async def test_a_write_whose_reply_was_lost_is_not_repeated(
    client: redis.asyncio.Redis,
    keys: Keys,
    agent_settings: Settings,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    what: str,
    marker: bytes,
    delay: float,
) -> None:
    app, model = make_app(delay=delay)
    runs = AgentClient(client, keys=keys, settings=agent_settings)
    store = RunStore(client, keys, agent_settings.runs)
    handle = await runs.run("triage", "hello", session_id="s", run_id="r1")
    async with FaultyProxy(redis_url) as proxy:
        proxy.cut(b"r1", marker)  # Redis runs all of that write; its reply is lost
        with caplog.at_level("WARNING"):
            async with worker_behind(proxy, agent_settings, app):
                result = await handle.result(timeout=10)
                group = agent_settings.streams.group

                async def acked() -> bool:
                    info = await client.xpending(keys.inbox("triage"), group)
                    return bool(info["pending"] == 0)

                await wait_until(acked, what="the ack")
        assert proxy.fired == 1, what
    assert result.status == "completed" and len(model.calls) == 1
    types = await types_of(store, "r1")
    assert types.count("run.started") == 1 and types.count("run.completed") == 1, types
    assert len(types) == len(set(types))  # every event once
    assert await client.hget(keys.run("r1"), "attempts") == b"1"
    assert await lifecycle(client, keys, "agent_started") == 1
    assert await lifecycle(client, keys, "agent_completed") == 1
    history = await AgentSession("s", client, keys=keys).get_items()
    assert len(history) == 2  # the run's input and answer, once
    warned = {r.getMessage() for r in caplog.records}
    assert not warned & {"run.finished_elsewhere", "run.turn_not_written"}, warned


async def test_a_retry_note_whose_reply_was_lost_is_written_once(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings, redis_url: str
) -> None:
    app, model = make_app("rate_limited")  # the first model call is rate limited
    runs = AgentClient(client, keys=keys, settings=agent_settings)
    store = RunStore(client, keys, agent_settings.runs)
    handle = await runs.run("triage", "again", session_id="s", run_id="r2")
    async with FaultyProxy(redis_url) as proxy:
        proxy.cut(b"r2", b"run.retrying")
        async with worker_behind(proxy, agent_settings, app):
            result = await handle.result(timeout=10)
        assert proxy.fired == 1
    assert result.status == "completed" and len(model.calls) == 2
    types = await types_of(store, "r2")
    assert types.count("run.retrying") == 1, types


async def test_a_result_write_that_failed_is_retried_in_the_runs_place(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings, redis_url: str
) -> None:
    """Without a retry policy (the runtime's own clients) a failed write of the result fails
    the attempt: the worker core retries the entry, which keeps its turn in the conversation
    (it does not wait as a run that lost its number would)."""
    app, model = make_app()
    runs = AgentClient(client, keys=keys, settings=agent_settings)
    handle = await runs.run("triage", "hello", session_id="w", run_id="r3")
    later = await runs.run("triage", "later", session_id="w", run_id="r4")
    async with FaultyProxy(redis_url) as proxy:
        proxy.cut(b"r3", b"run.completed", after=0)  # the result's write never reaches Redis
        plain = redis.asyncio.Redis.from_url(proxy.url)
        try:
            async with running_worker(agent_settings, plain, serving=app):
                result = await handle.result(timeout=5)
                assert (await later.result(timeout=5)).ok
        finally:
            await plain.aclose()
        assert proxy.fired == 1
    assert result.status == "completed" and len(model.calls) == 3  # r3 twice, r4 once
    history = await AgentSession("w", client, keys=keys).get_items()
    said = [item["content"] for item in history if item.get("role") == "user"]
    assert said == ["hello", "later"]
