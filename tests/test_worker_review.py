"""Review findings on the worker core (issue 10 follow-up): an envelope at the size limit
survives a failure, leases and fault episodes recover at once after an outage, shutdown
releases what it holds for good, a lost lease stays lost, an ambiguous dead letter runs its
hook."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import anyio
import anyio.abc
import msgspec
import pytest
import redis
import redis.asyncio
import redis.exceptions

from runtime import App, EmbeddedRedis, Keys
from runtime.app import DeadLetterContext, TaskContext
from runtime.dlq import REPLAY_HEADER, DeadLetters
from runtime.envelope import Envelope, encode_envelope, encode_within, new_task_id
from runtime.errors import PermanentError
from runtime.producer import Producer
from runtime.scripts import Scripts
from runtime.worker import Worker, consumer
from runtime.worker.leases import Leases
from runtime.worker.outcome import Entry, Outcomes, WorkerStats
from runtime.worker.slots import Slots
from tests.conftest import free_port, make_settings, own_redis
from tests.helpers import kill_next_connection, running_worker, scratch_list, wait_until

pytestmark = pytest.mark.anyio

app = App("review")
LIMIT = 4096


@app.task("fails_once_loudly")
async def fails_once_loudly(ctx: TaskContext, payload: str) -> None:
    """Fails its first attempt with a long error (the runtime keeps up to 2 KB of it)."""
    await ctx.redis.rpush(ctx.keys.scratch("started"), ctx.task_id)
    if ctx.attempt == 0:
        raise RuntimeError("boom " * 1000)
    await ctx.redis.rpush(ctx.keys.scratch("effects"), ctx.task_id)


@app.task("slow")
async def slow(ctx: TaskContext, seconds: float) -> None:
    await ctx.redis.rpush(ctx.keys.scratch("started"), ctx.task_id)
    await anyio.sleep(seconds)


@app.task("held_in_thread")
def held_in_thread(ctx: TaskContext, seconds: float) -> None:
    """A plain handler (its thread cannot be cancelled): its first delivery runs *seconds*."""
    with redis.Redis.from_url(ctx.settings.redis.url) as log:
        log.rpush(ctx.keys.scratch("runs"), str(ctx.deliveries))
    if ctx.deliveries == 1:
        time.sleep(seconds)


def _envelope_near_limit(target: str, limit: int) -> tuple[str, int]:
    """A payload whose envelope, as the producer encodes it, is within 8 bytes of *limit*
    (the producer's envelopes carry a traceparent)."""
    traceparent = f"00-{'0' * 32}-{'0' * 16}-01"
    probe = Envelope(
        id=new_task_id(), target=target, payload="", created_at=time.time(), traceparent=traceparent
    )
    room = limit - len(encode_envelope(probe)) - 8
    return "x" * room, len(encode_envelope(probe)) + room


# --- item 1: an envelope at the size limit survives a failure ---------------------------------
async def test_an_envelope_at_the_size_limit_that_fails_once_runs_again(
    client: redis.asyncio.Redis, redis_url: str, keys: Keys
) -> None:
    settings = make_settings(redis_url, keys.prefix, **{"streams.max_entry_bytes": str(LIMIT)})
    payload, size = _envelope_near_limit("fails_once_loudly", LIMIT)
    assert LIMIT - 8 <= size <= LIMIT
    sent = await Producer(client, keys=keys, settings=settings).enqueue(
        "fails_once_loudly", payload
    )
    letters = DeadLetters(client, keys=keys)
    async with running_worker(settings, client, serving=app) as worker:
        await wait_until(lambda: _listed(client, keys, "effects", 1), what="the second run")
    assert await scratch_list(client, keys, "started") == [sent.task_id] * 2  # ran twice
    assert await scratch_list(client, keys, "effects") == [sent.task_id]
    assert await letters.size("fails_once_loudly") == 0  # not dead-lettered as oversized
    assert worker.stats.retried == 1 and worker.stats.dead_lettered == 0


def test_a_retry_cuts_its_error_to_fit_the_limit_and_a_replay_does_not_grow() -> None:
    base = Envelope(id="t", target="x", payload="y" * 3000, created_at=1.5)
    failed = Envelope(
        id="t", target="x", payload="y" * 3000, created_at=1.5, attempt=1, last_error="é" * 2000
    )
    raw = encode_within(failed, LIMIT)
    assert len(raw) <= LIMIT
    cut = msgspec.json.decode(raw, type=Envelope)
    assert cut.last_error is not None and cut.last_error.endswith("max_entry_bytes)")
    assert cut.last_error.startswith("é" * 10)
    # no room at all for an error: dropped
    tight = len(encode_envelope(base)) + 12
    assert b"last_error" not in encode_within(failed, tight)
    # fits already: unchanged
    assert encode_within(base, LIMIT) == encode_envelope(base)


async def test_a_replay_is_no_longer_than_its_letter(
    client: redis.asyncio.Redis, keys: Keys
) -> None:
    envelope = Envelope(
        id="t", target="echo", payload="y" * 3000, attempt=2, last_error="boom " * 400
    )
    raw = encode_envelope(envelope)
    await client.xadd(keys.dlq("echo"), {"reason": "failed", "envelope": raw})
    letters = DeadLetters(client, keys=keys)
    replayed = await letters.replay("echo")
    assert len(replayed.moved) == 1
    [(_, fields)] = await client.xrange(keys.inbox("echo"))
    assert len(fields[b"envelope"]) <= len(raw)
    again = msgspec.json.decode(fields[b"envelope"], type=Envelope)
    assert REPLAY_HEADER in again.headers and again.attempt == 0
    assert again.payload == envelope.payload


async def test_an_oversized_envelope_that_decodes_is_kept_whole_in_its_letter(
    client: redis.asyncio.Redis, redis_url: str, keys: Keys
) -> None:
    settings = make_settings(redis_url, keys.prefix, **{"streams.max_entry_bytes": "2048"})
    raw = encode_envelope(Envelope(id="big", target="slow", payload=["x" * 3000]))
    await client.xadd(keys.inbox("slow"), {"envelope": raw})
    letters = DeadLetters(client, keys=keys)
    async with running_worker(settings, client, serving=app):
        await wait_until(lambda: _dead(letters, "slow", 1), what="the letter")
    [letter] = await letters.read("slow")
    assert letter.reason == "oversized" and letter.task_id == "big"
    assert letter.envelope == raw  # whole: it can be replayed once the limit is raised


# --- item 2: a failed renewal leaves the next one due -----------------------------------------
async def test_a_failed_lease_renewal_leaves_the_next_one_due_at_once(
    client: redis.asyncio.Redis, keys: Keys
) -> None:
    stream = keys.inbox("slow")
    await client.xgroup_create(stream, "workers", id="0", mkstream=True)
    entry_id = await client.xadd(stream, {"envelope": b"{}"})
    await client.xreadgroup("workers", "c", {stream: ">"})
    slots = Slots(1)
    slots.admit(stream.encode(), entry_id, {}, 1)

    def leases_on(conn: redis.asyncio.Redis) -> Leases:
        return Leases(
            Scripts.register(conn), group="workers", consumer="c", lease_seconds=3,
            slots=slots, stats=WorkerStats(),
        )  # fmt: skip

    unreachable = redis.asyncio.Redis(port=free_port(), socket_connect_timeout=1)
    failing = leases_on(unreachable)
    due = anyio.current_time() - failing.every  # a renewal is due
    failing.renewed_at = due
    with pytest.raises(redis.exceptions.ConnectionError):
        await failing.renew()
    await unreachable.aclose()
    assert failing.renewed_at == due  # still due: renewed at once when Redis is back
    working = leases_on(client)
    working.renewed_at = due
    await working.renew()
    assert working.renewed_at > due


# --- item 3: a fault episode ends when Redis is back, not a cleanup period later --------------
@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, str]]:
    """A server of the test's own, with its append-only file (it is stopped and restarted)."""
    server = own_redis(tmp_path / "redis", startup_timeout=120)
    url = server.start().url
    try:
        yield server, url
    finally:
        server.stop()


