"""Conversation sessions: one conformance suite of the SDK Session protocol, then Redis specifics.

The suite runs over AgentSession (hash + list), JSONSession (RedisJSON) and the SDK's own
SQLiteSession, which shows that the tests ask only what the protocol promises.
"""

from __future__ import annotations

import json
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio
from agents import Agent, RunConfig, Runner
from agents.memory import Session, SessionABC, SessionSettings, SQLiteSession
from agents.testing import ScriptedModel, assistant_message
from redis.crc import key_slot

import runtime.sessions
from runtime import AgentsWorkerError, KeyNameError, Keys, MissingModuleError
from runtime.sessions import (
    MAX_TTL_SECONDS,
    AgentSession,
    BaseSession,
    JSONSession,
    SessionDataError,
    SessionError,
    SessionFenceError,
    SessionNotFound,
)

pytestmark = pytest.mark.anyio

NO_TRACING = RunConfig(tracing_disabled=True)
Item = dict[str, Any]
MakeSession = Callable[..., Session]


# --- SDK input items ----------------------------------------------------------------------
def user(text: str) -> Item:
    return {"role": "user", "content": text}


def assistant(text: str, item_id: str = "msg_1") -> Item:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def function_call(name: str, arguments: dict[str, Any], call_id: str) -> Item:
    return {
        "type": "function_call",
        "id": f"fc_{call_id}",
        "call_id": call_id,
        "name": name,
        "arguments": json.dumps(arguments),
        "status": "completed",
    }


def function_output(call_id: str, output: str) -> Item:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def numbered(count: int, start: int = 0) -> list[Item]:
    return [user(f"message {i}") for i in range(start, start + count)]


# --- the three implementations --------------------------------------------------------------
KINDS = ["list", "json", "sqlite"]


@pytest.fixture(params=KINDS)
async def new_session(
    request: pytest.FixtureRequest, client: redis.asyncio.Redis, keys: Keys, tmp_path: Path
) -> AsyncIterator[MakeSession]:
    """Makes sessions of one implementation; all share one store (Redis, or one SQLite file)."""
    made: list[SQLiteSession] = []

    def make(session_id: str = "conv", **options: Any) -> Session:
        if request.param == "list":
            return AgentSession(session_id, client, keys=keys, **options)
        if request.param == "json":
            return JSONSession(session_id, client, keys=keys, **options)
        session = SQLiteSession(session_id, tmp_path / "sessions.db", **options)
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


@pytest.fixture(params=["list", "json"])
def redis_kind(request: pytest.FixtureRequest) -> type[BaseSession]:
    return AgentSession if request.param == "list" else JSONSession


def data_keys(session: BaseSession) -> list[str]:
    keys, sid = session.keys, session.session_id
    if isinstance(session, JSONSession):
        return [keys.session_doc(sid)]
    return [keys.session(sid), keys.session_items(sid)]


# --- conformance: the Session protocol ------------------------------------------------------
async def test_implements_the_sdk_protocol(new_session: MakeSession) -> None:
    session = new_session("conv")
    assert isinstance(session, Session)
    assert isinstance(session, SessionABC)
    assert session.session_id == "conv"


async def test_empty_session(new_session: MakeSession) -> None:
    session = new_session()
    assert await session.get_items() == []
    assert await session.get_items(limit=3) == []
    assert await session.pop_item() is None
    await session.clear_session()
    assert await session.get_items() == []


async def test_items_come_back_in_order(new_session: MakeSession) -> None:
    session = new_session()
    await session.add_items([user("one"), assistant("two")])
    await session.add_items([user("three")])
    await session.add_items([])
    assert await session.get_items() == [user("one"), assistant("two"), user("three")]


async def test_limit_returns_the_latest_items_oldest_first(new_session: MakeSession) -> None:
    session = new_session()
    await session.add_items(numbered(5))
    assert await session.get_items(limit=0) == []
    assert await session.get_items(limit=1) == numbered(1, start=4)
    assert await session.get_items(limit=3) == numbered(3, start=2)
    assert await session.get_items(limit=50) == numbered(5)


async def test_session_settings_limit_applies_when_no_limit_is_given(
    new_session: MakeSession,
) -> None:
    session = new_session(session_settings=SessionSettings(limit=2))
    await session.add_items(numbered(5))
    assert await session.get_items() == numbered(2, start=3)
    assert await session.get_items(limit=4) == numbered(4, start=1)


