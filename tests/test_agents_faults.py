"""An agent run and a Redis out of memory: a run whose result Redis refuses is not lost (its
entry was acked in the same non-atomic batch, as XACK and XDEL still run on a full Redis, and
the record said ``running`` forever); it runs again once memory is freed, and its turn is in the
history once."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from agents import Agent, Handoff, Tool
from agents.items import TResponseInputItem
from agents.testing import ModelStep, assistant_message

from runtime import EmbeddedRedis, Keys
from runtime.agents import AgentApp, AgentClient
from runtime.agents.models import StepModel
from runtime.sessions import AgentSession
from tests.conftest import PLAIN_BINARY, embedded_settings, make_settings
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def own_url(tmp_path: Path) -> Iterator[str]:
    binary = PLAIN_BINARY if Path(PLAIN_BINARY).is_file() else None
    server = EmbeddedRedis(
        embedded_settings(
            tmp_path / "redis", port=_free_port(), modules=[], appendonly=False,
            server_binary=binary,
        )
    )  # fmt: skip
    try:
        yield server.start().url
    finally:
        server.stop()


async def test_a_run_whose_result_a_full_redis_refuses_is_not_lost(
    own_url: str, key_prefix: str
) -> None:
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
            assert record is not None and record.status == "running"
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
