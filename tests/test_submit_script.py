"""The run submission for other languages (``runtime/agents/submit_run.lua``, issue 10 item 13):
a run submitted with the script is served like one from ``AgentClient.run``, writes the same
record, entry and turn, is idempotent by run id, and refuses what the Python client refuses."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio
import redis.exceptions

from runtime import Keys, Settings
from runtime.agents import AgentClient, RunRequest
from runtime.agents.runs import _ENQUEUE_RUN, _SUBMIT_RECORD
from runtime.agents.submission import STEPS, submit_args, submit_keys, submit_script, submit_steps
from runtime.agents.turns import _ASSIGN
from runtime.envelope import ENVELOPE_FIELD, Reason, decode_entry
from runtime.errors import KeyNameError
from runtime.keys import validate_name
from runtime.observability.telemetry import trace_id_for
from runtime.sessions import AgentSession
from tests.agent_apps import make_app
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
REFUSED = "submit_run:"


@pytest.fixture
def agent_settings(redis_url: str, keys: Keys) -> Settings:
    return make_settings(redis_url, keys.prefix, **{"runs.timeout_seconds": "10"})


class Submitter:
    """Submits runs with the shipped script, as a client in another language would."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, settings: Settings) -> None:
        self._script = client.register_script(submit_script())
        self._keys = keys
        self._settings = settings

    async def submit(self, **request: Any) -> list[Any]:
        """The script's reply for *request* (a dict made JSON), as text and ints."""
        keys = submit_keys(
            self._keys, request["agent"], request["run_id"], request.get("session_id")
        )
        return await self.call(keys, msgspec.json.encode(request))

    async def call(self, keys: list[str], raw: bytes | str, **limits: Any) -> list[Any]:
        runs = self._settings.runs
        args = submit_args(
            self._keys.prefix, raw, result_ttl_seconds=runs.result_ttl_seconds,
            timeout_seconds=runs.timeout_seconds, **limits,
        )  # fmt: skip
        reply = await self._script(keys=keys, args=args)
        return [x.decode() if isinstance(x, bytes) else x for x in reply]


def test_the_scripts_steps_are_the_python_clients_own() -> None:
    """The script does what RunStore.submit and SessionTurns.assign do with the very same Lua:
    the three steps are those scripts verbatim (a change to one fails here)."""
    steps = submit_steps()
    assert set(steps) == set(STEPS)
    assert steps["assign"] == _ASSIGN.lstrip("\n")
    assert steps["submit_record"] == _SUBMIT_RECORD.lstrip("\n")
    assert steps["enqueue_run"] == _ENQUEUE_RUN.lstrip("\n")


