"""The stream consumer in-process, on Redis Stack and on a plain Redis: the delivery contract."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import anyio
import msgspec
import pytest
import redis.asyncio

from runtime import Keys
from runtime.dlq import DeadLetters
from runtime.envelope import Envelope, encode_envelope
from runtime.producer import Producer
from runtime.worker.consumer import Worker
from tests.conftest import make_settings
from tests.helpers import running_worker, scratch_list, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def core(core_url: str, key_prefix: str) -> redis.asyncio.Redis:
    client = redis.asyncio.Redis.from_url(core_url)
    yield client
    async for key in client.scan_iter(match=f"{key_prefix}:*", count=1000):
        await client.unlink(key)
    await client.aclose()


def producer_for(client: redis.asyncio.Redis, core_url: str, prefix: str, **kw: object) -> Producer:
    settings = make_settings(core_url, prefix, **kw)
    return Producer(client, keys=Keys(prefix), settings=settings)


async def test_entries_run_once_and_are_deleted(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix)
    producer = Producer(core, keys=keys, settings=settings)
    sent = await producer.enqueue_many("echo", range(300))
    async with running_worker(settings, core):
        await wait_until(lambda: _count(core, keys, "effects", 300), what="300 effects")
    effects = await scratch_list(core, keys, "effects")
    assert sorted(effects) == sorted(e.task_id for e in sent)
    assert await core.xlen(keys.inbox("echo")) == 0  # deleted on ack: the stream stays bounded
    assert (await core.xpending(keys.inbox("echo"), "workers"))["pending"] == 0


async def _count(client: redis.asyncio.Redis, keys: Keys, name: str, n: int) -> bool:
    return int(await client.llen(keys.scratch(name))) >= n


async def test_failing_entry_dead_lettered_after_exactly_max_deliveries(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix, **{"worker.max_deliveries": "4"})
    producer = Producer(core, keys=keys, settings=settings)
    sent = await producer.enqueue("flaky", {"n": 1})
    letters = DeadLetters(core, keys=keys)
    async with running_worker(settings, core):
        await wait_until(lambda: _size(letters, "flaky", 1), what="a dead letter")
        # nothing is left to run it again: no entry in the inbox, no retry waiting
        assert await core.xlen(keys.inbox("flaky")) == 0
        assert await core.zcard(keys.delayed("flaky")) == 0
        assert await scratch_list(core, keys, "started") == [sent.task_id] * 4
        [letter] = await letters.read("flaky")
        assert letter.reason == "failed"
        assert letter.detail == "failed 4 times (worker.max_deliveries = 4)"
        assert letter.error == "RuntimeError: still broken"
        assert letter.task_id == sent.task_id and letter.attempts == 4
        assert await core.xlen(keys.inbox("flaky")) == 0
        assert await core.zcard(keys.delayed("flaky")) == 0

        await core.set(keys.scratch("fixed"), 1)
        replayed = await letters.replay("flaky")
        assert list(replayed.moved) == [letter.id]
        await wait_until(lambda: _count(core, keys, "effects", 1), what="the replayed run")
    assert await scratch_list(core, keys, "effects") == [sent.task_id]
    assert await letters.size("flaky") == 0
    again = await letters.replay("flaky", [letter.id])
    assert again.skipped == {letter.id: "no such dead letter"}


async def _size(letters: DeadLetters, target: str, n: int) -> bool:
    return await letters.size(target) >= n


async def test_permanent_error_is_not_retried(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix)
    await Producer(core, keys=keys, settings=settings).enqueue("fatal")
    letters = DeadLetters(core, keys=keys)
    async with running_worker(settings, core):
        await wait_until(lambda: _size(letters, "fatal", 1), what="a dead letter")
    [letter] = await letters.read("fatal")
    assert letter.reason == "permanent"
    assert letter.error == "PermanentError: cannot ever work"
    assert len(await scratch_list(core, keys, "started")) == 1


MALFORMED = [
    ({b"junk": b"x"}, "malformed", "no 'envelope' field (fields: junk)"),
    ({b"envelope": b"{not json"}, "malformed", "invalid JSON"),
    (
        {b"envelope": b'{"v": 9, "id": "a", "target": "echo"}'},
        "unsupported_version",
        "schema version 9",
    ),
    (
        {b"envelope": b'{"v": 1, "target": "echo"}'},
        "malformed",
        "Object missing required field `id`",
    ),
    (
        {b"envelope": b'{"id": "a", "target": "typed"}'},
        "unknown_target",
        "target 'typed' in the inbox of 'echo'",
    ),
    (
        {b"envelope": b'{"id": "b", "target": "echo", "payload": "' + b"x" * 3000 + b'"}'},
        "oversized",
        "3044 bytes, over streams.max_entry_bytes (2048)",
    ),
]


async def test_malformed_entries_go_to_the_dlq_and_the_worker_goes_on(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix, **{"streams.max_entry_bytes": "2048"})
    for fields, _, _ in MALFORMED:
        await core.xadd(keys.inbox("echo"), fields)
    good = await Producer(core, keys=keys, settings=settings).enqueue("echo", 1)
    typed_bad = await Producer(core, keys=keys, settings=settings).enqueue(
        "typed", {"order_id": "x"}
    )
    letters = DeadLetters(core, keys=keys)
    async with running_worker(settings, core):
        await wait_until(lambda: _count(core, keys, "effects", 1), what="the good entry")
        await wait_until(lambda: _size(letters, "echo", len(MALFORMED)), what="dead letters")
        await wait_until(lambda: _size(letters, "typed", 1), what="the invalid payload")
    found = [(x.reason, x.detail) for x in await letters.read("echo")]
    assert len(found) == len(MALFORMED)
    for _, reason, detail in MALFORMED:  # handled concurrently: any order
        assert any(r == reason and d.startswith(detail) for r, d in found), (reason, found)
    assert await scratch_list(core, keys, "effects") == [good.task_id]
    [invalid] = await letters.read("typed")
    assert invalid.reason == "invalid_payload" and invalid.task_id == typed_bad.task_id
    assert invalid.detail == "the payload does not convert to Order"
    assert "Expected `int`, got `str` - at `$.order_id`" in invalid.error
    [no_envelope] = [x for x in await letters.read("echo") if x.envelope is None]
    assert no_envelope.extra == {"junk": "x"}  # the original fields are kept
    assert await core.xlen(keys.inbox("echo")) == 0


async def test_typed_payload_is_converted(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix)
    await Producer(core, keys=keys, settings=settings).enqueue(
        "typed", {"order_id": 7, "amount": 9.5}
    )
    async with running_worker(settings, core):
        await wait_until(lambda: _count(core, keys, "effects", 1), what="the typed run")
    assert await scratch_list(core, keys, "effects") == ["7:9.5"]


async def test_long_handler_is_never_run_twice(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    """Handlers run 3× the lease; two workers reclaim every 0.1 s; lease renewal wins."""
    settings = make_settings(core_url, keys.prefix)  # lease 1 s
    producer = Producer(core, keys=keys, settings=settings)
    for _ in range(4):
        await producer.enqueue("slow", 3.2)
    await producer.enqueue("blocking", 3.2)  # blocks a thread, not the loop
    async with running_worker(settings, core, "test:0") as first:
        await wait_until(lambda: _count(core, keys, "started", 4), what="four starts")
        async with running_worker(settings, core, "test:1") as second:
            await wait_until(lambda: _count(core, keys, "effects", 4), limit=15, what="effects")
            await wait_until(lambda: _inbox_empty(core, keys, "blocking"), what="blocking done")
    started = await scratch_list(core, keys, "started")
    assert len(started) == len(set(started)) == 4
    assert second.stats.reclaimed == 0 and first.stats.lost_leases == 0


async def _inbox_empty(client: redis.asyncio.Redis, keys: Keys, target: str) -> bool:
    return int(await client.xlen(keys.inbox(target))) == 0


async def _ghost_reads(client: redis.asyncio.Redis, keys: Keys, target: str, consumer: str) -> None:
    """A consumer that takes entries and dies (never acks)."""
    with contextlib.suppress(redis.exceptions.ResponseError):  # the group exists
        await client.xgroup_create(keys.inbox(target), "workers", id="0", mkstream=True)
    await client.xreadgroup("workers", consumer, {keys.inbox(target): ">"}, count=100)


async def test_idle_queue_recovers_orphans_without_new_traffic(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix)  # lease 1 s, reclaim every 0.1 s
    sent = await Producer(core, keys=keys, settings=settings).enqueue_many("echo", range(5))
    await _ghost_reads(core, keys, "echo", "dead-host:7")
    async with running_worker(settings, core) as worker:
        # no new traffic comes: only the reclaimer's timer can find them (XAUTOCLAIM takes
        # an entry only once it has been idle for a lease: Redis checks that, not us)
        await wait_until(lambda: _count(core, keys, "effects", 5), what="the orphans")
    assert sorted(await scratch_list(core, keys, "effects")) == sorted(s.task_id for s in sent)
    assert worker.stats.reclaimed == 5
    removed = await worker.remove_dead_consumers(min_idle_ms=0)
    assert removed == ["dead-host:7"]  # it owns nothing any more


async def test_dead_consumer_with_pending_work_is_kept(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix, **{"worker.lease_seconds": "60"})
    await Producer(core, keys=keys, settings=settings).enqueue("echo", 1)
    await _ghost_reads(core, keys, "echo", "dead-host:8")
    async with running_worker(settings, core) as worker:
        assert await worker.remove_dead_consumers(min_idle_ms=0) == []
    names = [c["name"] for c in await core.xinfo_consumers(keys.inbox("echo"), "workers")]
    assert b"dead-host:8" in names


async def test_restarted_worker_recovers_its_own_entries_at_once(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix, **{"worker.lease_seconds": "30"})
    await Producer(core, keys=keys, settings=settings).enqueue_many("echo", range(3))
    await _ghost_reads(core, keys, "echo", "host-a:0")  # our predecessor, same name
    async with running_worker(settings, core, "host-a:0") as worker:
        # within the wait's limit, far less than the 30 s lease: taken back, not reclaimed
        await wait_until(lambda: _count(core, keys, "effects", 3), what="own entries")
    assert worker.stats.reclaimed == 0


async def test_graceful_stop_lets_in_flight_finish(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix)
    for _ in range(4):
        await Producer(core, keys=keys, settings=settings).enqueue("slow", 0.5)
    async with running_worker(settings, core):
        await wait_until(lambda: _count(core, keys, "started", 4), what="four starts")
    # the block exits only after a graceful stop: all four finished and were acked
    assert len(await scratch_list(core, keys, "effects")) == 4
    assert await core.xlen(keys.inbox("slow")) == 0


async def test_stop_after_grace_releases_entries_to_others_at_once(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    slow = make_settings(
        core_url,
        keys.prefix,
        **{"worker.shutdown_grace_seconds": "0.2", "worker.lease_seconds": "60"},
    )
    producer = Producer(core, keys=keys, settings=slow)
    for _ in range(3):
        await producer.enqueue("slow", 30)
    async with running_worker(slow, core, "test:0"):
        await wait_until(lambda: _count(core, keys, "started", 3), what="three starts")
    assert await scratch_list(core, keys, "effects") == []  # cancelled, not waited for
    pending = await core.xpending_range(keys.inbox("slow"), "workers", "-", "+", 10)
    assert len(pending) == 3
    assert all(p["time_since_delivered"] >= 60_000 for p in pending)  # released: idle = lease
    assert all(p["times_delivered"] == 0 for p in pending)  # the cancelled try is not counted
    await core.delete(keys.scratch("started"))
    async with running_worker(slow, core, "test:1") as other:
        # within the wait's limit, not after another lease (60 s): released ones go at once
        await wait_until(lambda: _count(core, keys, "started", 3), what="the takeover")
        assert other.stats.reclaimed == 3


async def test_delayed_entries_run_when_due(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix)
    producer = Producer(core, keys=keys, settings=settings)
    sent = await producer.enqueue("echo", 1, delay=0.6)
    assert sent.entry_id is None and sent.run_at is not None
    due = sent.run_at
    assert await core.xlen(keys.inbox("echo")) == 0
    seen_at: list[float] = []

    async def ran() -> bool:
        # Redis's clock and the effects in one snapshot: an effect seen at a time before the
        # due time would have run early
        async with core.pipeline(transaction=True) as pipe:
            now, effects = await pipe.time().llen(keys.scratch("effects")).execute()
        if effects:
            seen_at.append(now[0] + now[1] / 1e6)
        return bool(effects)

    async with running_worker(settings, core):
        await wait_until(ran, what="the delayed run")
    assert seen_at[0] >= due
    assert await core.zcard(keys.delayed("echo")) == 0


async def test_expired_entries_are_not_run(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix)
    await Producer(core, keys=keys, settings=settings).enqueue(
        "echo", 1, deadline=time.time() + 0.2
    )
    await anyio.sleep(0.3)
    letters = DeadLetters(core, keys=keys)
    async with running_worker(settings, core):
        await wait_until(lambda: _size(letters, "echo", 1), what="the expired entry")
    assert (await letters.read("echo"))[0].reason == "expired"
    assert await scratch_list(core, keys, "effects") == []


async def test_idempotent_enqueue_under_concurrency(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    producer = producer_for(core, core_url, keys.prefix)
    results = []

    async def send() -> None:
        results.append(await producer.enqueue("echo", {"n": 1}, idempotency_key="order-17"))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(send)
    assert await core.xlen(keys.inbox("echo")) == 1
    assert len({r.task_id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    delayed = [
        await producer.enqueue("echo", 2, idempotency_key="later", delay=30) for _ in range(3)
    ]
    assert await core.zcard(keys.delayed("echo")) == 1
    assert [d.duplicate for d in delayed] == [False, True, True]


async def test_scripts_survive_script_flush(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix)
    producer = Producer(core, keys=keys, settings=settings)
    await producer.enqueue("echo", 1, idempotency_key="a")
    await core.script_flush()
    await producer.enqueue("echo", 2, idempotency_key="b")
    await producer.enqueue("flaky", 3)  # its retries run the RETRY script
    letters = DeadLetters(core, keys=keys)
    async with running_worker(settings, core):
        await core.script_flush()
        await wait_until(lambda: _size(letters, "flaky", 1), what="retries, then a dead letter")
        await wait_until(lambda: _count(core, keys, "effects", 2), what="both echoes")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.enqueue("bad name", 1), "target name 'bad name'"),
        (lambda p: p.enqueue("echo", object()), "is not JSON-serialisable"),
        (lambda p: p.enqueue("echo", "x" * 5000), "over streams.max_entry_bytes"),
        (lambda p: p.enqueue("echo", 1, delay=-1), "delay must be >= 0"),
        (lambda p: p.enqueue("echo", 1, delay=1, run_at=5), "either delay or run_at"),
        (lambda p: p.enqueue("echo", 1, deadline=1.0), "already past"),
        (lambda p: p.enqueue("echo", 1, idempotency_key="a b"), "idempotency key name"),
    ],
)
async def test_bad_enqueues_are_refused(
    core: redis.asyncio.Redis, core_url: str, keys: Keys, call: object, message: str
) -> None:
    from runtime import EnqueueError

    producer = producer_for(core, core_url, keys.prefix, **{"streams.max_entry_bytes": "4096"})
    with pytest.raises(EnqueueError, match=message):
        await call(producer)  # type: ignore[operator]
    assert await core.xlen(keys.inbox("echo")) == 0


async def test_published_by_hand_as_documented(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    """The wire-format page's example: any language can XADD a JSON envelope."""
    settings = make_settings(core_url, keys.prefix)
    page = (Path(__file__).parent.parent / "docs" / "wire-format.md").read_text()
    example = re.search(r"envelope \\\n  '(\{.*?\})'", page)
    assert example is not None, "the XADD example is gone from docs/wire-format.md"
    raw = example[1].replace('"send_receipt"', '"echo"').encode()
    await core.xadd(keys.inbox("echo"), {"envelope": raw})
    async with running_worker(settings, core):
        await wait_until(lambda: _count(core, keys, "effects", 1), what="the hand-made entry")
    assert await scratch_list(core, keys, "effects") == ["order-17-receipt"]
    decoded = msgspec.json.decode(raw, type=Envelope)
    assert decoded.attempt == 0 and decoded.payload == {"order": 17}
    assert b'"v"' not in encode_envelope(decoded)  # defaults are left out on the wire


