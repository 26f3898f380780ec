"""Shared fixtures: one real Redis for the session, a unique key prefix per test.

The server is ``$AGENTS_WORKER_TEST_REDIS_URL`` when set, else an embedded Redis Stack started
in a temporary folder for the session and stopped at its end. Tests never FLUSHALL: each gets
its own prefix, and the keys under it are deleted afterwards.
"""

from __future__ import annotations

import inspect
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from runtime import EmbeddedRedis, EmbeddedRedisSettings, Keys, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
# OpenSSL 1.1 for the bundled server, fetched once by scripts/bootstrap and shared by tests.
OPENSSL_DIR = str(ROOT / ".agents-worker" / "openssl")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every ``async def`` test on asyncio through anyio's pytest plugin."""
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.add_marker(pytest.mark.anyio)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def embedded_settings(data_dir: Path, **changes: object) -> EmbeddedRedisSettings:
    """Settings of an embedded server of a test's own, in *data_dir*."""
    values: dict[str, object] = {"data_dir": str(data_dir), "openssl_dir": OPENSSL_DIR}
    values.update(changes)
    return EmbeddedRedisSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the session's Redis Stack server."""
    given = os.environ.get("AGENTS_WORKER_TEST_REDIS_URL")
    if given:
        yield given
        return
    server = EmbeddedRedis(embedded_settings(tmp_path_factory.mktemp("redis"), appendonly=False))
    status = server.start()
    try:
        yield status.url
    finally:
        server.stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AGENTS_WORKER_* / REDIS_URL from the caller's environment; cwd is a temp folder."""
    for name in list(os.environ):
        if name.startswith("AGENTS_WORKER_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def key_prefix() -> str:
    return f"awtest:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    return Keys(key_prefix)


@pytest.fixture
def settings(redis_url: str, key_prefix: str) -> Settings:
    """Settings pointing at the session server with this test's key prefix."""
    return load_settings(env={}, overrides={"redis.url": redis_url, "redis.key_prefix": key_prefix})


@pytest.fixture
async def client(redis_url: str, key_prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the session server; deletes this test's keys afterwards."""
    conn = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield conn
    finally:
        async for key in conn.scan_iter(match=f"{key_prefix}:*", count=1000):
            await conn.unlink(key)
        await conn.aclose()


PLAIN_BINARY = "/usr/bin/redis-server"  # Debian's package: Redis 7.0 without modules


@pytest.fixture(scope="session")
def plain_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis without modules: Debian's redis-server when installed, else the bundled one."""
    binary = PLAIN_BINARY if Path(PLAIN_BINARY).is_file() else None
    server = EmbeddedRedis(
        embedded_settings(
            tmp_path_factory.mktemp("plain"), modules=[], appendonly=False, server_binary=binary
        )
    )
    status = server.start()
    try:
        yield status.url
    finally:
        server.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def own_redis(data_dir: Path, **changes: object) -> EmbeddedRedis:
    """A plain Redis of a test's own (Debian's when installed, else the bundled one without
    modules) on a free port, for tests that fill, flush, stop or restart their server."""
    binary = PLAIN_BINARY if Path(PLAIN_BINARY).is_file() else None
    values: dict[str, object] = {"port": free_port(), "modules": [], "server_binary": binary}
    values.update(changes)
    return EmbeddedRedis(embedded_settings(data_dir, **values))


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, str]]:
    """A started :func:`own_redis` (no append-only file) and its URL; stopped afterwards."""
    server = own_redis(tmp_path / "redis", appendonly=False, startup_timeout=120)
    url = server.start().url
    try:
        yield server, url
    finally:
        server.stop()


@pytest.fixture(params=["stack", "plain"])
def core_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The stream core runs on Redis Stack and on a plain Redis ≥ 7 alike."""
    if request.param == "stack":
        return redis_url
    return str(request.getfixturevalue("plain_redis_url"))


# Short timings so crash and lease tests finish in seconds.
FAST = {
    "worker.lease_seconds": "1",
    "worker.reclaim_interval_seconds": "0.1",
    "worker.retry_backoff_seconds": "0.01",
    "worker.retry_backoff_max_seconds": "0.05",
    "worker.block_ms": "200",
    "worker.max_deliveries": "3",
    "worker.concurrency": "8",
    "worker.shutdown_grace_seconds": "5",
}


def make_settings(url: str, prefix: str, **overrides: object) -> Settings:
    """Settings for *url* and *prefix* with the FAST timings and *overrides* (dotted → value)."""
    values: dict[str, object] = {"redis.url": url, "redis.key_prefix": prefix, **FAST}
    values.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_settings(env={}, overrides=values)
