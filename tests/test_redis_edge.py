"""The Redis adapter edge: connections, module detection and error translation."""

from __future__ import annotations

import functools
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
from runtime.redis import exercise_modules, require_modules
from runtime.redis.connection import run_pipeline
from tests.conftest import embedded_settings
from tests.helpers import kill_next_connection


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


def _queue_mixed(pipe: Any, keys: Keys, event: bytes = b"\x00\xffjson") -> None:
    """Commands of every reply shape the agent paths send, an error reply among them."""
    stream, record = keys.scratch("stream"), keys.scratch("record")
    pipe.hset(record, mapping={"status": "queued", "at": 1.5})
    pipe.expire(record, 60)
    pipe.xadd(stream, {"event": event}, maxlen=100, approximate=True)
    pipe.hmget(record, ["status", "missing"])
    pipe.eval("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}", 1, record, "é", 41)
    pipe.incr(record)  # WRONGTYPE: an error reply in the middle
    pipe.xread({stream: "0-0"}, count=10)
    pipe.execute_command("SCRIPT EXISTS", "0" * 40)  # a command name of two words


async def test_run_pipeline_replies_as_redis_py_does(redis_url: str) -> None:
    # bytes replies and replies decoded to str, in RESP3 (redis-py's default) and RESP2
    for decoded, protocol in itertools.product((False, True), (3, 2)):
        client = redis.asyncio.Redis.from_url(
            redis_url, decode_responses=decoded, protocol=protocol
        )
        try:
            await _compare_with_redis_py(client, "é json".encode() if decoded else None)
        finally:
            await client.aclose()


async def _compare_with_redis_py(client: redis.asyncio.Redis, event: bytes | None) -> None:
    ours, theirs = Keys(f"{uuid.uuid4().hex}-a"), Keys(f"{uuid.uuid4().hex}-b")
    mixed = functools.partial(_queue_mixed, event=event) if event else _queue_mixed
    async with client.pipeline(transaction=False) as pipe:
        mixed(pipe, ours)
        got = await run_pipeline(pipe, raise_on_error=False)
        assert pipe.command_stack == []
    async with client.pipeline(transaction=False) as pipe:
        mixed(pipe, theirs)
        want = await pipe.execute(raise_on_error=False)

    def same(reply: Any) -> Any:  # the keys and stream ids differ between the two runs
        if isinstance(reply, Exception):
            return (type(reply), str(reply))
        text = repr(reply).replace(ours.prefix, "P").replace(theirs.prefix, "P")
        return re.sub(r"\d{13}-\d+", "ID", text)

    assert [same(r) for r in got] == [same(r) for r in want]
    assert isinstance(got[5], redis.exceptions.ResponseError)
    async with client.pipeline(transaction=False) as pipe:  # the first error is raised
        mixed(pipe, ours)
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await run_pipeline(pipe)
    async with client.pipeline(transaction=False) as pipe:  # what hiredis cannot pack
        pipe.set(ours.scratch("x"), None)  # type: ignore[arg-type]
        with pytest.raises(redis.exceptions.DataError):  # redis-py's own error, as before
            await run_pipeline(pipe)


async def test_run_pipeline_times_out_and_drops_the_socket(redis_url: str) -> None:
    """A reply later than ``socket_timeout`` raises redis-py's TimeoutError, and the late
    reply is never read as the answer to a later command."""
    keys = Keys(uuid.uuid4().hex)
    slow = redis.asyncio.Redis.from_url(redis_url, socket_timeout=0.05)
    try:
        async with slow.pipeline(transaction=False) as pipe:
            pipe.set(keys.scratch("x"), "1")
            pipe.blpop([keys.scratch("empty")], 1)  # the server holds this reply for 1 s
            with pytest.raises(redis.exceptions.TimeoutError):
                await run_pipeline(pipe)
        await anyio.sleep(1.1)  # the BLPOP's nil reply has been sent by now
        async with slow.pipeline(transaction=False) as pipe:
            pipe.get(keys.scratch("x"))
            pipe.incr(keys.scratch("n"))
            assert await run_pipeline(pipe) == [b"1", 1]
        await slow.delete(keys.scratch("x"), keys.scratch("n"))
    finally:
        await slow.aclose()


async def test_run_pipeline_resends_only_when_asked(redis_url: str) -> None:
    """A connection that died in the pool: sent again with *resend* (under the client's retry
    policy, as redis-py does), the error raised without."""
    keys = Keys(uuid.uuid4().hex)
    client = redis.asyncio.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 1))
    try:
        for resend in (False, True):
            await kill_next_connection(client)
            async with client.pipeline(transaction=False) as pipe:
                pipe.incr(keys.scratch("counter"))
                if resend:
                    assert await run_pipeline(pipe, resend=True) == [1]
                else:
                    with pytest.raises(redis.exceptions.ConnectionError):
                        await run_pipeline(pipe)
        assert await client.get(keys.scratch("counter")) == b"1"
        await client.delete(keys.scratch("counter"))
    finally:
        await client.aclose()