async def test_runs_submitted_by_script_and_by_the_client_run_alike_in_submit_order(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """Runs of one conversation submitted alternately with the script and with AgentClient.run
    each run once, in submit order, with no wait for a turn number (the script draws it), and
    a script-submitted run's result is read through AgentClient.handle."""
    app, model = make_app()
    runs = AgentClient(client, keys=keys, settings=agent_settings)
    script = Submitter(client, keys, agent_settings)
    texts = [f"message {n}" for n in range(6)]
    for n, text in enumerate(texts):
        if n % 2:
            await runs.run("triage", text, session_id="mixed", run_id=f"py-{n}")
        else:
            reply = await script.submit(
                run_id=f"lua-{n}", agent="triage", input=text, session_id="mixed"
            )
            assert reply[0] == "submitted" and reply[2] == n + 1
    ids = [f"{'py' if n % 2 else 'lua'}-{n}" for n in range(len(texts))]
    async with running_worker(agent_settings, client, serving=app):
        results = [await runs.handle(run_id).result(timeout=10) for run_id in ids]
    assert [r.status for r in results] == ["completed"] * len(texts)
    assert [r.final_output for r in results] == [f"reply to {t}" for t in texts]
    assert Counter(call[-1]["content"] for call in model.calls) == Counter(texts)
    history = await AgentSession("mixed", client, keys=keys).get_items()
    assert [i["content"] for i in history if i.get("role") == "user"] == texts
    for run_id in ids:
        record = await client.hgetall(keys.run(run_id))
        assert record[b"status"] == b"completed" and record[b"attempts"] == b"1"


async def test_both_paths_write_the_same_record_entry_and_turn(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """What the script writes is what RunStore.submit writes: the record's fields (names and
    values, but the fingerprint and the time), TTLs, the guard, the envelope and its request,
    the conversation's turn."""
    runs = AgentClient(client, keys=keys, settings=agent_settings)
    request: dict[str, Any] = {
        "input": [{"role": "user", "content": "hi"}], "session_id": "c-1",
        "context": {"tier": "gold"}, "max_turns": 3, "stream": True,
    }  # fmt: skip
    await runs.run("triage", run_id="py", **request)
    reply = await Submitter(client, keys, agent_settings).submit(
        run_id="lua", agent="triage", **request
    )
    assert reply[0] == "submitted"
    py, lua = [await client.hgetall(keys.run(r)) for r in ("py", "lua")]
    assert set(py) == set(lua)
    for name in set(py) - {b"fingerprint", b"submitted_at", b"trace_id"}:
        assert py[name] == lua[name], name
    # without a caller's trace, each run has its own, named after its id
    assert [r[b"trace_id"].decode() for r in (py, lua)] == [trace_id_for(r) for r in ("py", "lua")]
    assert float(lua[b"submitted_at"]) > 0
    ttl = agent_settings.runs.result_ttl_seconds
    for run_id in ("py", "lua"):
        assert ttl - 5 < await client.ttl(keys.run(run_id)) <= ttl
        guard = keys.run_submitted("triage", run_id)
        assert ttl - 5 < await client.ttl(guard) <= ttl
    entries = await client.xrange(keys.inbox("triage"))
    assert [await client.get(keys.run_submitted("triage", r)) for r in ("py", "lua")] == [
        entry_id for entry_id, _ in entries
    ]
    envelopes = [decode_entry(fields, max_bytes=1 << 20) for _, fields in entries]
    requests = [msgspec.convert(e.payload, RunRequest) for e in envelopes]
    for envelope, req in zip(envelopes, requests, strict=True):
        assert envelope.id == req.run_id and envelope.target == req.agent == "triage"
        assert envelope.created_at > 0 and req.submitted_at > 0 and not envelope.headers
    same = [msgspec.structs.replace(r, run_id="-", submitted_at=0.0) for r in requests]
    assert same[0] == same[1]
    turns = await client.hgetall(keys.session_turns("c-1"))
    assert turns[b"seq"] == b"2" and turns[b"id:py"] == b"1" and turns[b"id:lua"] == b"2"
    assert turns[b"run:1"] == b"py" and turns[b"run:2"] == b"lua"
    assert set(turns) == {b"seq", b"id:py", b"id:lua", b"run:1", b"run:2", b"at:1", b"at:2"}


async def test_the_script_is_idempotent_by_run_id(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """Sent again, the same request is recognised (same entry, same number, nothing new);
    another request under the same id is refused and writes nothing."""
    script = Submitter(client, keys, agent_settings)
    request = {"run_id": "r-1", "agent": "triage", "input": "hi", "session_id": "c-1"}
    first = await script.submit(**request)
    again = await script.submit(**request)
    assert first[0] == "submitted" and again == ["duplicate", first[1], first[2]]
    other = await script.submit(**{**request, "input": "something else"})
    assert other == ["exists", "", 0]
    other_agent = await script.submit(**{**request, "agent": "billing"})
    assert other_agent == ["exists", "", 0]
    assert await client.xlen(keys.inbox("triage")) == 1
    assert not await client.exists(keys.inbox("billing"), keys.run_submitted("billing", "r-1"))
    assert await client.hget(keys.session_turns("c-1"), "seq") == b"1"


@pytest.mark.parametrize(
    "name",
    ["ok", "a" * 200, "é" * 200, "a" * 201, "é" * 201, "", "a b", "a:b", "a{b", "a}b", "tab\t",
     "nl\n", "\x00", "\x7f", "\x1c", "nb\u00a0sp", "\u0085", "\u1680", "\u2000", "\u200a",
     "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\u200b", "x/y", 'q"uote', "back\\",
     "日本語"],
)  # fmt: skip
async def test_the_script_checks_names_as_the_python_client_does(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings, name: str
) -> None:
    try:
        validate_name("run", name)
        valid = True
    except KeyNameError:
        valid = False
    script = Submitter(client, keys, agent_settings)
    request = {"run_id": name, "agent": "triage", "input": "hi"}
    record = f"{keys.prefix}:{{run:{name}}}"
    guard = f"{keys.prefix}:{{inbox:triage}}:submitted:{name}"
    raw = msgspec.json.encode(request)
    if valid:
        assert (await script.call([record, guard, keys.inbox("triage")], raw))[0] == "submitted"
        (_, fields), *_ = await client.xrange(keys.inbox("triage"))
        envelope = decode_entry(fields, max_bytes=1 << 20)
        assert envelope.id == name == msgspec.convert(envelope.payload, RunRequest).run_id
    else:
        with pytest.raises(redis.exceptions.ResponseError, match="run_id must be"):
            await script.call([record, guard, keys.inbox("triage")], raw)
        assert await client.keys(f"{keys.prefix}:*") == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"run_id": "r", "agent": "triage"} trailing', "not a JSON object"),
        (b'{"agent": "triage"}', "run_id must be"),
        (b'{"run_id": "r", "agent": "tri age"}', "agent must be"),
        (b'{"run_id": "r", "agent": "triage", "session_id": ""}', "session_id must be"),
        (b'{"run_id": "r", "agent": "triage", "seq": 1}', "leave submitted_at and seq out"),
        (b'{"run_id": "r", "agent": "triage", "submitted_at": 1}', "leave submitted_at"),
        (b'{"run_id": "r", "agent": "triage", "input": 3}', "input must be"),
        (b'{"run_id": "r", "agent": "triage", "input": {"role": "user"}}', "input must be"),
        (b'{"run_id": "r", "agent": "triage", "input": ["hi"]}', "input must be"),
        (b'{"run_id": "r", "agent": "triage", "context": null}', "context must be an object"),
        (b'{"run_id": "r", "agent": "triage", "context": [1]}', "context must be an object"),
        (b'{"run_id": "r", "agent": "triage", "max_turns": 2.5}', "max_turns must be"),
        (b'{"run_id": "r", "agent": "triage", "max_turns": "3"}', "max_turns must be"),
        (b'{"run_id": "r", "agent": "triage", "stream": 1}', "stream must be"),
        (b'{"run_id": "r", "agent": "triage", "handoff": {"context": {}}}', "handoff must be"),
    ],
)
async def test_the_script_refuses_a_bad_request_and_writes_nothing(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings, raw: bytes, message: str
) -> None:
    """Each refusal is of a request the worker would dead-letter (not a RunRequest) or could
    not key; the Python client cannot send any of them."""
    script = Submitter(client, keys, agent_settings)
    with pytest.raises(redis.exceptions.ResponseError, match=f"{REFUSED}.*{message}"):
        await script.call(submit_keys(keys, "triage", "r"), raw)
    assert await client.keys(f"{keys.prefix}:*") == []
    try:  # the worker's own reading agrees (for what the script can tell from Lua)
        msgspec.json.decode(raw, type=RunRequest)
    except msgspec.DecodeError:
        return
    assert message.startswith(("leave", "agent", "session_id"))  # readable, but not keyable