async def test_dead_letter_stream_is_bounded(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix, **{"streams.dlq_maxlen": "100"})
    async with core.pipeline(transaction=False) as pipe:
        for n in range(1000):
            pipe.xadd(keys.inbox("echo"), {"junk": str(n)})
        await pipe.execute()
    async with running_worker(settings, core):
        await wait_until(lambda: _inbox_empty(core, keys, "echo"), what="an empty inbox")
    size = await core.xlen(keys.dlq("echo"))
    assert 100 <= size < 300  # MAXLEN ~ trims whole nodes: about the bound, never unbounded


async def test_handler_timeout_is_a_retryable_failure(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix, **{"worker.task_timeout_seconds": "0.2"})
    sent = await Producer(core, keys=keys, settings=settings).enqueue("slow", 5)
    letters = DeadLetters(core, keys=keys)
    async with running_worker(settings, core):
        await wait_until(lambda: _size(letters, "slow", 1), what="the timed-out entry")
    [letter] = await letters.read("slow")
    assert letter.reason == "failed" and letter.error == "timed out after 0.2 s"
    assert await scratch_list(core, keys, "started") == [sent.task_id] * 3
    assert await scratch_list(core, keys, "effects") == []


async def _answers(client: redis.asyncio.Redis) -> bool:
    """PING on a pool whose connections the restart broke: False until one answers."""
    try:
        return bool(await client.ping())
    except redis.exceptions.ConnectionError:
        return False


