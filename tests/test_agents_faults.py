"""Agent runs at the edges of their leases and of Redis's memory.

A run whose result Redis refuses (out of memory) is not lost: its entry was acked in the same
non-atomic batch, as XACK and XDEL still run on a full Redis, and the record said ``running``
forever; now the ack is a script Redis refuses with the result, and the run runs again once
memory is freed, its turn in the history once. A run whose
conversation lease lapsed while nobody took it (its loop blocked past the lease) takes it back
and completes: it was dropped, acked as done while its record said ``running``."""

from __future__ import annotations

import time

import pytest
import redis
import redis.asyncio
from agents import Agent, Handoff, Tool, function_tool
from agents.items import TResponseInputItem
from agents.testing import ModelStep, assistant_message, function_call

from runtime import EmbeddedRedis, Keys
from runtime.agents import AgentApp, AgentClient
from runtime.agents.models import StepModel
from runtime.sessions import AgentSession
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until

pytestmark = pytest.mark.anyio


class FillsMemory(StepModel):
    """Answers; on its first call it fills Redis's memory first (maxmemory just above what is
    used, noeviction), so the run's result is written to a full Redis."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.calls = 0

    def step(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> ModelStep:
        self.calls += 1
        if self.calls == 1:
            with redis.Redis.from_url(self.url) as sync:
                used = int(sync.info("memory")["used_memory"])
                sync.set("filler", b"x" * 4_000_000)
                sync.config_set("maxmemory", str(used + 2_000_000))
        return ModelStep(output=[assistant_message("done", item_id=f"m{self.calls}")])


async def test_a_run_whose_result_a_full_redis_refuses_is_not_lost(
    own_server: tuple[EmbeddedRedis, str], key_prefix: str
) -> None:
    _, own_url = own_server
    keys = Keys(key_prefix)
    settings = make_settings(own_url, key_prefix)
    model = FillsMemory(own_url)
    app = AgentApp("oom", agents=[Agent(name="solo", instructions="Answer.")], model=model)
    client = redis.asyncio.Redis.from_url(own_url)
    try:
        runs = AgentClient(client, keys=keys, settings=settings)
        handle = await runs.run("solo", "hello", session_id="full")
        async with running_worker(settings, client, serving=app) as worker:

            async def refused() -> bool:  # the result, then the retry, refused: OOM
                return worker.fault is not None and "OOM" in worker.fault

            await wait_until(refused, limit=20, what="the worker to meet the full Redis")
            record = await runs.handle(handle.run_id).status()
            # not over (queued: the mark that it runs may have been refused too), still held
            assert record is not None and record.status in ("queued", "running")
            assert int((await client.xpending(keys.inbox("solo"), "workers"))["pending"]) == 1
            await client.delete("filler")
            await client.config_set("maxmemory", "0")
            result = await handle.result(timeout=20)
        assert result.status == "completed" and result.final_output == "done"
        assert model.calls == 2  # the refused attempt, then the one that wrote its result
        history = await AgentSession("full", client, keys=keys).get_items()
        assert [item.get("role") for item in history] == ["user", "assistant"]  # once
        assert await client.xlen(keys.inbox("solo")) == 0
    finally:
        await client.aclose()


@function_tool
async def blocks_the_loop() -> str:
    """Blocks the event loop past the conversation's lease (a sync call in an async tool)."""
    time.sleep(2.5)  # noqa: ASYNC251 - the point: the lease (1 s, FAST) lapses meanwhile
    return "slept"


class CallsTheTool(StepModel):
    """First call: the tool; then the answer. Each call takes 0.6 s, so the run's companion
    renews the conversation's lease (every lease/3) after the tool blocked the loop."""

    delay = 0.6

    def step(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> ModelStep:
        if isinstance(input, list) and any(i.get("type") == "function_call_output" for i in input):
            return ModelStep(output=[assistant_message("after the nap", item_id="m2")])
        return ModelStep(output=[function_call("blocks_the_loop", {}, call_id="c1")])


async def test_a_lapsed_conversation_lease_nobody_took_is_taken_back(
    client: redis.asyncio.Redis, keys: Keys, redis_url: str
) -> None:
    settings = make_settings(redis_url, keys.prefix)  # lease 1 s
    agent = Agent(name="napper", instructions="Nap.", tools=[blocks_the_loop])
    app = AgentApp("naps", agents=[agent], model=CallsTheTool())
    runs = AgentClient(client, keys=keys, settings=settings)
    async with running_worker(settings, client, serving=app):
        handle = await runs.run("napper", "nap", session_id="lapsed")
        result = await handle.result(timeout=30)
        after = await (await runs.run("napper", "again", session_id="lapsed")).result(30)
    assert result.status == "completed" and result.final_output == "after the nap"
    assert after.ok
    history = await AgentSession("lapsed", client, keys=keys).get_items()
    users = [i.get("content") for i in history if i.get("role") == "user"]
    assert users == ["nap", "again"]  # each turn once, in order
