"""An entry in flight runs once at a time (issue 10, items 2 and 7): not after a blocked event
loop (the worker's own reclaimer found it idle), not after a plain handler's timeout (its
thread still runs)."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
import redis
import redis.asyncio

from runtime import App, Keys
from runtime.app import TaskContext
from runtime.dlq import DeadLetters
from runtime.producer import Producer
from tests.conftest import make_settings
from tests.helpers import running_worker, scratch_list, wait_until

pytestmark = pytest.mark.anyio

app = App("inflight")


@app.task("blocks_loop")
async def blocks_loop(ctx: TaskContext, seconds: float) -> None:
    """Blocks the event loop (on purpose) for *seconds*, longer than the lease."""
    await ctx.redis.rpush(ctx.keys.scratch("started"), ctx.task_id)
    time.sleep(seconds)  # noqa: ASYNC251 - the point of the test: a loop blocked past the lease
    await ctx.redis.rpush(ctx.keys.scratch("effects"), ctx.task_id)


@app.task("taken_while_blocked")
async def taken_while_blocked(ctx: TaskContext, seconds: float) -> None:
    """A live consumer (a thread here) takes the entry and keeps its lease while this one
    blocks the loop: really lost (the handler is then cancelled at its next await)."""
    thief = threading.Thread(target=_keep_taking, args=(ctx, seconds * 2), daemon=True)
    thief.start()
    time.sleep(seconds)  # noqa: ASYNC251 - blocks the loop past the lease, on purpose
    await anyio.sleep(seconds)
    await ctx.redis.rpush(ctx.keys.scratch("returned"), ctx.task_id)


def _keep_taking(ctx: TaskContext, seconds: float) -> None:
    with redis.Redis.from_url(ctx.settings.redis.url) as other:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            inbox = ctx.keys.inbox(ctx.target)
            other.xclaim(inbox, "workers", "thief", 0, [ctx.entry_id], justid=True)
            time.sleep(0.1)
        other.rpush(ctx.keys.scratch("thief_done"), 1)


@app.task("sleeps_in_thread", timeout=0.3)
def sleeps_in_thread(ctx: TaskContext, seconds: float) -> None:
    """A plain handler that runs past its timeout; logs its start and its end in Redis."""
    with redis.Redis.from_url(ctx.settings.redis.url) as log:
        log.rpush(ctx.keys.scratch("runs"), f"start {ctx.consumer}")
        time.sleep(seconds)
        log.rpush(ctx.keys.scratch("runs"), f"end {ctx.consumer}")


@pytest.fixture
async def core(core_url: str, key_prefix: str) -> redis.asyncio.Redis:
    client = redis.asyncio.Redis.from_url(core_url)
    yield client
    async for key in client.scan_iter(match=f"{key_prefix}:*", count=1000):
        await client.unlink(key)
    await client.aclose()


async def _listed(client: redis.asyncio.Redis, keys: Keys, name: str, n: int) -> bool:
    return int(await client.llen(keys.scratch(name))) >= n


async def test_an_entry_in_flight_is_not_run_again_after_a_blocked_loop(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix)  # lease 1 s, reclaim every 0.1 s
    producer = Producer(core, keys=keys, settings=settings)
    sent = [await producer.enqueue("blocks_loop", 2.0) for _ in range(2)]  # lease × 2 each
    async with running_worker(settings, core, serving=app) as worker:
        await wait_until(lambda: _listed(core, keys, "effects", 2), limit=20, what="2 effects")
        await wait_until(lambda: _pending_is(core, keys, "blocks_loop", 0), what="the acks")
        # the reclaimer ticks on, now that the loop is free: nothing more may start
        await anyio.sleep(0.3)
        assert worker.stats.lost_leases == 0  # it was never another consumer's
        assert worker.stats.reclaimed == 0
    ids = sorted(s.task_id for s in sent)
    assert sorted(await scratch_list(core, keys, "started")) == ids  # each started once
    assert sorted(await scratch_list(core, keys, "effects")) == ids


async def test_a_lease_another_consumer_took_is_counted_lost_and_not_settled(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix)
    await Producer(core, keys=keys, settings=settings).enqueue("taken_while_blocked", 2.0)
    async with running_worker(settings, core, serving=app) as worker:
        await wait_until(lambda: _lost(worker, 1), what="the lost lease")
        await wait_until(lambda: _done(worker), what="the handler's end")
        await wait_until(lambda: _listed(core, keys, "thief_done", 1), what="the thief's end")
    pending = await core.xpending_range(keys.inbox("taken_while_blocked"), "workers", "-", "+", 5)
    assert [p["consumer"] for p in pending] == [b"thief"]  # not acked by the worker that lost it
    assert await scratch_list(core, keys, "returned") == []  # cancelled once lost
    assert worker.stats.succeeded == 0 and worker.stats.lost_leases == 1


async def test_a_timed_out_thread_holds_its_entry_until_it_returns(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    """Timeout 0.3 s, the thread sleeps 1.2 s (past the 1 s lease too); two workers: every
    try starts only after the previous one's thread has returned."""
    settings = make_settings(core_url, keys.prefix)  # max_deliveries 3
    await Producer(core, keys=keys, settings=settings).enqueue("sleeps_in_thread", 1.2)
    letters = DeadLetters(core, keys=keys)
    async with (
        running_worker(settings, core, "test:0", serving=app) as first,
        running_worker(settings, core, "test:1", serving=app) as second,
    ):
        await wait_until(lambda: _dead(letters, "sleeps_in_thread"), limit=20, what="a letter")
        assert first.stats.lost_leases == second.stats.lost_leases == 0
    runs = [line.split()[0] for line in await scratch_list(core, keys, "runs")]
    assert runs == ["start", "end"] * 3  # never two at once
    [letter] = await letters.read("sleeps_in_thread")
    assert letter.reason == "failed" and letter.error == "timed out after 0.3 s"