async def test_the_fault_episode_ends_soon_after_redis_is_back(
    own_server: tuple[EmbeddedRedis, str], key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, url = own_server
    settings = make_settings(url, key_prefix)
    monkeypatch.setattr(consumer, "_CLEANUP_EVERY", 0.05)  # cleanups meet the outage
    client = redis.asyncio.Redis.from_url(url)
    try:
        async with running_worker(settings, client, serving=app) as worker:
            await anyio.to_thread.run_sync(server.stop)
            await wait_until(lambda: _fault(worker, True), what="the fault")
            monkeypatch.setattr(consumer, "_CLEANUP_EVERY", 3600.0)  # a long period from now
            await anyio.sleep(0.5)  # the outage goes on (every loop meets it)
            await anyio.to_thread.run_sync(server.start)
            await wait_until(lambda: _fault(worker, False), limit=15, what="the recovery")
            assert worker.stop_reason is None
    finally:
        await client.aclose()


# --- item 4: a held entry whose lease was lost is not taken back as running here ---------------
async def test_a_lost_entry_reclaimed_while_its_thread_runs_keeps_its_deliveries(
    client: redis.asyncio.Redis, redis_url: str, keys: Keys
) -> None:
    """The thread runs 3 s; a thief takes the entry (the worker's lease is lost) and drops
    it; the worker's reclaimer claims it again while the thread still runs. Those deliveries
    stand: the next run sees them (before, the claim was undone as "ours, running")."""
    settings = make_settings(redis_url, keys.prefix, **{"worker.max_deliveries": "20"})
    await Producer(client, keys=keys, settings=settings).enqueue("held_in_thread", 3.0)
    inbox = keys.inbox("held_in_thread")
    async with running_worker(settings, client, serving=app) as worker:
        await wait_until(lambda: _listed(client, keys, "runs", 1), what="the first run")
        [pending] = await client.xpending_range(inbox, "workers", "-", "+", 1)
        await client.xclaim(inbox, "workers", "thief", 0, [pending["message_id"]], justid=True)
        await wait_until(lambda: _listed(client, keys, "runs", 2), limit=20, what="a second run")
        assert worker.stats.lost_leases == 1
    runs = [int(n) for n in await scratch_list(client, keys, "runs")]
    assert runs[0] == 1 and runs[1] >= 3  # read, the thief's claim, our reclaim: all counted


# --- item 5: shutdown releases for good -----------------------------------------------------
async def test_a_renewal_does_not_undo_the_release_at_shutdown(
    client: redis.asyncio.Redis, redis_url: str, keys: Keys
) -> None:
    """Writes are paused over the shutdown, so a renewal due meanwhile would run after the
    release (and reset the entry's idle time) were it still sent."""
    settings = make_settings(redis_url, keys.prefix, **{"worker.lease_seconds": "3"})
    await Producer(client, keys=keys, settings=settings).enqueue("slow", 60)
    async with running_worker(settings, client, serving=app) as worker:
        await wait_until(lambda: _listed(client, keys, "started", 1), what="the start")
        await client.client_pause(1500, all=False)  # WRITE: scripts wait, reads go on
        worker.stop(grace=0)
    await wait_until(lambda: _unpaused(client), what="the pause's end")
    [pending] = await client.xpending_range(keys.inbox("slow"), "workers", "-", "+", 1)
    assert pending["time_since_delivered"] >= 3000  # claimable by any worker at once
    assert pending["times_delivered"] == 0 and worker.stats.released == 1


async def test_a_failing_ack_flush_does_not_keep_entries_from_being_released(
    client: redis.asyncio.Redis, redis_url: str, keys: Keys
) -> None:
    settings = make_settings(redis_url, keys.prefix)
    stream = keys.inbox("slow")
    await client.xgroup_create(stream, "workers", id="0", mkstream=True)
    done_id = await client.xadd(stream, {"envelope": b"{}"})
    held_id = await client.xadd(stream, {"envelope": b"{}"})
    await client.xreadgroup("workers", "c", {stream: ">"})
    stats = WorkerStats()
    outcomes = Outcomes(
        client, settings, keys=keys, consumer="c", targets={stream.encode(): "slow"}, stats=stats
    )
    outcomes.ack(Entry(stream.encode(), done_id, {}, 1))  # succeeded, its ack not written yet
    await kill_next_connection(client)  # the flush's connection
    await outcomes.release_all()
    pending = await client.xpending_range(stream, "workers", "-", "+", 10)
    assert [p["message_id"] for p in pending] == [held_id]  # the ack written after all
    assert pending[0]["time_since_delivered"] >= 1000 and stats.released == 1


# --- item 6: an ambiguous dead letter still runs its hook -----------------------------------
BUSY = """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
repeat
  t = redis.call('TIME')
until tonumber(t[1]) * 1000000 + tonumber(t[2]) - start > tonumber(ARGV[1])
return 1
"""


async def test_a_dead_letter_whose_reply_was_lost_runs_its_hook(redis_url: str, keys: Keys) -> None:
    """Another client waits on the dead-letter stream (XREAD BLOCK) with a script that keeps
    Redis busy for 1.5 s queued behind: the letter wakes it, the script runs before Redis
    sends the DEAD_LETTER script's reply, and the worker's read of that reply times out
    (0.5 s). The next try finds the entry gone; the letter is found: the hook runs, and no
    lease was lost."""
    heard: list[str] = []

    async def hook(info: DeadLetterContext) -> None:
        heard.append(info.reason)

    async def fails(ctx: TaskContext, payload: object) -> None:
        raise PermanentError("no")

    review = App("review-hook")
    review.add_handler("fails", fails, on_dead_letter=hook)
    settings = make_settings(redis_url, keys.prefix, **{"worker.block_ms": "100"})
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=0.5)
    letters = DeadLetters(client, keys=keys)
    where = urlparse(redis_url)
    trap = await anyio.connect_tcp(where.hostname or "127.0.0.1", where.port or 6379)
    try:
        await trap.send(
            _command("XREAD", "BLOCK", "0", "STREAMS", keys.dlq("fails"), "$")
            + _command("EVAL", BUSY, "0", "1500000")
        )
        await wait_until(lambda: _blocked(client), what="the trap set")
        await Producer(client, keys=keys, settings=settings).enqueue("fails", 1)
        worker = Worker(review, settings, client, consumer="review:0")
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            await wait_until(lambda: _nonempty(heard), limit=20, what="the hook")
            worker.stop()
        assert heard == ["permanent"]
        assert worker.stats.lost_leases == 0
        assert await letters.size("fails") == 1
    finally:
        await trap.aclose()
        async for key in client.scan_iter(match=f"{keys.prefix}:*"):
            await client.unlink(key)
        await client.aclose()


async def _blocked(client: redis.asyncio.Redis) -> bool:
    return int((await client.info("clients"))["blocked_clients"]) >= 1


# --- helpers --------------------------------------------------------------------------------
def _command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def _listed(client: redis.asyncio.Redis, keys: Keys, name: str, n: int) -> bool:
    return int(await client.llen(keys.scratch(name))) >= n


async def _dead(letters: DeadLetters, target: str, n: int) -> bool:
    return await letters.size(target) >= n


async def _fault(worker: Worker, present: bool) -> bool:
    return (worker.fault is not None) == present


async def _nonempty(items: list[str]) -> bool:
    return bool(items)


async def _unpaused(client: redis.asyncio.Redis) -> bool:
    async with client.pipeline(transaction=False) as pipe:  # a write: runs once unpaused
        with anyio.fail_after(5):
            await pipe.set("review:unpaused", 1).delete("review:unpaused").execute()
    return True
