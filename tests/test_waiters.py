"""Waiting on many runs from one AgentClient: one connection blocks for all the waits, a full
pool waits instead of failing, a new wait is served at once; a replayed run's old terminal
event is not its outcome (issue 10, items 18 and 1)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import msgspec
import pytest
import redis.asyncio

import runtime.agents.client
import runtime.agents.waiters
from runtime import Keys, Settings
from runtime.agents import AgentClient, RunEvent, RunResult
from runtime.producer import Producer
from runtime.redis import create_client
from tests.agent_apps import make_app
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until

pytestmark = pytest.mark.anyio


def named(url: str, name: str) -> str:
    """*url* with a client name, so the test can find its connections in CLIENT LIST."""
    return f"{url}{'&' if '?' in url else '?'}client_name={name}"


async def blocked_reads(client: redis.asyncio.Redis, name: str) -> int:
    """Connections named *name* blocked in a read on the server now."""
    return sum(1 for c in await client.client_list() if c.get("name") == name and "b" in c["flags"])


def blocked(client: redis.asyncio.Redis, name: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await blocked_reads(client, name) == count

    return check


@asynccontextmanager
async def own_client(settings: Settings, url: str, name: str) -> AsyncIterator[redis.asyncio.Redis]:
    """The runtime's own client (``create_client``: a pool of ``redis.max_connections``)."""
    runs_client = create_client(settings.redis, named(url, name))
    try:
        yield runs_client
    finally:
        await runs_client.aclose()


async def waits_of_one_client(
    client: redis.asyncio.Redis,
    keys: Keys,
    redis_url: str,
    *,
    count: int,
    max_connections: int,
    start: Callable[[AgentClient, int], Awaitable[RunResult]],
) -> dict[int, RunResult]:
    """*count* waits started at once from one client of *max_connections*, with no worker
    yet: every run is submitted and waited on, an unrelated enqueue goes through, at most a
    few connections block; then a worker serves them all."""
    settings = make_settings(
        redis_url,
        keys.prefix,
        **{"redis.max_connections": str(max_connections), "worker.concurrency": "32"},
    )
    app, _ = make_app()
    name = f"a2-{uuid.uuid4().hex[:8]}"
    results: dict[int, RunResult] = {}
    async with own_client(settings, redis_url, name) as runs_client:
        agents = AgentClient(runs_client, keys=keys, settings=settings)

        async def one(n: int) -> None:
            results[n] = await start(agents, n)

        async with anyio.create_task_group() as tg:
            for n in range(count):
                tg.start_soon(one, n)

            async def all_submitted() -> bool:
                return await client.xlen(keys.inbox("triage")) == count

            await wait_until(all_submitted, limit=60, what="every run submitted")
            # every run waits now; the client still serves other work at once
            producer = Producer(runs_client, keys=keys, settings=settings)
            await producer.enqueue("unrelated", {"n": 1})
            assert await client.xlen(keys.inbox("unrelated")) == 1
            # one reader blocks for all the waits (plus at most a few submits that wait
            # in their own round trip), not a connection per wait
            assert await blocked_reads(client, name) <= 5
            async with running_worker(settings, client, serving=app):
                await wait_until(lambda: _done(results, count), limit=120, what="all results")
    return results


async def _done(results: dict[int, RunResult], count: int) -> bool:
    return len(results) == count


@pytest.mark.slow
async def test_a_thousand_run_and_wait_from_one_client(
    client: redis.asyncio.Redis, keys: Keys, redis_url: str
) -> None:
    """1,000 concurrent run_and_wait on one client with the default pool of 64: all
    complete, and an unrelated enqueue during them succeeds (the 65th failed before, with
    "cannot reach Redis: Too many connections")."""

    async def start(agents: AgentClient, n: int) -> RunResult:
        return await agents.run_and_wait("triage", f"q{n}", timeout=180)

    results = await waits_of_one_client(
        client, keys, redis_url, count=1000, max_connections=64, start=start
    )
    assert sorted(results) == list(range(1000))
    assert [results[n].final_output for n in range(1000)] == [f"reply to q{n}" for n in range(1000)]


