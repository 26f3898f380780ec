"""A submit cut off anywhere, then the documented retry (the same ``run_id``): every run
executes exactly once, and a conversation keeps its submit order (issue 10, item 4)."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import redis.asyncio

from runtime import EnqueueError, Keys, RedisConnectionError, Settings
from runtime.agents import AgentClient, RunHandle
from runtime.sessions import AgentSession
from tests.agent_apps import make_app
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until
from tests.runs_faults import FaultyProxy

pytestmark = pytest.mark.anyio

SUBMIT_COMMANDS = (
    4  # its record (alone first), the run's number, its work entry (guarded), the mark
)


@pytest.fixture
def agent_settings(redis_url: str, keys: Keys) -> Settings:
    return make_settings(redis_url, keys.prefix, **{"runs.timeout_seconds": "10"})


async def submit_with_retry(
    runs: AgentClient, proxy: FaultyProxy, text: str, run_id: str, cut_after: int
) -> RunHandle:
    """Submit with the connection cut after *cut_after* commands ran, then the docs' retry."""
    proxy.cut(run_id.encode(), after=cut_after)
    with pytest.raises(RedisConnectionError):
        await runs.run("triage", text, session_id="conv", run_id=run_id)
    assert not proxy.armed
    return await runs.run("triage", text, session_id="conv", run_id=run_id)  # the retry


async def test_a_submit_cut_off_at_every_point_then_retried_runs_exactly_once_in_order(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings, redis_url: str
) -> None:
    app, model = make_app()
    async with FaultyProxy(redis_url) as proxy:
        app_client = redis.asyncio.Redis.from_url(proxy.url)
        try:
            runs = AgentClient(app_client, keys=keys, settings=agent_settings)
            texts, handles = [], []
            for k in range(SUBMIT_COMMANDS + 1):  # 0: nothing ran … 4: all ran, reply lost
                text = f"message {k}"
                texts.append(text)
                handles.append(await submit_with_retry(runs, proxy, text, f"run-{k}", k))
            # a run that was submitted in full is recognised, not refused, when sent again
            again = await runs.run("triage", "message 4", session_id="conv", run_id="run-4")
            assert again.run_id == "run-4"
            with pytest.raises(EnqueueError, match="exists already"):  # another run, same id
                await runs.run("triage", "not the same", session_id="conv", run_id="run-4")
            assert await client.xlen(keys.inbox("triage")) == len(texts)  # one entry each
            async with running_worker(agent_settings, client, serving=app):
                results = [await handle.result(timeout=10) for handle in handles]
        finally:
            await app_client.aclose()
    assert [r.status for r in results] == ["completed"] * len(texts)
    asked = Counter(call[-1]["content"] for call in model.calls)
    assert asked == Counter(texts)  # each run executed exactly once
    history = await AgentSession("conv", client, keys=keys).get_items()
    said = [item["content"] for item in history if item.get("role") == "user"]
    assert said == texts  # in submit order
    for k in range(len(texts)):
        record = await client.hgetall(keys.run(f"run-{k}"))
        assert record[b"status"] == b"completed" and record[b"attempts"] == b"1"
    turns = await client.hgetall(keys.session_turns("conv"))
    assert int(turns[b"next"]) == len(texts) + 1  # no number left behind to wait for


async def test_a_retried_submit_without_a_conversation_runs_once(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings, redis_url: str
) -> None:
    app, model = make_app()
    async with FaultyProxy(redis_url) as proxy:
        app_client = redis.asyncio.Redis.from_url(proxy.url)
        try:
            runs = AgentClient(app_client, keys=keys, settings=agent_settings)
            handles = []
            for k in range(SUBMIT_COMMANDS):  # no number to draw: one command fewer
                proxy.cut(f"solo-{k}".encode(), after=k)
                with pytest.raises(RedisConnectionError):
                    await runs.run("triage", f"solo {k}", run_id=f"solo-{k}")
                handles.append(await runs.run("triage", f"solo {k}", run_id=f"solo-{k}"))
            async with running_worker(agent_settings, client, serving=app):
                results = [await handle.result(timeout=10) for handle in handles]
        finally:
            await app_client.aclose()
    assert [r.status for r in results] == ["completed"] * SUBMIT_COMMANDS
    asked = Counter(call[-1]["content"] for call in model.calls)
    assert asked == Counter(f"solo {k}" for k in range(SUBMIT_COMMANDS))