async def test_a_thread_that_never_started_does_not_hold_its_entry(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    """One thread for the whole loop: the second entry's call waits for it and its timeout
    (0.3 s) comes before its thread starts. It is settled as timed out at once (it held its
    entry, slot and lease forever: nothing ever said its thread had returned), and every entry
    ends in the dead-letter stream after its tries."""
    settings = make_settings(core_url, keys.prefix)  # max_deliveries 3
    limiter = anyio.to_thread.current_default_thread_limiter()
    tokens, limiter.total_tokens = limiter.total_tokens, 1
    try:
        jobs = Producer(core, keys=keys, settings=settings)
        await jobs.enqueue_many("sleeps_in_thread", [0.6, 0.6])
        letters = DeadLetters(core, keys=keys)
        async with running_worker(settings, core, "test:0", serving=app) as worker:

            async def both_dead() -> bool:
                return await letters.size("sleeps_in_thread") == 2

            await wait_until(both_dead, limit=30, what="two letters")
            await wait_until(lambda: _done(worker), what="no entry held")
    finally:
        limiter.total_tokens = tokens
    starts = [line for line in await scratch_list(core, keys, "runs") if line.startswith("s")]
    assert 0 < len(starts) < 6  # some of the six tries never got a thread: timed out waiting


async def _pending_is(client: redis.asyncio.Redis, keys: Keys, target: str, n: int) -> bool:
    return int((await client.xpending(keys.inbox(target), "workers"))["pending"]) == n


async def _lost(worker: object, n: int) -> bool:
    return bool(worker.stats.lost_leases >= n)  # type: ignore[attr-defined]


async def _done(worker: object) -> bool:
    return not worker.free_slots < worker.settings.worker.concurrency  # type: ignore[attr-defined]


async def _dead(letters: DeadLetters, target: str) -> bool:
    return await letters.size(target) >= 1