async def test_a_hundred_waits_on_a_pool_of_eight(
    client: redis.asyncio.Redis, keys: Keys, redis_url: str
) -> None:
    """run_and_wait, run + result and run + events, 100 at once on a pool of 8: a full
    pool waits for a free connection, and every wait gets its run's outcome."""

    async def start(agents: AgentClient, n: int) -> RunResult:
        if n % 3 == 0:
            return await agents.run_and_wait("triage", f"q{n}", timeout=120)
        handle = await agents.run("triage", f"q{n}")
        if n % 3 == 1:
            return await handle.result(timeout=120)
        events = [event async for event in handle.events()]
        assert events[0].type == "run.started" and events[-1].type == "run.completed"
        return msgspec.convert(events[-1].data, RunResult)

    results = await waits_of_one_client(
        client, keys, redis_url, count=100, max_connections=8, start=start
    )
    assert [results[n].final_output for n in range(100)] == [f"reply to q{n}" for n in range(100)]


# --- events written by the test ------------------------------------------------------------


async def append(client: redis.asyncio.Redis, keys: Keys, run_id: str, *types: str) -> None:
    """Append events of *types* to the run's stream, as a worker (or a replay) writes them;
    a terminal one carries the run's result."""
    for type_ in types:
        data = {}
        if type_ in ("run.completed", "run.failed"):
            status = type_.removeprefix("run.")
            result = RunResult(run_id=run_id, status=status, agent="triage", final_output=status)  # type: ignore[arg-type]
            data = msgspec.structs.asdict(result)
        event = RunEvent(type=type_, data=data, at=time.time())
        await client.xadd(keys.run_events(run_id), {"event": msgspec.json.encode(event)})


async def queued(client: redis.asyncio.Redis, keys: Keys, run_id: str) -> None:
    await client.hset(keys.run(run_id), mapping={"status": "queued", "agent": "triage"})


@pytest.fixture
def name() -> str:
    return f"a2-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def agents(
    redis_url: str, keys: Keys, settings: Settings, name: str
) -> AsyncIterator[AgentClient]:
    async with own_client(settings, redis_url, name) as runs_client:
        yield AgentClient(runs_client, keys=keys, settings=settings)


REPLAYED = ["run.started", "run.failed", "run.requeued"]
NEW_ATTEMPT = ["run.started", "run.completed"]


async def test_result_waits_past_a_terminal_event_followed_by_requeued(
    client: redis.asyncio.Redis, keys: Keys, agents: AgentClient, name: str
) -> None:
    await queued(client, keys, "rq")
    await append(client, keys, "rq", *REPLAYED)
    got: list[RunResult] = []
    async with anyio.create_task_group() as tg:

        async def wait() -> None:
            got.append(await agents.handle("rq").result(timeout=30))

        tg.start_soon(wait)
        await wait_until(blocked(client, name, 1), what="result() waiting past run.requeued")
        assert got == []
        await append(client, keys, "rq", *NEW_ATTEMPT)
    assert got[0].status == "completed"


async def test_events_follow_a_replayed_run_to_its_new_end(
    client: redis.asyncio.Redis, keys: Keys, agents: AgentClient, name: str
) -> None:
    await queued(client, keys, "rq")
    await append(client, keys, "rq", *REPLAYED)
    seen: list[str] = []
    async with anyio.create_task_group() as tg:

        async def follow() -> None:
            seen.extend([event.type async for event in agents.handle("rq").events()])

        tg.start_soon(follow)
        await wait_until(blocked(client, name, 1), what="events() waiting past run.requeued")
        await append(client, keys, "rq", *NEW_ATTEMPT)
    assert seen == REPLAYED + NEW_ATTEMPT
    # read again, without following: the whole stream, and it stops at the new end
    assert [e.type async for e in agents.handle("rq").events(follow=False)] == seen