async def test_pop_returns_the_newest_item(new_session: MakeSession) -> None:
    session = new_session()
    await session.add_items(numbered(3))
    assert await session.pop_item() == user("message 2")
    assert await session.pop_item() == user("message 1")
    assert await session.get_items() == numbered(1)
    assert await session.pop_item() == user("message 0")
    assert await session.pop_item() is None


async def test_clear_removes_every_item(new_session: MakeSession) -> None:
    session = new_session()
    await session.add_items(numbered(4))
    await session.clear_session()
    assert await session.get_items() == []
    await session.add_items([user("after")])
    assert await session.get_items() == [user("after")]


async def test_nested_items_round_trip(new_session: MakeSession) -> None:
    items = [
        user("what is 2 + 3, and the weather?"),
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "see this"},
                {
                    "type": "input_image",
                    "image_url": "https://example.test/a.png",
                    "detail": "auto",
                },
            ],
        },
        function_call("add", {"a": 2, "b": 3, "nested": {"list": [1, 2.5, None, True]}}, "c1"),
        function_output("c1", json.dumps({"result": 5, "tags": ["x", "y"]})),
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "adding"}],
        },
        assistant("2 + 3 = 5", item_id="msg_2"),
    ]
    session = new_session()
    await session.add_items(items)
    assert await session.get_items() == items
    assert await session.get_items(limit=2) == items[-2:]


async def test_many_items(new_session: MakeSession) -> None:
    session = new_session()
    await session.add_items(numbered(1000))
    for start in range(1000, 1100, 10):
        await session.add_items(numbered(10, start=start))
    everything = await session.get_items()
    assert len(everything) == 1100
    assert everything == numbered(1100)
    assert await session.get_items(limit=10) == numbered(10, start=1090)


async def test_one_call_with_more_items_than_a_script_can_unpack(new_session: MakeSession) -> None:
    session = new_session()
    await session.add_items(numbered(9000))
    assert await session.get_items(limit=2) == numbered(2, start=8998)
    assert len(await session.get_items()) == 9000


async def test_unicode(new_session: MakeSession) -> None:
    texts = [
        "héllo wörld",
        "日本語のテキスト",
        "مرحبا",
        "emoji 😀🚀👩‍👩‍👧",
        'quote " \\ slash',
        "e\u0301",
    ]
    session = new_session()
    await session.add_items([user(t) for t in texts])
    assert [item["content"] for item in await session.get_items()] == texts  # type: ignore[typeddict-item]
    assert await session.pop_item() == user(texts[-1])


async def test_sessions_are_isolated(new_session: MakeSession) -> None:
    first, second = new_session("alice"), new_session("bob")
    await first.add_items([user("for alice")])
    await second.add_items([user("for bob"), user("again bob")])
    assert await first.get_items() == [user("for alice")]
    await second.clear_session()
    assert await first.get_items() == [user("for alice")]
    assert await second.pop_item() is None


async def test_concurrent_adds_lose_nothing(new_session: MakeSession) -> None:
    session = new_session()

    async def writer(task: int) -> None:
        for batch in range(3):
            await session.add_items([user(f"{task}:{batch}:{i}") for i in range(4)])

    async with anyio.create_task_group() as tg:
        for task in range(20):
            tg.start_soon(writer, task)
    contents = [item["content"] for item in await session.get_items()]  # type: ignore[typeddict-item]
    assert sorted(contents) == sorted(
        f"{t}:{b}:{i}" for t in range(20) for b in range(3) for i in range(4)
    )
    for at in range(0, len(contents), 4):  # each add_items call stays in one piece
        task, batch, _ = contents[at].split(":")
        assert contents[at : at + 4] == [f"{task}:{batch}:{i}" for i in range(4)]


async def test_runner_sees_the_history_of_earlier_turns(new_session: MakeSession) -> None:
    session = new_session()
    model = ScriptedModel(
        [
            [assistant_message("Hello!", item_id="msg_a")],
            [assistant_message("Bye!", item_id="msg_b")],
        ]
    )
    agent = Agent(name="assistant", model=model)
    first = await Runner.run(agent, "hi", session=session, run_config=NO_TRACING)
    assert first.final_output == "Hello!"
    second = await Runner.run(agent, "bye", session=session, run_config=NO_TRACING)
    assert second.final_output == "Bye!"

    seen = model.calls[1].input
    assert isinstance(seen, list)
    assert [item.get("role") for item in seen] == ["user", "assistant", "user"]
    assert seen[0]["content"] == "hi" and seen[2]["content"] == "bye"  # type: ignore[typeddict-item]
    held = await session.get_items()
    assert held == second.to_input_list()
    assert len(held) == 4


