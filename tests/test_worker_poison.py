"""Entries that cannot run: every decode failure and every size is dead-lettered once, with a
bare reason code and its detail, and the worker goes on (issue 10, items 13, 17 and 19)."""

from __future__ import annotations

import pytest
import redis.asyncio

from runtime import EnqueueError, Keys
from runtime.dlq import DeadLetters
from runtime.envelope import Envelope, encode_envelope
from runtime.producer import Producer
from runtime.worker.outcome import MAX_COPIED_FIELDS, PREVIEW_BYTES
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


DEEP = b'{"id":"deep","target":"echo","payload":' + b"[" * 1000 + b"]" * 1000 + b"}"

POISON = {
    "deep": (DEEP, "cannot be decoded: RecursionError"),
    "attempt -30": (
        b'{"id":"neg","target":"echo","attempt":-30}',
        "attempt -30 is outside 0..3 (worker.max_deliveries)",
    ),
    "attempt 10**9": (
        b'{"id":"big","target":"echo","attempt":1000000000}',
        "attempt 1000000000 is outside 0..3",
    ),
    "not UTF-8": (b'{"id":"\xff\xfe","target":"echo"}', "invalid JSON"),
    "not UTF-8 at all": (b"\xff\xfe\xfd\x00", "invalid JSON"),
}


async def _dead(letters: DeadLetters, target: str, n: int) -> bool:
    return await letters.size(target) >= n


async def _effects(client: redis.asyncio.Redis, keys: Keys, n: int) -> bool:
    return int(await client.llen(keys.scratch("effects"))) >= n


async def test_every_undecodable_entry_is_dead_lettered_once_and_the_worker_goes_on(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix)  # max_deliveries 3
    assert len(DEEP) < 2100  # a 2 KB envelope
    for raw, _ in POISON.values():
        await core.xadd(keys.inbox("echo"), {"envelope": raw})
    letters = DeadLetters(core, keys=keys)
    async with running_worker(settings, core) as worker:
        await wait_until(lambda: _dead(letters, "echo", len(POISON)), what="the dead letters")
        good = await Producer(core, keys=keys, settings=settings).enqueue("echo", 1)
        await wait_until(lambda: _effects(core, keys, 1), what="a good entry after them")
        assert worker.stop_reason is None
    found = await letters.read("echo")
    assert len(found) == len(POISON)  # each once
    details = sorted(letter.detail for letter in found)
    for _, expected in POISON.values():
        assert any(d.startswith(expected) for d in details), (expected, details)
    for letter in found:
        assert letter.reason == "malformed"
        assert letter.task_id == ""  # unknown: the envelope could not be read
        assert letter.attempts == letter.deliveries == 1
    assert await scratch_list(core, keys, "effects") == [good.task_id]
    assert await core.xlen(keys.inbox("echo")) == 0
    assert (await core.xpending(keys.inbox("echo"), "workers"))["pending"] == 0