async def _counted(client: redis.asyncio.Redis, keys: Keys, n: int) -> bool:
    """Like _count, on a pool that may still hold connections the restart broke."""
    try:
        return await _count(client, keys, "effects", n)
    except redis.exceptions.ConnectionError:
        return False


async def test_worker_rides_out_a_redis_restart(tmp_path: Path, key_prefix: str) -> None:
    """Redis goes away for a second (with its AOF): the worker waits, then goes on."""
    import socket

    from runtime import EmbeddedRedis
    from tests.conftest import embedded_settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = EmbeddedRedis(embedded_settings(tmp_path, port=port))
    url = server.start().url
    keys = Keys(key_prefix)
    client = redis.asyncio.Redis.from_url(url)
    settings = make_settings(url, key_prefix)
    producer = Producer(client, keys=keys, settings=settings)
    try:
        async with running_worker(settings, client) as worker:
            first = await producer.enqueue("echo", 1)
            await wait_until(lambda: _count(client, keys, "effects", 1), what="the first run")
            await anyio.to_thread.run_sync(server.stop)
            await anyio.sleep(1.0)
            await anyio.to_thread.run_sync(server.start)
            await wait_until(lambda: _answers(client), what="the test's own client back")
            second = await producer.enqueue("echo", 2)
            await wait_until(lambda: _counted(client, keys, 2), limit=15, what="the second run")
            assert worker.stop_reason is None  # it never gave up
        assert await scratch_list(client, keys, "effects") == [first.task_id, second.task_id]
    finally:
        await client.aclose()
        server.stop()


