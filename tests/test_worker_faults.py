"""Redis faults never stop a worker (issue 10, item 5): a full Redis pauses it and work goes on
when memory is freed; a flushed script cache reloads, however often it is flushed; a restart
that loads a large AOF (LOADING) is ridden out. Each on a Redis server of the test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import redis.asyncio
import redis.exceptions

from runtime import App, EmbeddedRedis, Keys, Settings
from runtime.app import TaskContext
from runtime.errors import RetryLater
from runtime.producer import Producer
from runtime.worker import Worker
from runtime.worker.faults import Faults, backoff, classify
from tests.conftest import make_settings, own_redis
from tests.helpers import scratch_list, wait_until

pytestmark = pytest.mark.anyio

app = App("faults")


@app.task("record")
async def record(ctx: TaskContext, seconds: float) -> None:
    """Writes its effect (a write Redis refuses when out of memory) after *seconds*."""
    await anyio.sleep(seconds)
    await ctx.redis.rpush(ctx.keys.scratch("effects"), ctx.task_id)


@app.task("fails_once")
async def fails_once(ctx: TaskContext, payload: object) -> None:
    """Fails its first attempt (a retry through the delayed set), then writes its effect."""
    if ctx.attempt == 0:
        raise RetryLater("first try", delay=0.01)
    await ctx.redis.rpush(ctx.keys.scratch("effects"), ctx.task_id)


# --- classification and episodes ----------------------------------------------------------
E = redis.exceptions


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (E.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "OOM"),
        (E.ReadOnlyError("You can't write against a read only replica."), "READONLY"),
        (E.BusyLoadingError("Redis is loading the dataset in memory"), "LOADING"),
        (E.ResponseError("MISCONF Redis is configured to save RDB snapshots, but…"), "MISCONF"),
        (E.ResponseError("BUSY Redis is busy running a script."), "BUSY"),
        (E.MasterDownError("Link with MASTER is down"), "MASTERDOWN"),
        (E.ResponseError("MASTERDOWN Link with MASTER is down"), "MASTERDOWN"),
        (E.TryAgainError("Multiple keys request during rehashing of slot"), "TRYAGAIN"),
        (E.ClusterDownError("The cluster is down"), "CLUSTERDOWN"),
        (E.ResponseError("NOREPLICAS Not enough good replicas to write."), "NOREPLICAS"),
        (E.ResponseError("UNBLOCKED force unblock from blocking operation"), "UNBLOCKED"),
        (E.NoScriptError("No matching script."), "NOSCRIPT"),
        (E.ConnectionError("Connection refused"), "UNREACHABLE"),
        (E.TimeoutError("Timeout reading"), "UNREACHABLE"),
        (E.ResponseError("BUSYGROUP Consumer Group name already exists"), None),
        (E.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), None),
        (E.ResponseError("ERR unknown command 'FOO'"), None),
        (ValueError("not Redis"), None),
    ],
)
def test_redis_faults_are_told_from_other_refusals(exc: Exception, kind: str | None) -> None:
    assert classify(exc) == kind


def test_a_fault_episode_is_reported_once_and_ends_when_every_caller_succeeded() -> None:
    heard: list[str | None] = []
    faults = Faults(heard.append)
    oom = E.OutOfMemoryError("command not allowed")
    faults.failed("outcome 1-1", oom, "OOM")
    faults.failed("outcome 1-2", oom, "OOM")
    faults.failed("outcome 1-1", oom, "OOM")
    faults.succeeded("read")  # reads work on a full Redis: the episode goes on
    faults.succeeded("outcome 1-1")
    assert heard == ["redis OOM: out of memory (maxmemory reached)"]
    assert faults.reason == heard[0]
    faults.succeeded("outcome 1-2")
    assert heard == ["redis OOM: out of memory (maxmemory reached)", None]
    assert faults.reason is None
    faults.failed("read", E.ConnectionError("refused"), "UNREACHABLE")
    faults.failed("read", E.BusyLoadingError("loading"), "LOADING")  # the restart goes on
    faults.forget("read")
    assert heard[2:] == [
        "redis UNREACHABLE: unreachable (connection refused, lost or timed out)",
        "redis LOADING: loading its data set",
        None,
    ]


def test_backoff_grows_with_jitter_up_to_a_cap() -> None:
    assert 0.05 <= backoff(0) <= 0.1
    assert all(2.5 <= backoff(n) <= 5.0 for n in (6, 10, 100, 10_000))
    assert len({backoff(3) for _ in range(20)}) > 1  # jitter: a fleet does not retry in step


@asynccontextmanager
async def serving(
    settings: Settings, client: redis.asyncio.Redis, heard: list[str | None]
) -> AsyncIterator[Worker]:
    worker = Worker(app, settings, client, consumer="faults:0", on_fault=heard.append)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            worker.stop()


async def _effects(client: redis.asyncio.Redis, keys: Keys, n: int) -> bool:
    try:
        return int(await client.llen(keys.scratch("effects"))) >= n
    except redis.exceptions.ConnectionError:  # the test's own pool, across a restart
        return False


async def _heard(heard: list[str | None], what: str | None) -> bool:
    return any(h == what if what is None else (h is not None and what in h) for h in heard)


# --- out of memory -------------------------------------------------------------------------
async def test_a_full_redis_pauses_the_worker_and_work_resumes_when_memory_is_freed(
    own_server: tuple[EmbeddedRedis, str], key_prefix: str
) -> None:
    _, url = own_server
    keys = Keys(key_prefix)
    settings = make_settings(url, key_prefix, **{"worker.concurrency": "4"})
    client = redis.asyncio.Redis.from_url(url)
    sent = await Producer(client, keys=keys, settings=settings).enqueue_many("record", [0] * 12)
    # (a group cannot be created on a full Redis: a worker then waits for memory to start)
    await client.xgroup_create(keys.inbox("fails_once"), "workers", mkstream=True)
    await client.xgroup_create(keys.inbox("record"), "workers", id="0")
    # fill memory: maxmemory 2 MB over what is used, then a 4 MB value (noeviction)
    used = int((await client.info("memory"))["used_memory"])
    await client.set("filler", b"x" * 4_000_000)
    await client.config_set("maxmemory", str(used + 2_000_000))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        await client.rpush("probe", 1)
    heard: list[str | None] = []
    try:
        async with serving(settings, client, heard) as worker:
            await wait_until(lambda: _heard(heard, "OOM"), what="the fault reported")
            assert worker.fault == "redis OOM: out of memory (maxmemory reached)"
            assert await client.llen(keys.scratch("effects")) == 0
            await client.delete("filler")
            await client.config_set("maxmemory", "0")
            await wait_until(lambda: _effects(client, keys, 12), what="every entry")
            await wait_until(lambda: _heard(heard, None), what="the recovery reported")
            assert worker.stop_reason is None and worker.fault is None
        effects = await scratch_list(client, keys, "effects")
        assert sorted(effects) == sorted(s.task_id for s in sent)  # none lost, none twice
        assert heard == ["redis OOM: out of memory (maxmemory reached)", None]  # one episode
        assert worker.stats.dead_lettered == 0
    finally:
        await client.aclose()


# --- SCRIPT FLUSH --------------------------------------------------------------------------
async def test_scripts_reload_however_often_the_script_cache_is_flushed(
    own_server: tuple[EmbeddedRedis, str], key_prefix: str
) -> None:
    _, url = own_server
    keys = Keys(key_prefix)
    settings = make_settings(url, key_prefix)
    client = redis.asyncio.Redis.from_url(url)
    producer = Producer(client, keys=keys, settings=settings)
    heard: list[str | None] = []
    stop_flushing = anyio.Event()

    async def flush_again_and_again() -> None:
        async with redis.asyncio.Redis.from_url(url) as flusher:
            while not stop_flushing.is_set():
                await flusher.script_flush()
                await anyio.sleep(0.002)

    try:
        async with anyio.create_task_group() as tg, serving(settings, client, heard) as worker:
            tg.start_soon(flush_again_and_again)
            ids = [s.task_id for s in await producer.enqueue_many("record", [0] * 150)]
            for n in range(50):  # the ENQUEUE script (idempotent) and RETRY + MOVE_DUE
                sent = await producer.enqueue("fails_once", n, idempotency_key=f"k{n}")
                ids.append(sent.task_id)
            await wait_until(lambda: _effects(client, keys, 200), limit=30, what="every entry")
            stop_flushing.set()
            assert worker.stop_reason is None
        effects = await scratch_list(client, keys, "effects")
        assert sorted(effects) == sorted(ids)
    finally:
        await client.aclose()


# --- a restart that loads a large AOF --------------------------------------------------------
# ARGV: key prefix, count. Writes count keys of 100 bytes (each SET goes to the AOF).
_POPULATE = """
local value = string.rep('x', 100)
for i = 1, tonumber(ARGV[2]) do
  redis.call('SET', ARGV[1] .. ':' .. i, value)
