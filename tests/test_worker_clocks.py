"""Times that cross processes are Redis's (issue 10, item 8): a delay is counted on Redis's
clock whatever the producer's or the worker's clock says, and so is a retry's run-at time."""

from __future__ import annotations

import time
import types

import pytest
import redis.asyncio

from runtime import App, Keys
from runtime.app import TaskContext
from runtime.dlq import DeadLetters
from runtime.envelope import Envelope, encode_envelope
from runtime.errors import RetryLater
from runtime.producer import Producer
from tests.conftest import make_settings
from tests.helpers import running_worker, scratch_list, wait_until

pytestmark = pytest.mark.anyio

app = App("clocks")


async def _redis_now(client: redis.asyncio.Redis) -> float:
    seconds, micros = await client.time()
    return float(seconds) + micros / 1e6


@app.task("stamp")
async def stamp(ctx: TaskContext, payload: object) -> None:
    """Records when it ran, by Redis's clock."""
    await ctx.redis.rpush(ctx.keys.scratch("ran_at"), repr(await _redis_now(ctx.redis)))


@app.task("later")
async def later(ctx: TaskContext, delay: float) -> None:
    """Records when it failed (Redis's clock), then asks for a retry after *delay* s."""
    await ctx.redis.rpush(ctx.keys.scratch("failed_at"), repr(await _redis_now(ctx.redis)))
    raise RetryLater("not yet", delay=delay)


def _skewed_clock(offset: float) -> types.SimpleNamespace:
    """A stand-in for the ``time`` module of a host whose clock is *offset* seconds off."""
    real = time.time
    return types.SimpleNamespace(
        time=lambda: real() + offset, monotonic=time.monotonic, perf_counter=time.perf_counter
    )


def _skew(monkeypatch: pytest.MonkeyPatch, modules: list[str], offset: float) -> None:
    for name in modules:
        # raising=False: a module that reads no clock any more is given one all the same
        monkeypatch.setattr(f"{name}.time", _skewed_clock(offset), raising=False)


WORKER_MODULES = [
    "runtime.worker.consumer",
    "runtime.worker.intake",
    "runtime.worker.outcome",
    "runtime.worker.leases",
]


@pytest.fixture
async def core(core_url: str, key_prefix: str) -> redis.asyncio.Redis:
    client = redis.asyncio.Redis.from_url(core_url)
    yield client
    async for key in client.scan_iter(match=f"{key_prefix}:*", count=1000):
        await client.unlink(key)
    await client.aclose()


async def _ran(client: redis.asyncio.Redis, keys: Keys) -> bool:
    return int(await client.llen(keys.scratch("ran_at"))) >= 1


@pytest.mark.parametrize("offset", [60.0, -60.0])
@pytest.mark.parametrize("idempotency_key", [None, "once"])
async def test_a_delay_is_counted_on_redis_clock_whatever_the_producer_clock(
    core: redis.asyncio.Redis,
    core_url: str,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    offset: float,
    idempotency_key: str | None,
) -> None:
    settings = make_settings(core_url, keys.prefix)
    _skew(monkeypatch, ["runtime.producer"], offset)
    producer = Producer(core, keys=keys, settings=settings)
    before = await _redis_now(core)
    sent = await producer.enqueue("stamp", 1, delay=0.5, idempotency_key=idempotency_key)
    after = await _redis_now(core)
    assert sent.run_at is not None and before + 0.49 <= sent.run_at <= after + 0.5
    async with running_worker(settings, core, serving=app):
        # 500 polls of 20 ms: far less than the 60 s a skewed clock would add
        await wait_until(lambda: _ran(core, keys), limit=10, what="the delayed run")
    [ran_at] = [float(t) for t in await scratch_list(core, keys, "ran_at")]
    assert ran_at >= before + 0.49  # not early (1 ms: Redis's TIME against its ms scores)


@pytest.mark.parametrize("offset", [60.0, -60.0])
async def test_the_mover_and_retries_use_redis_clock_whatever_the_worker_clock(
    core: redis.asyncio.Redis,
    core_url: str,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    offset: float,
) -> None:
    settings = make_settings(core_url, keys.prefix)
    producer = Producer(core, keys=keys, settings=settings)  # the producer's clock is right
    _skew(monkeypatch, WORKER_MODULES, offset)
    before = await _redis_now(core)
    await producer.enqueue("stamp", 1, delay=0.5)
    await producer.enqueue("later", 30.0)
    async with running_worker(settings, core, serving=app):
        await wait_until(lambda: _ran(core, keys), limit=10, what="the delayed run")
        await wait_until(lambda: _scheduled(core, keys), what="the retry")
        after = await _redis_now(core)
    [ran_at] = [float(t) for t in await scratch_list(core, keys, "ran_at")]
    assert ran_at >= before + 0.49  # moved when due by Redis's clock, not early
    [failed_at] = [float(t) for t in await scratch_list(core, keys, "failed_at")]
    [(_, run_at_ms)] = await core.zrange(keys.delayed("later"), 0, -1, withscores=True)
    # the retry runs 30 s after it failed, by Redis's clock
    assert (failed_at + 30.0) * 1000 - 1 <= run_at_ms <= (after + 30.0) * 1000


@pytest.mark.parametrize("offset", [60.0, -60.0])
async def test_a_deadline_is_compared_with_redis_clock_whatever_the_worker_clock(
    core: redis.asyncio.Redis,
    core_url: str,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    offset: float,
) -> None:
    """Deadlines 30 s ahead and 30 s past by Redis's clock: the first runs, the second is
    dead-lettered as expired, on a worker whose clock is a minute off either way."""
    settings = make_settings(core_url, keys.prefix)
    producer = Producer(core, keys=keys, settings=settings)
    now = await _redis_now(core)
    ahead = await producer.enqueue("stamp", 1, deadline=now + 30)
    past = Envelope(id="past", target="stamp", deadline=now - 30)
    await core.xadd(keys.inbox("stamp"), {"envelope": encode_envelope(past)})
    _skew(monkeypatch, WORKER_MODULES, offset)
    letters = DeadLetters(core, keys=keys)
    async with running_worker(settings, core, serving=app):
        await wait_until(lambda: _ran(core, keys), what="the run before its deadline")
        await wait_until(lambda: _dead(letters), what="the expired entry")
    [letter] = await letters.read("stamp")
    assert letter.reason == "expired" and letter.task_id == "past"
    assert ahead.task_id != letter.task_id


async def _dead(letters: DeadLetters) -> bool:
    return await letters.size("stamp") >= 1


async def _scheduled(client: redis.asyncio.Redis, keys: Keys) -> bool:
    return int(await client.zcard(keys.delayed("later"))) == 1