async def test_a_handler_acks_its_entry_with_its_own_last_write(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix)
    producer = Producer(core, keys=keys, settings=settings)
    ok = await producer.enqueue("self_acking", False)
    async with running_worker(settings, core) as worker:
        await wait_until(lambda: _count(core, keys, "effects", 1), what="the effect")
        await wait_until(lambda: _xlen_is(core, keys.inbox("self_acking"), 0), what="the ack")
        assert worker.stats.succeeded == 1
        # queued but never sent (the handler raised first): retried as any failure
        failed = await producer.enqueue("self_acking", True)
        await wait_until(lambda: _count(core, keys, "effects", 2), what="the retried effect")
        await wait_until(lambda: _xlen_is(core, keys.inbox("self_acking"), 0), what="the ack")
        assert worker.stats.retried == 1 and worker.stats.succeeded == 2
    assert await scratch_list(core, keys, "effects") == [ok.task_id, failed.task_id]
    assert await scratch_list(core, keys, "started") == [ok.task_id, failed.task_id, failed.task_id]
    assert (await core.xpending(keys.inbox("self_acking"), "workers"))["pending"] == 0


async def test_an_entry_its_handler_acked_is_not_a_lost_lease_while_the_handler_ends(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    # the lease is renewed every 0.4 s while the handler, its entry acked, takes 1.5 s more
    settings = make_settings(core_url, keys.prefix, **{"worker.lease_seconds": "1.2"})
    producer = Producer(core, keys=keys, settings=settings)
    task = await producer.enqueue("acks_then_lingers", 1.5)
    async with running_worker(settings, core) as worker:
        await wait_until(lambda: _count(core, keys, "returned", 1), what="the handler's return")
        await wait_until(lambda: _succeeded(worker, 1), what="the success")
        assert worker.stats.lost_leases == 0
    assert await scratch_list(core, keys, "returned") == [task.task_id]
    assert (await core.xpending(keys.inbox("acks_then_lingers"), "workers"))["pending"] == 0


async def _succeeded(worker: Worker, n: int) -> bool:
    return bool(worker.stats.succeeded == n)


async def _xlen_is(client: redis.asyncio.Redis, stream: str, n: int) -> bool:
    return int(await client.xlen(stream)) == n
