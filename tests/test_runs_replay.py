"""A dead-lettered agent run, replayed, runs again: a new attempt of the same run, its record
back to queued, its event stream going on, its conversation not blocked (issue 10, item 1)."""

from __future__ import annotations

import anyio
import httpx2 as httpx
import msgspec
import openai
import pytest
import redis.asyncio
from agents import Agent, Handoff, Tool
from agents.items import TResponseInputItem
from agents.testing import ModelStep

from runtime import Keys, Settings
from runtime.agents import AgentApp, AgentClient, RunHandle, RunRequest
from runtime.agents.runs import RunStore
from runtime.agents.turns import SessionTurns
from runtime.dlq import REPLAY_HEADER, DeadLetters
from runtime.envelope import Envelope, encode_envelope
from runtime.sessions import AgentSession
from tests.agent_apps import EchoModel
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until
from tests.test_cli import run_cli

pytestmark = pytest.mark.anyio


class FlakyModel(EchoModel):
    """An EchoModel that is rate limited on inputs starting with "flaky" while ``broken``;
    ``calls`` holds the calls that were answered."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    def step(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> ModelStep:
        last = input if isinstance(input, str) else str(dict(input[-1]).get("content"))
        if self.broken and last.startswith("flaky"):
            request = httpx.Request("POST", "http://model.invalid/v1/responses")
            response = httpx.Response(429, request=request, headers={"retry-after": "0.01"})
            raise openai.RateLimitError("slow down", response=response, body=None)
        return super().step(instructions, input, tools, handoffs)


def flaky_app() -> tuple[AgentApp, FlakyModel]:
    model = FlakyModel()
    return AgentApp("replays", agents=[Agent(name="triage", instructions="T.")], model=model), model


@pytest.fixture
def agent_settings(redis_url: str, keys: Keys) -> Settings:
    # two rate-limited attempts and the run is dead-lettered
    return make_settings(
        redis_url, keys.prefix, **{"worker.max_deliveries": "2", "runs.timeout_seconds": "10"}
    )


async def event_types(store: RunStore, run_id: str) -> list[str]:
    return [event.type for event in await store.read_events(run_id)]


async def completed(store: RunStore, run_id: str) -> bool:
    record = await store.get(run_id)
    return record is not None and record.status == "completed"


def asked(model: EchoModel) -> list[str]:
    return [str(call[-1]["content"]) for call in model.calls]


async def dead_letter_one(runs: AgentClient, letters: DeadLetters, handle: RunHandle) -> str:
    failed = await handle.result(timeout=10)
    assert failed.status == "failed" and failed.error_type == "DeadLettered"
    [letter] = await letters.read("triage")
    return letter.id


async def test_a_run_replayed_from_the_cli_runs_again_as_its_conversations_newest_turn(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings, redis_url: str
) -> None:
    app, model = flaky_app()
    runs = AgentClient(client, keys=keys, settings=agent_settings)
    store = RunStore(client, keys, agent_settings.runs)
    letters = DeadLetters(client, keys=keys)
    cli = ["--redis-url", redis_url, "--key-prefix", keys.prefix]
    async with running_worker(agent_settings, client, serving=app):
        first = await runs.run("triage", "first", session_id="c")
        flaky = await runs.run("triage", "flaky one", session_id="c")
        third = await runs.run("triage", "third", session_id="c")
        letter_id = await dead_letter_one(runs, letters, flaky)
        assert (await first.result(timeout=10)).ok and (await third.result(timeout=10)).ok
        model.broken = False
        replayed = await anyio.to_thread.run_sync(
            lambda: run_cli(*cli, "dlq", "replay", "triage", letter_id)
        )
        assert replayed.returncode == 0, replayed.stderr
        assert "1 replayed, 0 skipped" in replayed.stdout
        outcome = await flaky.result(timeout=10)  # the handle from before the replay
        assert outcome.status == "completed" and outcome.final_output == "reply to flaky one"
        fourth = await runs.run("triage", "fourth", session_id="c")  # after the replayed one
        assert (await fourth.result(timeout=10)).ok
    assert asked(model) == ["first", "third", "flaky one", "fourth"]  # the replay ran once
    types = await event_types(store, flaky.run_id)
    ended = types.index("run.failed")
    assert types[ended + 1 : ended + 3] == ["run.requeued", "run.started"]
    assert types[-1] == "run.completed"
    assert [types.count(t) for t in ("run.failed", "run.requeued", "run.completed")] == [1, 1, 1]
    record = await store.get(flaky.run_id)
    assert record is not None and record.ok and record.error is None
    assert record.final_output == "reply to flaky one"
    history = await AgentSession("c", client, keys=keys).get_items()
    said = [item["content"] for item in history if item.get("role") == "user"]
    assert said == ["first", "third", "flaky one", "fourth"]
    assert await letters.size("triage") == 0 and await client.xlen(keys.inbox("triage")) == 0


async def test_a_replay_runs_even_unreset_and_a_redelivery_of_it_does_not_run_again(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """``DeadLetters.replay`` without the agents layer's reset: the worker that takes the
    entry sees the replay marker; the same entry delivered again after that is only acked."""
    app, model = flaky_app()
    runs = AgentClient(client, keys=keys, settings=agent_settings)
    store = RunStore(client, keys, agent_settings.runs)
    letters = DeadLetters(client, keys=keys)
    moved: list[Envelope] = []

    async def keep(envelope: Envelope) -> None:
        moved.append(envelope)

    async with running_worker(agent_settings, client, serving=app):
        flaky = await runs.run("triage", "flaky alone")
        letter_id = await dead_letter_one(runs, letters, flaky)
        model.broken = False
        result = await letters.replay("triage", after_move=keep)
        assert list(result.moved) == [letter_id]
        [envelope] = moved
        assert envelope.headers[REPLAY_HEADER] == letter_id and envelope.attempt == 0
        await wait_until(lambda: completed(store, flaky.run_id), what="the replayed run")
        before = await event_types(store, flaky.run_id)
        # the replayed entry once more (a worker died after the result, before the ack)
        await client.xadd(keys.inbox("triage"), {"envelope": encode_envelope(envelope)})

        async def drained() -> bool:
            group = agent_settings.streams.group
            pending = (await client.xpending(keys.inbox("triage"), group))["pending"]
            return await client.xlen(keys.inbox("triage")) == 0 and pending == 0

        await wait_until(drained, what="the redelivered entry to be acked")
    assert asked(model) == ["flaky alone"]
    assert await event_types(store, flaky.run_id) == before
    assert before.count("run.requeued") == 1 and before[-1] == "run.completed"


async def test_a_requeue_and_a_new_number_happen_once_per_replay(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """The reset a replay does (from the command, or from the worker that takes the entry,
    in either order) is done once per replay; the number the run held is given up, so the
    run waiting behind it goes at once."""
    runs = AgentClient(client, keys=keys, settings=agent_settings)
    store = RunStore(client, keys, agent_settings.runs)
    turns = SessionTurns(client, keys, lease_seconds=5)
    a = await runs.run("triage", "a", session_id="s")
    b = await runs.run("triage", "b", session_id="s")
    await client.hset(keys.run(b.run_id), mapping={"status": "failed", "error": "boom"})
    entry = (await client.xrange(keys.inbox("triage")))[1][1][b"envelope"]
    run = msgspec.convert(msgspec.json.decode(entry)["payload"], RunRequest)
    assert run.run_id == b.run_id
    a_run = msgspec.structs.replace(run, run_id=a.run_id)
    assert await store.requeue(run, "1-1") == "queued"
    assert await store.requeue(run, "1-1") == "queued"  # seen: nothing more
    record = await store.get(b.run_id)
    assert record is not None and record.status == "queued" and record.error is None
    assert await event_types(store, b.run_id) == ["run.requeued"]
    # b held number 2, behind a (1): it gives it up and goes after c
    c = await runs.run("triage", "c", session_id="s")
    assert await turns.reassign("s", b.run_id, "1-1") == 4
    assert await turns.reassign("s", b.run_id, "1-1") == 4  # once per replay
    first = await turns.acquire("s", a.run_id, "ta", store)
    assert first.seq == 1
    await turns.end(first)
    third = await turns.acquire("s", c.run_id, "tc", store)  # number 2 is passed over
    assert third.seq == 3 and third.state == "ok"
    await turns.end(third)
    replayed = await turns.acquire("s", b.run_id, "tb", store)
    assert replayed.seq == 4 and replayed.state == "ok" and not replayed.passed
    # a second replay of the same run draws a number again
    await turns.end(replayed)
    assert await turns.reassign("s", b.run_id, "2-2") == 5
    assert await store.requeue(run, "2-2") == "queued"
    assert (await event_types(store, b.run_id)).count("run.requeued") == 2
    # a run that completed (its letter came from an entry delivered too often after its
    # result was written) or was cancelled is not run again
    for status in ("completed", "cancelled"):
        await client.hset(keys.run(a.run_id), "status", status)
        assert await store.requeue(a_run, f"9-{status}") == status
    assert await event_types(store, a.run_id) == []
    # replayed again while its number is the one due: the turn moves past it at once
    assert await turns.reassign("s", b.run_id, "3-3") == 6
    assert int(await client.hget(keys.session_turns("s"), "next")) == 6
    assert (await turns.acquire("s", b.run_id, "tb3", store)).seq == 6
