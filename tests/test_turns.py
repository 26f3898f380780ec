"""A run's turn of a conversation, against a real Redis: the history read when the turn is
taken, the run's changes held back and written in one script when it ends, the fence."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio
from agents import Agent, RunConfig, Runner
from agents.testing import ScriptedModel, assistant_message

from runtime import Keys, Settings
from runtime.agents.conversation import TurnSession
from runtime.agents.runs import RunStore
from runtime.agents.turns import CONFLICT, NOT_OURS, SessionTurns, Turn, check_end
from runtime.errors import Defer
from runtime.sessions import AgentSession

pytestmark = pytest.mark.anyio


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


@pytest.fixture
def turns(client: redis.asyncio.Redis, keys: Keys) -> SessionTurns:
    return SessionTurns(client, keys, lease_seconds=5)


@pytest.fixture
def runs(client: redis.asyncio.Redis, keys: Keys, settings: Settings) -> RunStore:
    return RunStore(client, keys, settings.runs)


async def take(
    client: redis.asyncio.Redis,
    turns: SessionTurns,
    runs: RunStore,
    session_id: str,
    run_id: str,
    token: str = "t1",
) -> Turn:
    async with client.pipeline(transaction=False) as pipe:
        turns.assign(pipe, session_id, run_id)
        await pipe.execute()
    return await turns.acquire(session_id, run_id, token, runs)


async def end(
    client: redis.asyncio.Redis, turns: SessionTurns, turn: Turn, session: TurnSession | None
) -> int:
    async with client.pipeline(transaction=False) as pipe:
        turns.queue_end(pipe, turn, session)
        (code,) = await pipe.execute()
    return int(code)


async def stored(client: redis.asyncio.Redis, keys: Keys, session_id: str) -> list[Any]:
    return await AgentSession(session_id, client, keys=keys).get_items()


async def test_the_history_is_read_with_the_turn_and_written_when_it_ends(
    client: redis.asyncio.Redis, keys: Keys, turns: SessionTurns, runs: RunStore
) -> None:
    await AgentSession("c", client, keys=keys).add_items([user("a"), user("b")])
    turn = await take(client, turns, runs, "c", "r1")
    assert turn.seq == 1 and turn.state == "ok" and not turn.passed
    session = turn.session()
    assert await session.get_items() == [user("a"), user("b")]
    await session.add_items([user("c")])
    assert await session.get_items() == [user("a"), user("b"), user("c")]
    assert await session.get_items(limit=2) == [user("b"), user("c")]
    assert await session.get_items(limit=0) == []
    assert len(await stored(client, keys, "c")) == 2  # nothing written before the end
    assert await end(client, turns, turn, session) == 3
    assert await stored(client, keys, "c") == [user("a"), user("b"), user("c")]
    info = await AgentSession("c", client, keys=keys).info()
    assert info.item_count == 3 and info.created_at is not None
    # the turn moved on: the next run of the conversation takes it at once
    assert (await take(client, turns, runs, "c", "r2")).seq == 2


async def test_items_read_are_fresh_objects(
    client: redis.asyncio.Redis, keys: Keys, turns: SessionTurns, runs: RunStore
) -> None:
    await AgentSession("f", client, keys=keys).add_items([user("a")])
    session = (await take(client, turns, runs, "f", "r1")).session()
    items = await session.get_items()
    items[0]["content"] = "changed"  # the SDK may edit what it reads
    assert await session.get_items() == [user("a")]


async def test_pop_and_clear_are_applied_when_the_turn_ends(
    client: redis.asyncio.Redis, keys: Keys, turns: SessionTurns, runs: RunStore
) -> None:
    await AgentSession("p", client, keys=keys).add_items([user("a"), user("b"), user("c")])
    turn = await take(client, turns, runs, "p", "r1")
    session = turn.session()
    await session.add_items([user("x")])
    assert await session.pop_item() == user("x")  # its own item first
    assert await session.pop_item() == user("c")  # then the history's
    await session.add_items([user("y")])
    assert await end(client, turns, turn, session) == 3
    assert await stored(client, keys, "p") == [user("a"), user("b"), user("y")]

    turn = await take(client, turns, runs, "p", "r2")
    session = turn.session()
    await session.clear_session()
    assert await session.pop_item() is None
    await session.add_items([user("z")])
    assert await end(client, turns, turn, session) == 1
    assert await stored(client, keys, "p") == [user("z")]

    turn = await take(client, turns, runs, "p", "r3")
    session = turn.session()
    await session.clear_session()
    assert await end(client, turns, turn, session) == 0
    assert await stored(client, keys, "p") == []


async def test_items_an_app_appends_meanwhile_are_kept_before_the_runs(
    client: redis.asyncio.Redis, keys: Keys, turns: SessionTurns, runs: RunStore
) -> None:
    await AgentSession("m", client, keys=keys).add_items([user("a")])
    turn = await take(client, turns, runs, "m", "r1")
    session = turn.session()
    await AgentSession("m", client, keys=keys).add_items([user("from the app")])  # unfenced
    await session.add_items([user("from the run")])
    assert await end(client, turns, turn, session) == 3
    assert await stored(client, keys, "m") == [
        user("a"),
        user("from the app"),
        user("from the run"),
    ]


async def test_a_removal_that_meets_a_concurrent_change_writes_nothing(
    client: redis.asyncio.Redis, keys: Keys, turns: SessionTurns, runs: RunStore
) -> None:
    await AgentSession("x", client, keys=keys).add_items([user("a"), user("b")])
    turn = await take(client, turns, runs, "x", "r1")
    session = turn.session()
    await session.pop_item()
    await AgentSession("x", client, keys=keys).add_items([user("new")])
    assert await end(client, turns, turn, session) == CONFLICT
    assert "changed by another writer" in (check_end("x", CONFLICT) or "")
    assert await stored(client, keys, "x") == [user("a"), user("b"), user("new")]


async def test_an_attempt_that_lost_the_conversation_writes_nothing(
    client: redis.asyncio.Redis, keys: Keys, turns: SessionTurns, runs: RunStore
) -> None:
    turn = await take(client, turns, runs, "l", "r1")
    await client.set(keys.session_lease("l"), "another attempt")
    session = turn.session()
    await session.add_items([user("late")])
    assert await end(client, turns, turn, session) == NOT_OURS
    assert "lost its lease" in (check_end("l", NOT_OURS) or "")
    assert await stored(client, keys, "l") == []
    assert await client.get(keys.session_lease("l")) == b"another attempt"  # left alone
    assert check_end("l", 0) is None


async def test_a_lapsed_lease_nobody_took_still_ends_the_turn(
    client: redis.asyncio.Redis, keys: Keys, turns: SessionTurns, runs: RunStore
) -> None:
    turn = await take(client, turns, runs, "e", "r1")
    await client.delete(keys.session_lease("e"))  # it expired while the run ran
    session = turn.session()
    await session.add_items([user("done")])
    assert await end(client, turns, turn, session) == 1
    assert await stored(client, keys, "e") == [user("done")]


async def test_runs_wait_for_their_turn_and_a_busy_lease(
    client: redis.asyncio.Redis, keys: Keys, turns: SessionTurns, runs: RunStore
) -> None:
    first = await take(client, turns, runs, "w", "r1")
    async with client.pipeline(transaction=False) as pipe:
        turns.assign(pipe, "w", "r2")
        await pipe.execute()
    await runs.write(lambda pipe: pipe.hset(keys.run("r1"), "status", "running"))
    with pytest.raises(Defer, match="waiting for turn 1"):
        await turns.acquire("w", "r2", "t2", runs)  # r1 holds turn 1 and is running
    assert await end(client, turns, first, None) == 0
    second = await turns.acquire("w", "r2", "t2", runs)
    assert second.seq == 2 and second.history == ()


async def test_the_turn_reports_a_run_that_is_over_or_cancelled(
    client: redis.asyncio.Redis, keys: Keys, turns: SessionTurns, runs: RunStore
) -> None:
    await runs.write(lambda pipe: pipe.hset(keys.run("r1"), "status", "completed"))
    assert (await take(client, turns, runs, "o", "r1")).state == "done"
    await runs.write(lambda pipe: pipe.hset(keys.run("r2"), mapping={"status": "queued"}))
    await runs.request_cancel("r2")
    assert await runs.may_start("r2") == "cancel"
    assert await runs.may_start("r3") == "ok"  # no record yet: it may start


async def test_a_session_ttl_applies_to_what_the_turn_writes(
    client: redis.asyncio.Redis, keys: Keys, runs: RunStore
) -> None:
    turns = SessionTurns(client, keys, lease_seconds=5, session_ttl=60)
    turn = await take(client, turns, runs, "t", "r1")
    session = turn.session()
    await session.add_items([user("a")])
    await end(client, turns, turn, session)
    for key in (keys.session("t"), keys.session_items("t")):
        assert 0 < await client.pttl(key) <= 60_000


async def test_the_sdk_runner_on_a_turn_session(
    client: redis.asyncio.Redis, keys: Keys, turns: SessionTurns, runs: RunStore
) -> None:
    """The SDK's Runner reads and writes the turn's session like any other."""
    await AgentSession("s", client, keys=keys).add_items([user("earlier")])
    turn = await take(client, turns, runs, "s", "r1")
    session = turn.session()
    model = ScriptedModel([[assistant_message("hi")]])
    agent = Agent(name="a", instructions="Answer.", model=model)
    result = await Runner.run(
        agent, "now", session=session, run_config=RunConfig(tracing_disabled=True)
    )
    assert result.final_output == "hi"
    await end(client, turns, turn, session)
    history = await stored(client, keys, "s")
    assert [item.get("role") for item in history] == ["user", "user", "assistant"]
    assert history[1] == user("now")


def test_a_turn_session_without_history() -> None:
    session = TurnSession("n", [])
    assert session.held == 0 and session.keep == 0 and not session.changed
    assert "TurnSession('n'" in repr(session)


async def test_a_waiting_run_that_was_cancelled_or_ended_needs_no_turn(
    client: redis.asyncio.Redis, keys: Keys, turns: SessionTurns, runs: RunStore
) -> None:
    first = await take(client, turns, runs, "q", "r1")
    await runs.write(lambda pipe: pipe.hset(keys.run("r1"), "status", "running"))
    async with client.pipeline(transaction=False) as pipe:
        turns.assign(pipe, "q", "r2")
        turns.assign(pipe, "q", "r3")
        pipe.hset(keys.run("r2"), "status", "queued")
        pipe.hset(keys.run("r3"), "status", "failed")  # e.g. dead-lettered
        await pipe.execute()
    await runs.request_cancel("r2")
    cancelled = await turns.acquire("q", "r2", "t2", runs)  # at once, not after r1
    assert cancelled.state == "cancel" and not cancelled.holds
    over = await turns.acquire("q", "r3", "t3", runs)
    assert over.state == "done" and not over.holds
    assert await client.get(keys.session_lease("q")) == b"t1"  # r1 still holds it
    assert await end(client, turns, first, None) == 0


def test_the_run_state_is_read_from_bytes_or_text_replies() -> None:
    assert RunStore.peeked([b"completed", None]) == "done"
    assert RunStore.peeked(["cancelled", None]) == "done"  # a client that decodes replies
    assert RunStore.peeked([b"queued", b"1"]) == "cancel"
    assert RunStore.peeked([None, None]) == "ok"