async def test_run_and_wait_waits_past_a_terminal_event_followed_by_requeued(
    client: redis.asyncio.Redis, keys: Keys, agents: AgentClient, name: str
) -> None:
    """The first events come in the submit's own round trip: a terminal one there, followed
    by run.requeued, is not the outcome either."""
    await append(client, keys, "rw", *REPLAYED)  # written before the submit reads them
    got: list[RunResult] = []
    async with anyio.create_task_group() as tg:

        async def wait() -> None:
            got.append(await agents.run_and_wait("triage", "x", run_id="rw", timeout=30))

        tg.start_soon(wait)
        await wait_until(blocked(client, name, 1), what="run_and_wait past run.requeued")
        assert got == []
        await append(client, keys, "rw", *NEW_ATTEMPT)
    assert got[0].status == "completed"


async def test_a_requeued_event_just_past_a_full_read_is_seen(
    client: redis.asyncio.Redis, keys: Keys, agents: AgentClient
) -> None:
    """The old terminal event ends a read of COUNT events; run.requeued is the next one."""
    count = runtime.agents.waiters.COUNT
    await queued(client, keys, "long")
    await append(client, keys, "long", *["message"] * (count - 1), *REPLAYED[1:], *NEW_ATTEMPT)
    handle = agents.handle("long")
    assert (await handle.result(timeout=30)).status == "completed"
    assert len([e async for e in handle.events()]) == count + 3
    assert len([e async for e in handle.events(follow=False)]) == count + 3


async def test_a_new_wait_is_served_while_the_reader_blocks(
    client: redis.asyncio.Redis,
    keys: Keys,
    redis_url: str,
    settings: Settings,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a block period longer than the new wait's timeout, the new wait still gets its
    (finished) run's result: it wakes the blocked reader, which reads again with its stream
    in; and no second connection blocks."""
    monkeypatch.setattr(runtime.agents.waiters, "BLOCK_MS", 60_000)
    monkeypatch.setattr(runtime.agents.client, "BLOCK_MS", 60_000)
    runs_client = redis.asyncio.Redis.from_url(named(redis_url, name), socket_timeout=120)
    agents = AgentClient(runs_client, keys=keys, settings=settings)
    await queued(client, keys, "never")  # no worker: it never ends
    await queued(client, keys, "done")
    await append(client, keys, "done", *NEW_ATTEMPT)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(agents.handle("never").result, 90)
            await wait_until(blocked(client, name, 1), what="the reader blocking")
            assert (await agents.handle("done").result(timeout=20)).status == "completed"
            assert await blocked_reads(client, name) <= 1
            tg.cancel_scope.cancel()
    finally:
        await runs_client.aclose()


async def test_idle_waits_do_not_keep_the_reader_busy(
    client: redis.asyncio.Redis, keys: Keys, agents: AgentClient
) -> None:
    """200 waits on runs that do not move: each wait looks at its run's record once per
    block period, and rejoins the reader's read without waking it, so the reads stay few
    (with a wake-up per rejoin: 120-140 reads in two periods; 4-11 without)."""
    waits = 200

    async def calls(command: str) -> int:
        stats = await client.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    for n in range(waits):
        await queued(client, keys, f"idle-{n}")
    async with anyio.create_task_group() as tg:
        for n in range(waits):  # started over about a second, as waits come in real life
            tg.start_soon(agents.handle(f"idle-{n}").result, 60)
            if n % 4 == 3:
                await anyio.sleep(0.02)
        await wait_until(lambda: _idle_slices(calls, waits), what="a first idle period")
        reads, looks = await calls("xread"), await calls("hgetall")

        async def two_more_periods() -> bool:
            return await calls("hgetall") >= looks + 2 * waits

        await wait_until(two_more_periods, limit=30, what="two more idle periods")
        assert await calls("xread") - reads < waits / 4
        tg.cancel_scope.cancel()


async def _idle_slices(calls: Callable[[str], Awaitable[int]], waits: int) -> bool:
    return await calls("hgetall") >= waits