end
return 1
"""


@pytest.mark.slow
async def test_a_restart_that_loads_a_large_aof_is_ridden_out(
    tmp_path: Path, key_prefix: str
) -> None:
    server = own_redis(tmp_path / "redis", appendonly=True, startup_timeout=120)
    url = server.start().url
    keys = Keys(key_prefix)
    settings = make_settings(url, key_prefix)
    client = redis.asyncio.Redis.from_url(url)
    heard: list[str | None] = []
    try:
        await client.config_set("auto-aof-rewrite-percentage", "0")  # the AOF stays commands
        for chunk in range(8):  # 1.6 M keys, ~250 MB of AOF: seconds of LOADING
            await client.eval(_POPULATE, 0, f"{key_prefix}:filler:{chunk}", 200_000)  # type: ignore[misc]
        producer = Producer(client, keys=keys, settings=settings)
        sent = await producer.enqueue_many("record", [0.05] * 60)
        async with serving(settings, client, heard) as worker:
            await wait_until(lambda: _effects(client, keys, 5), what="the first effects")
            await anyio.to_thread.run_sync(server.stop)
            await anyio.to_thread.run_sync(server.start)  # returns once loaded
            await wait_until(lambda: _effects(client, keys, 60), limit=60, what="every entry")
            await wait_until(lambda: _heard(heard, None), what="the recovery")
            assert worker.stop_reason is None
        assert any(h is not None and "LOADING" in h for h in heard), heard
        effects = await scratch_list(client, keys, "effects")
        assert sorted(effects) == sorted(s.task_id for s in sent)
    finally:
        await client.aclose()
        server.stop()
