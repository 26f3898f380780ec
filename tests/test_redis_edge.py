"""The Redis adapter edge: connections, module detection and error translation."""

from __future__ import annotations

import itertools
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from runtime import (
    EmbeddedRedis,
    Keys,
    MissingModuleError,
    RedisCommandError,
    RedisConnectionError,
    RedisTimeoutError,
    Settings,
    load_settings,
    open_redis,
    read_server_info,
    translate_errors,
)
from runtime.redis import create_client, exercise_modules, require_modules
from runtime.redis.connection import Batch, first_error, run_batch
from tests.conftest import embedded_settings
from tests.helpers import kill_next_connection, wait_until


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_session_server_has_every_module(client: redis.asyncio.Redis, keys: Keys) -> None:
    info = await read_server_info(client)
    assert set(info.modules) == {"search", "json", "timeseries", "bloom"}
    assert all(version > 0 for version in info.modules.values())
    checks = await exercise_modules(client, keys, info)
    assert [(c.module, c.ok) for c in checks] == [
        ("search", True),
        ("json", True),
        ("timeseries", True),
        ("bloom", True),
    ], checks
    leftovers = [key async for key in client.scan_iter(match=f"{keys.prefix}:*")]
    assert leftovers == []  # the checks clean up after themselves


async def test_open_redis_with_url_starts_no_server(settings: Settings, tmp_path: Path) -> None:
    data_dir = tmp_path / "never"
    with_dir = load_settings(
        env={},
        overrides={
            "redis.url": settings.redis.url,
            "redis.embedded.data_dir": str(data_dir),
        },
    )
    async with open_redis(with_dir) as conn:
        assert conn.embedded is None and not conn.started_embedded
        assert conn.url == settings.redis.url
        assert await conn.client.ping() is True
    assert not data_dir.exists()


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[str]:
    server = EmbeddedRedis(embedded_settings(tmp_path, modules=[], appendonly=False))
    try:
        yield server.start().url
    finally:
        server.stop()


async def test_plain_redis_reports_missing_modules(plain_server: str, keys: Keys) -> None:
    client = redis.asyncio.Redis.from_url(plain_server)
    try:
        info = await read_server_info(client)
        assert info.modules == {}
        with pytest.raises(MissingModuleError) as err:
            require_modules(info, ["timeseries"], "metrics")
        assert "metrics needs the Redis module 'timeseries'" in str(err.value)
        with pytest.raises(MissingModuleError, match="'search'"), translate_errors("search"):
            await client.execute_command("FT.SEARCH", "idx", "*")
        checks = await exercise_modules(client, keys, info)
        assert [c.ok for c in checks] == [False] * 4
        assert {c.detail for c in checks} == {"not loaded by this server"}
    finally:
        await client.aclose()


async def test_open_redis_starts_and_stops_embedded(tmp_path: Path) -> None:
    settings = load_settings(
        env={},
        overrides={
            "redis.embedded.data_dir": str(tmp_path),
            "redis.embedded.openssl_dir": embedded_settings(tmp_path).openssl_dir,
        },
    )
    async with open_redis(settings) as conn:
        assert conn.started_embedded
        assert await conn.client.ping() is True
    assert EmbeddedRedis(settings.redis.embedded).status() is None


async def test_connection_refused_is_translated_and_redacted() -> None:
    url = f"redis://user:topsecret@127.0.0.1:{closed_port()}/0"
    settings = load_settings(env={}, overrides={"redis.url": url, "redis.connect_timeout": "1"})
    with pytest.raises(RedisConnectionError) as err:
        async with open_redis(settings):
            pass
    assert "connect: cannot reach Redis at redis://user:***@127.0.0.1" in str(err.value)
    assert "topsecret" not in str(err.value)
    assert err.value.__cause__ is not None


async def test_timeout_is_translated(redis_url: str, keys: Keys) -> None:
    slow = redis.asyncio.Redis.from_url(redis_url, socket_timeout=0.05)
    try:
        with (
            pytest.raises(RedisTimeoutError, match="did not answer in time"),
            translate_errors("slow command", redis_url),
        ):
            # the server holds the reply for 1 s, longer than the client waits
            await slow.execute_command("BLPOP", keys.scratch("empty"), 1)
    finally:
        await slow.aclose()


async def test_refused_command_is_translated(client: redis.asyncio.Redis, keys: Keys) -> None:
    key = keys.scratch("wrongtype")
    await client.set(key, "text")
    with pytest.raises(RedisCommandError, match="WRONGTYPE"), translate_errors("push"):
        await client.lpush(key, "x")