async def test_a_run_id_of_another_run_writes_nothing_anywhere(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """The id of a run submitted for another agent or conversation is refused before any
    write: no entry in the other agent's inbox, no number drawn in the other conversation
    (the refused submit's entry would have run and written into the first run's record)."""
    runs = AgentClient(client, keys=keys, settings=agent_settings)
    await runs.run("triage", "first", session_id="one", run_id="shared")
    for agent, session in (("billing", "one"), ("billing", "two"), ("triage", "two")):
        with pytest.raises(EnqueueError, match="exists already"):
            await runs.run(agent, "second", session_id=session, run_id="shared")
    assert await client.xlen(keys.inbox("billing")) == 0
    assert await client.xlen(keys.inbox("triage")) == 1
    assert not await client.exists(keys.session_turns("two"))
    record = await runs.handle("shared").status()
    assert record is not None and record.agent == "triage" and record.session_id == "one"


async def test_a_retry_after_the_run_ended_writes_nothing(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """The same submit sent again after its run completed (its first reply was lost) draws no
    new number in the conversation and adds no entry: a number drawn for a run that never
    comes again held the conversation up."""
    app, model = make_app()
    runs = AgentClient(client, keys=keys, settings=agent_settings)
    async with running_worker(agent_settings, client, serving=app):
        first = await runs.run("triage", "once", session_id="ended", run_id="ended-1")
        assert (await first.result(timeout=10)).ok
        again = await runs.run("triage", "once", session_id="ended", run_id="ended-1")
        assert again.run_id == "ended-1"
        assert int(await client.hget(keys.session_turns("ended"), "seq") or 0) == 1
        assert await client.xlen(keys.inbox("triage")) == 0
        after = await (await runs.run("triage", "next", session_id="ended")).result(10)
    assert after.ok and len(model.calls) == 2  # "once" ran once, then "next"


async def test_a_client_a_minute_behind_does_not_lose_its_place_in_the_conversation(
    client: redis.asyncio.Redis,
    keys: Keys,
    agent_settings: Settings,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A submit from a client whose clock is a minute behind is cut after its number was
    drawn; a later run of the conversation waits for it (by Redis's clock the number is new)
    instead of taking it for an orphan at once; the documented retry then runs it first."""
    app, _ = make_app()
    real = time.time
    async with FaultyProxy(redis_url) as proxy:
        late = redis.asyncio.Redis.from_url(proxy.url)
        try:
            monkeypatch.setattr(time, "time", lambda: real() - 60)
            behind = AgentClient(late, keys=keys, settings=agent_settings)
            proxy.cut(b"skewed-1", b"HINCRBY", after=1)  # the batch: its number, then cut
            with pytest.raises(RedisConnectionError):
                await behind.run("triage", "first", session_id="skew", run_id="skewed-1")
            monkeypatch.setattr(time, "time", real)
            runs = AgentClient(client, keys=keys, settings=agent_settings)
            second = await runs.run("triage", "second", session_id="skew")
            async with running_worker(agent_settings, client, serving=app):

                async def decided() -> bool:  # put back to wait (read again), or run already
                    status = await second.status()
                    done = status is not None and status.status == "completed"
                    return done or await _entries_read(client, keys, 2)

                await wait_until(decided, limit=20, what="the second run to wait or run")
                monkeypatch.setattr(time, "time", lambda: real() - 60)
                first = await behind.run("triage", "first", session_id="skew", run_id="skewed-1")
                monkeypatch.setattr(time, "time", real)
                assert (await first.result(timeout=20)).ok
                assert (await second.result(timeout=20)).ok
        finally:
            monkeypatch.setattr(time, "time", real)
            await late.aclose()
    history = await AgentSession("skew", client, keys=keys).get_items()
    assert [i.get("content") for i in history if i.get("role") == "user"] == ["first", "second"]


async def _entries_read(client: redis.asyncio.Redis, keys: Keys, n: int) -> bool:
    groups = await client.xinfo_groups(keys.inbox("triage"))
    return bool(groups) and int(groups[0].get("entries-read") or 0) >= n