async def test_every_readable_request_is_accepted(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """What the worker reads as a RunRequest, the script takes (every field, null or not)."""
    script = Submitter(client, keys, agent_settings)
    requests: list[dict[str, Any]] = [
        {"input": None, "context": {}, "max_turns": None, "stream": None, "handoff": None},
        {"input": [], "max_turns": 4, "stream": False, "session_id": None},
        {"input": [{"role": "user", "content": "hi"}, {}], "context": {"a": [1, {"b": None}]}},
        {"input": "hi", "handoff": {"from_agent": "triage", "context": {"x": 1}}, "extra": 1},
    ]
    for n, extra in enumerate(requests):
        request = {"run_id": f"r{n}", "agent": "billing", **extra}
        msgspec.convert(request, RunRequest)  # the worker reads it
        assert (await script.submit(**request))[0] == "submitted"


async def test_the_script_refuses_wrong_keys_limits_and_an_oversized_envelope(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    script = Submitter(client, keys, agent_settings)
    raw = msgspec.json.encode({"run_id": "r", "agent": "triage", "session_id": "c"})
    right = submit_keys(keys, "triage", "r", "c")
    cases: list[tuple[list[str], dict[str, Any], str]] = [
        (right[:3], {}, "4 keys expected"),
        (submit_keys(keys, "billing", "r", "c"), {}, re.escape(f"KEYS[2] must be {right[1]}")),
        ([right[0], right[1], right[2], keys.session_turns("d")], {}, "KEYS.4. must be"),
        (right, {"max_entry_bytes": 0}, "must be whole numbers"),
        (right, {"max_entry_bytes": 100}, r"envelope is \d+ bytes, over streams.max_entry_by"),
    ]
    for names, limits, message in cases:
        with pytest.raises(redis.exceptions.ResponseError, match=message):
            await script.call(names, raw, **limits)
    assert await client.keys(f"{keys.prefix}:*") == []


async def test_the_envelope_keeps_the_clients_json_as_sent(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """The request's JSON is spliced in, not re-encoded: big integers, empty lists, unicode and
    escapes reach the worker as the client wrote them."""
    raw = (
        '  {"run_id":"r","agent":"triage","input":[],'
        '"context":{"big":12345678901234567890,"empty":[],"text":"\\u00e9\\n日本"}}'
    )
    reply = await Submitter(client, keys, agent_settings).call(
        submit_keys(keys, "triage", "r"), raw
    )
    assert reply[0] == "submitted" and reply[2] == 0
    (_, fields), *_ = await client.xrange(keys.inbox("triage"))
    assert raw.strip()[1:].encode() in fields[ENVELOPE_FIELD]
    request = msgspec.convert(decode_entry(fields, max_bytes=1 << 20).payload, RunRequest)
    assert request.input == [] and request.session_id is None
    assert request.context == {"big": 12345678901234567890, "empty": [], "text": "é\n日本"}


def test_the_wire_format_page_lists_every_dead_letter_reason() -> None:
    """The page names each reason code the worker writes, and no other."""
    page = (ROOT / "docs" / "wire-format.md").read_text()
    section = page.split("## Dead letters", 1)[1].split("\n## ", 1)[0]
    table = section.split("| reason | when |", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))
    assert listed == {str(reason) for reason in Reason}


async def test_the_cluster_recipe_submits_a_run_step_by_step(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """The page's recipe for Redis Cluster (each step a script of one slot, sent one after
    another, the whole sequence sent again after a failure) runs the run once, in its
    conversation's order."""
    steps = {name: client.register_script(text) for name, text in submit_steps().items()}
    runs = AgentClient(client, keys=keys, settings=agent_settings)
    await runs.run("triage", "first", session_id="c", run_id="before")
    request = {"run_id": "steps", "agent": "triage", "input": "second", "session_id": "c"}
    raw = msgspec.json.encode(request)
    now = 1_700_000_000.5
    payload = msgspec.json.encode({**request, "submitted_at": now})
    envelope = b'{"v":1,"id":"steps","target":"triage","payload":%s,"created_at":%r}' % (
        payload, now,
    )  # fmt: skip
    record, guard, inbox, turns = submit_keys(keys, "triage", "steps", "c")
    fields = ["status", "queued", "agent", "triage", "session_id", "c", "submitted_at", now]
    entry_ids = []
    for _ in range(2):  # the second time: a retry of the whole sequence changes nothing
        assert await steps["submit_record"](keys=[record], args=[3600, raw, *fields]) in (1, 2)
        assert await steps["assign"](keys=[turns], args=["steps"]) == 2
        entry_ids.append(await steps["enqueue_run"](keys=[guard, inbox], args=[envelope, 3700]))
        await client.hset(record, "enqueued", 1)
    assert entry_ids[0] == entry_ids[1] and await client.xlen(inbox) == 2
    assert await steps["submit_record"](keys=[record], args=[3600, b"other", *fields]) == 0
    app, model = make_app()
    async with running_worker(agent_settings, client, serving=app):
        result = await runs.handle("steps").result(timeout=10)
    assert result.status == "completed" and result.final_output == "reply to second"
    assert [call[-1]["content"] for call in model.calls] == ["first", "second"]


async def test_a_hand_made_agent_entry_without_a_run_request_is_dead_lettered(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """What the page says happens to an agent entry built from the envelope alone."""
    raw = b'{"id":"t-1","target":"triage","payload":{"input":"hi"}}'
    await client.xadd(keys.inbox("triage"), {"envelope": raw})
    app, _ = make_app()
    async with running_worker(agent_settings, client, serving=app):

        async def lettered() -> bool:
            return bool(await client.xlen(keys.dlq("triage")))

        await wait_until(lettered, what="the dead letter")
    [(_, letter)] = await client.xrange(keys.dlq("triage"))
    assert letter[b"reason"] == b"invalid_payload" and letter[b"task_id"] == b"t-1"
    assert b"missing required field `run_id`" in letter[b"error"]


@pytest.fixture
async def core(core_url: str, key_prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(core_url)
    yield client
    async for key in client.scan_iter(match=f"{key_prefix}:*", count=1000):
        await client.unlink(key)
    await client.aclose()


async def test_the_script_runs_on_redis_stack_and_plain_redis(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    """It needs no module (cjson, sha1hex and TIME are Redis's own)."""
    script = Submitter(core, keys, make_settings(core_url, keys.prefix))
    request = {"run_id": "r", "agent": "triage", "input": "hi", "session_id": "c"}
    first = await script.submit(**request)
    assert first[0] == "submitted" and first[2] == 1
    assert await script.submit(**request) == ["duplicate", first[1], 1]
    assert await script.submit(**{**request, "input": "other"}) == ["exists", "", 0]
    with pytest.raises(redis.exceptions.ResponseError, match=REFUSED):
        await script.submit(**{**request, "run_id": "r-2", "seq": 3})
    [(entry_id, fields)] = await core.xrange(keys.inbox("triage"))
    assert entry_id.decode() == first[1]
    envelope = decode_entry(fields, max_bytes=1 << 20)
    assert msgspec.convert(envelope.payload, RunRequest).input == "hi"