async def test_plain_server_of_the_core_tests(plain_redis_url: str) -> None:
    """The core tests' second server: Redis ≥ 7 with no module at all."""
    client = redis.asyncio.Redis.from_url(plain_redis_url)
    try:
        info = await read_server_info(client)
    finally:
        await client.aclose()
    assert info.modules == {}
    assert int(info.version.split(".")[0]) >= 7


def _queue_every_kind(pipe: Any, keys: Keys) -> None:
    """Every command and argument form the agent paths queue, through the Batch methods."""
    stream, record = keys.scratch("stream"), keys.scratch("record")
    pipe.hset(record, mapping={"status": "queued", "at": 1.5})
    pipe.hset(record, "enqueued", 1)
    pipe.hset(record, items=["worker", "w-1", "n", 7])
    pipe.expire(record, 60)
    pipe.xadd(stream, {"event": b"\x00\xffjson"}, maxlen=100, approximate=True)
    pipe.xadd(stream, {"event": "é"}, maxlen=100, approximate=False)
    pipe.xadd(stream, {"event": "x"})
    pipe.hmget(record, ["status", "missing"])
    pipe.eval("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}", 1, record, "é", 41)
    pipe.xread({stream: "0-0"}, count=10)
    pipe.xread({stream: "0-0", keys.scratch("other"): "0-0"}, count=1, block=5)
    pipe.xack(stream, "group", "1-0", "2-0")
    pipe.xdel(stream, "1-0")


async def test_a_batch_sends_what_redis_py_would(client: redis.asyncio.Redis) -> None:
    keys = Keys(uuid.uuid4().hex)
    batch = Batch()
    _queue_every_kind(batch, keys)
    async with client.pipeline(transaction=False) as pipe:
        _queue_every_kind(pipe, keys)
        theirs = [args for args, _ in pipe.command_stack]

    def wire(args: tuple[Any, ...]) -> list[bytes]:  # as the server reads them
        return [a if isinstance(a, bytes) else str(a).encode() for a in args]

    assert [wire(args) for args in batch.commands] == [wire(args) for args in theirs]


async def test_run_batch_returns_the_replies_as_redis_sent_them(redis_url: str) -> None:
    # in RESP3 (redis-py's default) and RESP2, strings as bytes even where the client
    # decodes its replies
    for decoded, protocol in itertools.product((False, True), (3, 2)):
        client = redis.asyncio.Redis.from_url(
            redis_url, decode_responses=decoded, protocol=protocol
        )
        try:
            await _raw_replies(client, protocol)
        finally:
            await client.aclose()


async def _raw_replies(client: redis.asyncio.Redis, protocol: int) -> None:
    def text(value: str) -> bytes:
        return value.encode()

    keys = Keys(uuid.uuid4().hex)
    stream, record = keys.scratch("stream"), keys.scratch("record")
    batch = Batch()
    batch.hset(record, mapping={"status": "queued", "at": 1.5})
    batch.expire(record, 60)
    batch.xadd(stream, {"event": "é json"}, maxlen=100, approximate=True)
    batch.hmget(record, ["status", "missing"])
    batch.eval("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}", 1, record, "é", 41)
    batch.execute_command("INCR", record)  # WRONGTYPE: an error reply in the middle
    batch.xread({stream: "0-0"}, count=10)
    replies = await run_batch(client, batch)
    assert batch.commands == []
    added, wrongtype, read = replies[2], replies[5], replies[6]
    assert replies[:2] == [2, 1] and replies[3] == [text("queued"), None]
    assert isinstance(added, bytes) and re.fullmatch(rb"\d+-0", added)
    assert replies[4] == [text(record), text("é"), 42]
    assert isinstance(wrongtype, redis.exceptions.ResponseError)
    assert "WRONGTYPE" in str(wrongtype)
    entries = [[added, [text("event"), text("é json")]]]
    assert read == ({text(stream): entries} if protocol == 3 else [[text(stream), entries]])
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        first_error(replies)
    batch.execute_command("SET", record, None)  # what hiredis cannot pack: redis-py's error
    with pytest.raises(redis.exceptions.DataError, match="cannot send a command"):
        await run_batch(client, batch)
    await client.delete(stream, record)