async def test_deliveries_are_counted_before_decoding(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    """Entries delivered max_deliveries times already (their workers died) are dead-lettered
    at the next delivery without running, whether they decode or not."""
    settings = make_settings(core_url, keys.prefix)  # max_deliveries 3
    inbox = keys.inbox("echo")
    good = Envelope(id="worn", target="echo", payload=1)
    await core.xadd(inbox, {"envelope": encode_envelope(good)})
    await core.xadd(inbox, {"envelope": DEEP})
    await core.xgroup_create(inbox, "workers", id="0", mkstream=True)
    taken = await core.xreadgroup("workers", "dead-host:1", {inbox: ">"}, count=10)
    ids = [entry_id for entry_id, _ in taken[0][1]]
    # three deliveries that ended with their worker, and the lease long expired
    await core.xclaim(inbox, "workers", "dead-host:1", 0, ids, idle=60_000, retrycount=3)
    letters = DeadLetters(core, keys=keys)
    async with running_worker(settings, core):
        await wait_until(lambda: _dead(letters, "echo", 2), what="both dead letters")
    by_task = {letter.task_id: letter for letter in await letters.read("echo")}
    worn = by_task["worn"]
    assert worn.reason == "max_deliveries" and worn.deliveries == 4 and worn.attempts == 4
    assert worn.detail.startswith("delivered 4 times without an outcome")
    assert worn.error == "the worker running it died or hung"
    assert by_task[""].reason == "malformed" and by_task[""].deliveries == 4
    assert await scratch_list(core, keys, "effects") == []  # neither ran


async def test_an_oversized_entry_is_dead_lettered_with_a_bounded_preview(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    settings = make_settings(core_url, keys.prefix)  # max_entry_bytes 1 MiB
    huge = encode_envelope(Envelope(id="huge", target="echo", payload="x" * 10_000_000))
    await core.xadd(keys.inbox("echo"), {"envelope": huge})
    # a malformed entry with many large fields: each is cut, and only so many are copied
    await core.xadd(keys.inbox("echo"), {f"junk{n}": b"y" * 50_000 for n in range(100)})
    letters = DeadLetters(core, keys=keys)
    async with running_worker(settings, core):
        await wait_until(lambda: _dead(letters, "echo", 2), what="both dead letters")
    by_reason = {letter.reason: letter for letter in await letters.read("echo")}
    oversized, junk = by_reason["oversized"], by_reason["malformed"]
    assert oversized.reason == "oversized"
    assert oversized.detail == f"{len(huge)} bytes, over streams.max_entry_bytes (1048576)"
    assert oversized.envelope is not None
    assert oversized.envelope == huge[:PREVIEW_BYTES] + f"… ({len(huge) - 1024} bytes cut)".encode()
    assert oversized.extra["envelope_bytes"] == str(len(huge))
    assert junk.reason == "malformed"
    copied = [name for name in junk.extra if name.startswith("junk") and "_" not in name]
    assert len(copied) == MAX_COPIED_FIELDS and junk.extra["fields_cut"] == "68"
    assert all(len(junk.extra[name]) < PREVIEW_BYTES + 40 for name in copied)
    raw = await core.xrange(keys.dlq("echo"))
    assert sum(len(k) + len(v) for _, fields in raw for k, v in fields.items()) < 100_000


@pytest.mark.parametrize(
    "enqueue",
    [
        lambda p, big: p.enqueue("echo", big),
        lambda p, big: p.enqueue("echo", big, delay=5),
        lambda p, big: p.enqueue("echo", big, idempotency_key="k1"),
        lambda p, big: p.enqueue_many("echo", [1, big]),
    ],
)
async def test_the_producer_refuses_an_oversized_envelope_before_sending_anything(
    core: redis.asyncio.Redis, core_url: str, keys: Keys, enqueue: object
) -> None:
    settings = make_settings(core_url, keys.prefix, **{"streams.max_entry_bytes": "4096"})
    producer = Producer(core, keys=keys, settings=settings)
    with pytest.raises(EnqueueError, match=r"entry for 'echo' is \d+ bytes, over streams"):
        await enqueue(producer, "x" * 5000)  # type: ignore[operator]
    assert await core.xlen(keys.inbox("echo")) == 0
    assert await core.zcard(keys.delayed("echo")) == 0
    assert not await core.exists(keys.idempotency("echo", "k1"))


async def test_a_dead_letter_hook_hears_the_reason_code_and_the_detail(
    core: redis.asyncio.Redis, core_url: str, keys: Keys
) -> None:
    from runtime import App
    from runtime.app import DeadLetterContext, TaskContext

    heard: list[tuple[str, str, str | None]] = []

    async def hook(info: DeadLetterContext) -> None:
        heard.append((info.reason, info.detail, info.error))

    async def fails(ctx: TaskContext, payload: object) -> None:
        raise RuntimeError("no")

    app = App("hooks")
    app.add_handler("fails", fails, on_dead_letter=hook)
    settings = make_settings(core_url, keys.prefix)
    await Producer(core, keys=keys, settings=settings).enqueue("fails", 1)
    async with running_worker(settings, core, serving=app):
        await wait_until(lambda: _nonempty(heard), what="the hook")
    assert heard == [("failed", "failed 3 times (worker.max_deliveries = 3)", "RuntimeError: no")]


async def _nonempty(items: list[object]) -> bool:
    return bool(items)