# --- Redis: one round trip, TTL, Cluster, fence -------------------------------------------------
async def test_each_call_is_one_round_trip(
    redis_kind: type[BaseSession],
    client: redis.asyncio.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = redis_kind("conv", client, keys=keys, ttl=60)
    await session.add_items(numbered(3))  # scripts loaded
    commands: list[str] = []
    original = client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        commands.append(str(args[0]))
        return await original(*args, **options)

    monkeypatch.setattr(client, "execute_command", counting)
    await session.add_items([user("one more")])
    await session.get_items()
    await session.get_items(limit=2)
    await session.pop_item()
    assert len(commands) == 4, commands


async def test_ttl_is_set_and_refreshed_by_writes(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    session = redis_kind("conv", client, keys=keys, ttl=100)
    await session.add_items(numbered(3))
    for key in data_keys(session):
        assert 99_000 < await client.pttl(key) <= 100_000, key

    async def shorten_then(write: Any) -> None:
        for key in data_keys(session):
            await client.pexpire(key, 5_000)
        await write
        for key in data_keys(session):
            assert await client.pttl(key) > 90_000, key

    await shorten_then(session.add_items([user("more")]))
    await shorten_then(session.pop_item())
    await shorten_then(session.rollback_to(1))

    forever = redis_kind("other", client, keys=keys)
    await forever.add_items([user("x")])
    for key in data_keys(forever):
        assert await client.pttl(key) == -1


async def test_ttl_must_be_positive(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis
) -> None:
    with pytest.raises(ValueError, match="ttl"):
        redis_kind("conv", client, ttl=0)


async def test_every_key_of_a_conversation_is_in_one_cluster_slot(keys: Keys) -> None:
    sid = "conv-42"
    names = [
        keys.session(sid),
        keys.session_items(sid),
        keys.session_lease(sid),
        keys.session_doc(sid),
    ]
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert key_slot(keys.session("another").encode()) != key_slot(names[0].encode())


async def test_a_fence_in_another_slot_is_refused(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    with pytest.raises(KeyNameError, match="hash tag"):
        redis_kind("conv", client, keys=keys, fence=(keys.session_lease("other"), "t"))


async def test_invalid_conversation_ids_are_refused(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    for bad in ["", "has space", "a:b", "{tag}"]:
        with pytest.raises(KeyNameError):
            redis_kind(bad, client, keys=keys)


async def test_a_stale_fence_token_cannot_write(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    lease = keys.session_lease("conv")
    await client.set(lease, "attempt-1", px=60_000)
    mine = redis_kind("conv", client, keys=keys, fence=(lease, "attempt-1"))
    await mine.add_items(numbered(3))
    assert await mine.pop_item() == user("message 2")

    await client.set(lease, "attempt-2", px=60_000)  # the lease expired and was taken over
    writes: list[Callable[[], Awaitable[object]]] = [
        lambda: mine.add_items([user("late")]),
        mine.pop_item,
        mine.clear_session,
        lambda: mine.rollback_to(0),
        mine.delete,
    ]
    for write in writes:
        with pytest.raises(SessionFenceError) as caught:
            await write()
        assert caught.value.lease_key == lease
    assert await mine.get_items() == numbered(2)  # reads are not fenced

    await client.delete(lease)  # no lease at all: refused too
    with pytest.raises(SessionFenceError):
        await mine.add_items([user("late")])
    current = redis_kind("conv", client, keys=keys, fence=(lease, "attempt-2"))
    await client.set(lease, "attempt-2", px=60_000)
    await current.add_items([user("in time")])
    assert await current.get_items() == [*numbered(2), user("in time")]


async def test_rollback_to_undoes_a_failed_attempt(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    lease = keys.session_lease("conv")
    await client.set(lease, "t", px=60_000)
    session = redis_kind("conv", client, keys=keys, fence=(lease, "t"))
    await session.add_items(numbered(3))
    before = await session.length()
    await session.add_items(numbered(4, start=3))
    assert await session.length() == 7
    assert await session.rollback_to(before) == 3
    assert await session.get_items() == numbered(3)
    assert await session.rollback_to(10) == 3
    assert (await session.info()).item_count == 3
    assert await session.rollback_to(0) == 0
    assert await session.length() == 0
    with pytest.raises(ValueError, match=">= 0"):
        await session.rollback_to(-1)


async def test_scripts_survive_a_script_flush(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    session = redis_kind("conv", client, keys=keys)
    await session.add_items([user("a")])
    await client.script_flush()
    await session.add_items([user("b")])
    assert await session.pop_item() == user("b")


# --- Redis: the conversation helpers ------------------------------------------------------------
async def test_create_load_and_info(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    created = await redis_kind.create(user_id="user_123", client=client, keys=keys)
    assert created.conversation_id == created.session_id and len(created.session_id) == 32
    info = await created.info()
    assert info.user_id == "user_123" and info.item_count == 0
    assert info.created_at is not None and info.created_at == info.updated_at

    await created.add_items([user("hello")])
    loaded = await redis_kind.load(created.conversation_id, client=client, keys=keys)
    assert await loaded.to_agent_inputs() == [user("hello")]
    info = await loaded.info()
    assert info.item_count == 1 and info.user_id == "user_123"
    assert info.updated_at is not None and info.created_at is not None
    assert info.updated_at >= info.created_at

    named = await redis_kind.create(client=client, keys=keys, conversation_id="chosen", ttl=30)
    assert named.conversation_id == "chosen" and (await named.info()).user_id is None
    assert 0 < await client.pttl(data_keys(named)[0]) <= 30_000
    with pytest.raises(SessionError, match="already exists"):
        await redis_kind.create(client=client, keys=keys, conversation_id="chosen")


async def test_loading_a_missing_conversation(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    with pytest.raises(SessionNotFound, match="no conversation 'nope'") as caught:
        await redis_kind.load("nope", client=client, keys=keys)
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, AgentsWorkerError)
    assert caught.value.conversation_id == "nope"
    with pytest.raises(SessionNotFound):
        await redis_kind("nope", client, keys=keys).info()


async def test_delete_removes_the_conversation(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    session = await redis_kind.create("u", client=client, keys=keys)
    await session.add_items([user("x")])
    await session.clear_session()
    assert await session.exists()  # clearing keeps the conversation
    await session.delete()
    assert not await session.exists()
    assert [k async for k in client.scan_iter(match=f"{keys.prefix}:*")] == []


async def test_store_agent_result_appends_only_what_is_new(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    session = await redis_kind.create(user_id="user_123", client=client, keys=keys)
    model = ScriptedModel(
        [
            [assistant_message("Hello!", item_id="msg_1")],
            [assistant_message("Sure.", item_id="msg_2")],
            [assistant_message("Again.", item_id="msg_3")],
            [assistant_message("Fine.", item_id="msg_4")],
        ]
    )
    agent = Agent(name="assistant", model=model)

    # a run without the session: everything it returns is new
    first = await Runner.run(agent, "Hello", run_config=NO_TRACING)
    assert await session.store_agent_result(first) == 2
    assert await session.to_agent_inputs() == first.to_input_list()

    # the caller passes the history back in: only the new message and the reply are added
    history = await session.to_agent_inputs()
    second = await Runner.run(agent, [*history, user("More?")], run_config=NO_TRACING)
    assert await session.store_agent_result(second) == 2
    assert await session.to_agent_inputs() == second.to_input_list()
    assert await session.store_agent_result(second) == 0  # storing twice adds nothing

    # a run that used the session has stored everything already
    third = await Runner.run(agent, "Again", session=session, run_config=NO_TRACING)
    assert await session.store_agent_result(third) == 0
    assert len(await session.to_agent_inputs()) == 6

    # only the new message as input (no history): all of it is new
    fourth = await Runner.run(agent, "Last one", run_config=NO_TRACING)
    assert await session.store_agent_result(fourth) == 2
    assert (await session.to_agent_inputs())[-2:] == fourth.to_input_list()


async def test_to_agent_inputs_ignores_the_settings_limit(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    session = redis_kind("conv", client, keys=keys, session_settings=SessionSettings(limit=1))
    await session.add_items(numbered(3))
    assert await session.get_items() == numbered(1, start=2)
    assert await session.to_agent_inputs() == numbered(3)


async def test_a_session_closes_only_the_client_it_made(
    redis_kind: type[BaseSession], redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    async with await redis_kind.create("u", redis_url=redis_url, keys=keys) as owned:
        await owned.add_items([user("x")])
        conversation = owned.conversation_id
    with pytest.raises(SessionError, match="closed"):
        await owned.get_items()

    given = await redis_kind.load(conversation, client=client, keys=keys)
    async with given:
        assert await given.get_items() == [user("x")]
    assert await given.get_items() == [user("x")]  # still usable: the client is the caller's
    assert await client.ping()

    with pytest.raises(ValueError, match="exactly one"):
        await redis_kind.create("u", keys=keys)
    with pytest.raises(SessionNotFound):
        await redis_kind.load("missing", redis_url=redis_url, keys=keys)


# --- Redis: bad data and missing modules ----------------------------------------------------
async def test_a_corrupt_item_gives_a_clear_error(client: redis.asyncio.Redis, keys: Keys) -> None:
    session = AgentSession("conv", client, keys=keys)
    await session.add_items(numbered(2))
    await client.rpush(keys.session_items("conv"), b"{not json")
    with pytest.raises(
        SessionDataError, match=r"'conv': item 3 of the 3 read is not a JSON object"
    ):
        await session.get_items()
    with pytest.raises(SessionDataError, match=r"not a JSON object: '\{not json'") as caught:
        await session.pop_item()
    assert caught.value.raw == b"{not json"
    assert await session.get_items() == numbered(2)  # the bad item was popped

    await client.rpush(keys.session_items("conv"), b"[1, 2]")  # JSON, but not an object
    with pytest.raises(SessionDataError, match="item 1 of the 1 read"):
        await session.get_items(limit=1)


async def test_a_non_object_item_in_a_json_session(client: redis.asyncio.Redis, keys: Keys) -> None:
    session = JSONSession("conv", client, keys=keys)
    await session.add_items(numbered(2))
    await client.execute_command("JSON.ARRAPPEND", keys.session_doc("conv"), "$.items", "42")
    with pytest.raises(
        SessionDataError, match="'conv': item 3 of the 3 read is not a JSON object: '42'"
    ):
        await session.get_items()


async def test_an_item_that_is_not_json_is_refused(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    session = redis_kind("conv", client, keys=keys)
    with pytest.raises(SessionDataError, match="cannot be stored as JSON"):
        await session.add_items([user("fine"), {"role": "user", "content": object()}])  # type: ignore[list-item]
    assert await session.get_items() == []


async def test_json_session_needs_the_json_module(plain_redis_url: str) -> None:
    plain = redis.asyncio.Redis.from_url(plain_redis_url)
    try:
        session = JSONSession("conv", plain)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: session.add_items([user("x")]),
            session.get_items,
            session.pop_item,
            session.length,
            lambda: JSONSession.create(client=plain),
            lambda: JSONSession.load("conv", client=plain),
        ]
        for call in calls:
            with pytest.raises(
                MissingModuleError, match="JSONSession needs the Redis module 'json'"
            ):
                await call()
        lists = AgentSession("conv", plain, keys=Keys("awtest-plain"))
        await lists.add_items([user("x")])  # the hash + list session needs no module
        assert await lists.pop_item() == user("x")
        await lists.delete()
    finally:
        await plain.aclose()


# --- every argument is checked before the first write ---------------------------------------
async def test_session_settings_given_as_a_dict_apply(new_session: MakeSession) -> None:
    """The SDK's sessions take a dict of SessionSettings fields; ours failed later with an
    AttributeError."""
    session = new_session(session_settings={"limit": 2})
    await session.add_items(numbered(4))
    assert await session.get_items() == numbered(2, start=2)
    assert isinstance(session.session_settings, SessionSettings)


def _deep(depth: int) -> Item:
    item: Item = {"role": "user", "content": "x"}
    for _ in range(depth):
        item = {"nested": item}
    return item


BAD_SESSIONS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("ttl past what Redis can expire", {"ttl": 1e20}, ValueError, "longer than Redis"),
    ("ttl one second past the bound", {"ttl": MAX_TTL_SECONDS + 1}, ValueError, "longer than"),
    ("ttl infinite", {"ttl": float("inf")}, ValueError, "ttl"),
    ("ttl not a number", {"ttl": float("nan")}, ValueError, "ttl"),
    ("ttl a string", {"ttl": "60"}, TypeError, "ttl"),
    ("ttl a bool", {"ttl": True}, TypeError, "ttl"),
    ("settings a list", {"session_settings": [3]}, TypeError, "session_settings"),
    ("settings with an unknown field", {"session_settings": {"top": 1}}, TypeError, "top"),
    ("settings with a bad limit", {"session_settings": {"limit": "x"}}, ValueError, "limit"),
    ("keys a string", {"keys": "aw"}, TypeError, "keys"),
    ("fence not a pair", {"fence": "lease"}, TypeError, "fence"),
]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [case[1:] for case in BAD_SESSIONS],
    ids=[c[0] for c in BAD_SESSIONS],
)
async def test_bad_session_arguments_are_refused_before_anything_is_written(
    redis_kind: type[BaseSession],
    client: redis.asyncio.Redis,
    keys: Keys,
    options: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    """A TTL Redis refuses made add_items fail after the items were pushed (a retry
    duplicated them); now the session is refused at once, and the history is untouched."""
    stored = redis_kind("conv", client, keys=keys)
    await stored.add_items(numbered(2))
    options.setdefault("keys", keys)

    async def attempt() -> None:
        await redis_kind("conv", client, **options).add_items([user("again")])

    with pytest.raises(error, match=match):
        await attempt()
    assert await stored.get_items() == numbered(2)


async def test_the_longest_ttl_is_one_redis_accepts(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    session = redis_kind("conv", client, keys=keys, ttl=MAX_TTL_SECONDS)
    await session.add_items(numbered(1))
    assert await session.get_items() == numbered(1)
    assert all(ttl > 0 for ttl in [await client.pttl(key) for key in data_keys(session)])


async def test_bad_call_arguments_are_refused_and_write_nothing(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    session = redis_kind("conv", client, keys=keys)
    await session.add_items(numbered(2))
    refused: list[tuple[Callable[[], Awaitable[object]], type[Exception], str]] = [
        (lambda: session.add_items("hello"), TypeError, "items"),  # type: ignore[arg-type]
        (lambda: session.add_items(user("x")), TypeError, "items"),  # type: ignore[arg-type]
        (lambda: session.add_items([user("a"), "b"]), SessionDataError, "item 2 of 2"),  # type: ignore[list-item]
        (lambda: session.add_items([user("a"), [1]]), SessionDataError, "not a JSON object"),  # type: ignore[list-item]
        (lambda: session.add_items([_deep(2_000)]), SessionDataError, "cannot be stored"),
        (lambda: session.get_items(limit="1"), TypeError, "limit"),  # type: ignore[arg-type]
        (lambda: session.get_items(limit=1.5), TypeError, "limit"),  # type: ignore[arg-type]
        (lambda: session.rollback_to("1"), TypeError, "count"),  # type: ignore[arg-type]
        (lambda: session.rollback_to(1.5), TypeError, "count"),  # type: ignore[arg-type]
        (lambda: session.rollback_to(-1), ValueError, "count"),
        (lambda: redis_kind.create(123, client=client, keys=keys), TypeError, "user_id"),  # type: ignore[arg-type]
    ]
    for call, error, match in refused:
        with pytest.raises(error, match=match):
            await call()
    assert await session.get_items() == numbered(2)
    assert await session.length() == 2


async def test_session_settings_set_later_are_checked_too(
    redis_kind: type[BaseSession], client: redis.asyncio.Redis, keys: Keys
) -> None:
    session = redis_kind("conv", client, keys=keys)
    await session.add_items(numbered(3))
    session.session_settings = {"limit": 1}  # type: ignore[assignment]
    assert await session.get_items() == numbered(1, start=2)
    with pytest.raises(TypeError, match="session_settings"):
        session.session_settings = 5  # type: ignore[assignment]
    settings = SessionSettings(limit=2)
    session.session_settings = settings
    settings.limit = "2"  # type: ignore[assignment]  # a pydantic dataclass does not check this
    with pytest.raises(TypeError, match=r"session_settings\.limit"):
        await session.get_items()


# --- the package ----------------------------------------------------------------------------
def test_all_matches_exports() -> None:
    module = runtime.sessions
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(module.__all__) == public