async def test_run_batch_times_out_and_drops_the_socket(redis_url: str) -> None:
    """A reply later than ``socket_timeout`` raises redis-py's TimeoutError, and the late
    reply is never read as the answer to a later command."""
    keys = Keys(uuid.uuid4().hex)
    slow = redis.asyncio.Redis.from_url(redis_url, socket_timeout=0.05)
    try:
        batch = Batch()
        batch.execute_command("SET", keys.scratch("x"), "1")
        batch.execute_command("BLPOP", keys.scratch("empty"), 1)  # held for 1 s
        with pytest.raises(redis.exceptions.TimeoutError):
            await run_batch(slow, batch)
        await anyio.sleep(1.1)  # the BLPOP's nil reply has been sent by now
        batch.execute_command("GET", keys.scratch("x"))
        batch.execute_command("INCR", keys.scratch("n"))
        assert await run_batch(slow, batch) == [b"1", 1]
        await slow.delete(keys.scratch("x"), keys.scratch("n"))
    finally:
        await slow.aclose()


async def test_run_batch_resends_only_when_asked(redis_url: str) -> None:
    """A connection that died in the pool: sent again with *resend* (under the client's retry
    policy, as redis-py does), the error raised without."""
    keys = Keys(uuid.uuid4().hex)
    client = redis.asyncio.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 1))
    try:
        for resend in (False, True):
            await kill_next_connection(client)
            batch = Batch()
            batch.execute_command("INCR", keys.scratch("counter"))
            if resend:
                assert await run_batch(client, batch, resend=True) == [1]
            else:
                with pytest.raises(redis.exceptions.ConnectionError):
                    await run_batch(client, batch)
        assert await client.get(keys.scratch("counter")) == b"1"
        await client.delete(keys.scratch("counter"))
    finally:
        await client.aclose()


async def test_a_full_pool_waits_then_says_it_is_full(
    client: redis.asyncio.Redis, redis_url: str, keys: Keys
) -> None:
    """The runtime's client waits up to ``redis.connect_timeout`` for a pooled connection,
    then says the pool is full, not that Redis cannot be reached; a plain redis-py client's
    full pool is named the same way."""
    settings = load_settings(
        env={},
        overrides={"redis.max_connections": "1", "redis.connect_timeout": "0.2"},
    )
    own = create_client(settings.redis, redis_url)
    plain = redis.asyncio.Redis.from_url(redis_url, max_connections=1)
    try:
        for full in (own, plain):
            async with anyio.create_task_group() as tg:
                # the one connection is taken by a read the server holds for 2 s
                tg.start_soon(full.blpop, [keys.scratch("empty")], 2)
                await wait_until(lambda: _blocked(client), what="the pool's one connection taken")
                with pytest.raises(RedisConnectionError) as err, translate_errors("get"):
                    await full.get(keys.scratch("x"))
                assert "connection pool is full (redis.max_connections" in str(err.value)
                assert "cannot reach" not in str(err.value)
                tg.cancel_scope.cancel()
    finally:
        await own.aclose()
        await plain.aclose()
    # a free connection is waited for: the command goes through once one is released
    patient = load_settings(env={}, overrides={"redis.max_connections": "1"})  # waits 5 s
    own = create_client(patient.redis, redis_url)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(own.blpop, [keys.scratch("empty")], 0.1)
            await wait_until(lambda: _blocked(client), what="the pool's one connection taken")
            assert await own.get(keys.scratch("x")) is None
    finally:
        await own.aclose()


async def _blocked(client: redis.asyncio.Redis) -> bool:
    """A client of the server is blocked in a read (the tests of a session run one by one)."""
    return int((await client.info("clients"))["blocked_clients"]) > 0


async def test_run_batch_resends_after_a_timeout_only_when_asked(redis_url: str) -> None:
    """A reply later than ``socket_timeout``: with *resend* the batch is sent again as the
    connection's retry policy says (one retry here: INCR runs twice), without it once. (The
    same on redis-py 5.2.1, whose pool also replaces a dead idle connection by itself.)"""
    for resend, runs in ((False, b"1"), (True, b"2")):
        key = Keys(uuid.uuid4().hex).scratch("counter")
        slow = redis.asyncio.Redis.from_url(
            redis_url, socket_timeout=0.1, retry=Retry(NoBackoff(), 1)
        )
        try:
            batch = Batch()
            batch.execute_command("INCR", key)
            batch.execute_command("BLPOP", key + "-empty", 1)  # held for 1 s
            with pytest.raises(redis.exceptions.TimeoutError):
                await run_batch(slow, batch, resend=resend)
            batch.execute_command("GET", key)
            batch.execute_command("DEL", key)
            assert await run_batch(slow, batch) == [runs, 1]
        finally:
            await slow.aclose()
