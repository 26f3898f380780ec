"""The dashboard stays fast with 100,000 runs in Redis: every read it makes is bounded.

Redis is filled (pipelined) with 100,000 lifecycle events and 100,000 run records, and one run
has a trace of 5,000 spans; then every API call is made through a client whose connections
record each command they send, and the test checks the commands themselves: never KEYS or
SCAN, every stream range with a COUNT, at most the recent-runs window of lifecycle events
read, a trace over the cap never read whole (HSCAN … COUNT, never HGETALL), a few dozen
commands per call.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx2 as httpx
import msgspec
import pytest
import redis.asyncio
from starlette.applications import Starlette

from runtime import Keys, Settings
from runtime.observability.spans import SpanRecord
from runtime.web.dashboard import dashboard_routes
from runtime.web.dashboard.bounds import RUNS_WINDOW, SPANS_MAX
from runtime.web.dashboard.live import Feed, FeedQuery
from runtime.web.dashboard.readers import DashboardReader
from runtime.web.state import WebState
from tests.conftest import make_settings
from tests.dashboard_seed import seed_fleet, seed_letter, seed_run

pytestmark = pytest.mark.anyio

RUNS = 100_000
WINDOW = 2000
"""Lifecycle events one call may read at most (the recent-runs window)."""
SCANS = {"KEYS", "SCAN", "SSCAN", "ZSCAN"}
BIG_TRACE = 5000
"""Spans of the big trace (over the dashboard's cap, SPANS_MAX)."""
RANGES = {"XRANGE", "XREVRANGE"}
WHOLE = {"LRANGE", "ZRANGE", "SMEMBERS", "HKEYS", "HVALS"}


class Recording(redis.asyncio.Connection):
    """A connection that notes every command it sends (pipelines included)."""

    sent: ClassVar[list[tuple[str, ...]]] = []

    def pack_command(self, *args: Any) -> list[bytes]:
        Recording.sent.append(tuple(_text(a) for a in args))
        return super().pack_command(*args)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@pytest.fixture
def scale_settings(redis_url: str, keys: Keys) -> Settings:
    # a deployment that keeps 200,000 lifecycle events (the default keeps 10,000)
    overrides = {"web.token": "t", "observability.events_maxlen": "200000"}
    return make_settings(redis_url, keys.prefix, **overrides)


@pytest.fixture
async def recording(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    conn = redis.asyncio.Redis.from_url(redis_url, connection_class=Recording)
    try:
        yield conn
    finally:
        await conn.aclose()


@pytest.fixture
async def bulk(client: redis.asyncio.Redis, keys: Keys) -> AsyncIterator[None]:
    """Redis filled with :func:`fill`; the records deleted afterwards in pipelines (faster
    than the client fixture's one by one)."""
    await fill(client, keys)
    try:
        yield
    finally:
        for first in range(0, RUNS, 10_000):
            names = [keys.run(f"bulk-{i:06d}") for i in range(first, first + 10_000)]
            await client.unlink(*names)


# Writes runs first..first+n-1 server-side (100,000 commands from Python take ~20 s here).
# KEYS: the lifecycle stream. ARGV: the record key with RUNID for the run id, first, n, now.
_FILL = """
for i = tonumber(ARGV[2]), tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1 do
  local id = string.format('bulk-%06d', i)
  local status = (i % 10 == 0) and 'failed' or 'completed'
  local agent = (i % 2 == 1) and 'triage' or 'billing'
  local record = string.gsub(ARGV[1], 'RUNID', id)
  redis.call('HSET', record, 'status', status, 'agent', agent, 'submitted_at', ARGV[4])
  redis.call('XADD', KEYS[1], '*', 'run', id, 'agent', agent, 'status', status, 'at', ARGV[4])
end
"""


async def fill(client: redis.asyncio.Redis, keys: Keys) -> None:
    """100,000 runs: a record each and a terminal lifecycle event each (no trim), written
    by a script in batches (run bulk-i is failed when i % 10 == 0, of triage when i is odd)."""
    script = client.register_script(_FILL)
    batch = 20_000
    for first in range(0, RUNS, batch):
        await script(keys=[keys.events()], args=[keys.run("RUNID"), first, batch, time.time()])


async def seed_big_trace(client: redis.asyncio.Redis, keys: Keys, tid: str) -> None:
    """*BIG_TRACE* more spans in trace *tid* (one HSET)."""
    spans = {
        f"{n:016x}": msgspec.json.encode(
            SpanRecord(
                trace_id=tid,
                span_id=f"{n:016x}",
                parent_id=None,
                name=f"function: f{n}",
                kind="function",
                start=1000.0 + n,
                end=1000.5 + n,
                status="ok",
            )
        )
        for n in range(BIG_TRACE)
    }
    await client.hset(keys.trace_spans(tid), mapping=spans)


def check_bounded(
    sent: list[tuple[str, ...]], what: str, most: int = 40, big: frozenset[str] = frozenset()
) -> None:
    """*sent* reads a bounded part of Redis; the hashes named in *big* (over the dashboard's
    cap) are never read whole."""
    names = [cmd[0].upper() for cmd in sent]
    assert not SCANS & set(names), f"{what} scanned: {names}"
    assert not WHOLE & set(names), f"{what} read a whole collection: {names}"
    assert len(sent) <= most, f"{what} sent {len(sent)} commands: {names}"
    for cmd in sent:
        if cmd[0].upper() == "HGETALL":
            assert cmd[1] not in big, f"{what} read a big hash whole: {cmd}"
        if cmd[0].upper() == "HSCAN":  # only a trace's spans, a page at most the cap
            assert cmd[1] in big, f"{what} scanned: {cmd}"
            upper = [a.upper() for a in cmd]
            assert "COUNT" in upper and int(cmd[upper.index("COUNT") + 1]) <= SPANS_MAX, cmd
    events_read = 0
    for cmd in sent:
        if cmd[0].upper() in RANGES:
            upper = [a.upper() for a in cmd]
            assert "COUNT" in upper, f"{what}: {cmd} has no COUNT"
            count = int(cmd[upper.index("COUNT") + 1])
            assert count <= WINDOW, f"{what}: {cmd}"
            events_read += count
    assert events_read <= WINDOW + 1, f"{what} read {events_read} stream entries"


async def test_every_call_reads_a_bounded_part_of_100k_runs(
    client: redis.asyncio.Redis,
    recording: redis.asyncio.Redis,
    keys: Keys,
    scale_settings: Settings,
    bulk: None,
) -> None:
    await seed_fleet(client, keys, ["triage", "billing"])
    await seed_run(client, keys, scale_settings, "latest", status="failed", error="boom")
    await seed_letter(client, keys, "dead-1")
    huge = await seed_run(client, keys, scale_settings, "huge", status="completed")
    await seed_big_trace(client, keys, huge)
    big = frozenset({keys.trace_spans(huge)})
    assert await client.xlen(keys.events()) >= RUNS
    assert RUNS_WINDOW <= WINDOW
    app = Starlette(routes=dashboard_routes(WebState(recording, keys, scale_settings)))
    transport = httpx.ASGITransport(app=app)
    calls = {
        "the recent runs": ("/api/runs", {}),
        "a filter that matches nothing": ("/api/runs", {"agent": "nobody", "limit": "200"}),
        "failed runs of one agent": ("/api/runs", {"status": "failed", "agent": "billing"}),
        "the overview": ("/api/overview", {}),
        "a run's page": ("/api/runs/latest", {}),
        "an old run's page": ("/api/runs/bulk-000007", {}),
        "a run with 5,000 spans": ("/api/runs/huge", {}),
        "the dead letters": ("/api/dlq", {"target": "triage"}),
        "the charts": ("/api/charts", {}),
    }
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
        for what, (path, params) in calls.items():
            Recording.sent.clear()
            reply = await http.get(path, params=params)
            assert reply.status_code == 200, (what, reply.text)
            check_bounded(Recording.sent, what, big=big)
            if path == "/api/runs/huge":  # the response says spans were left out
                body = reply.json()
                assert (body["spans_total"], body["spans_read"]) == (BIG_TRACE + 7, SPANS_MAX)
                assert len(body["spans"]) == SPANS_MAX
            if path == "/api/runs":
                rows = reply.json()["runs"]
                assert len(rows) <= int(params.get("limit", "50"))
    # the newest runs are listed first, whatever is behind them
    runs = (await http_get(app, "/api/runs", {"limit": "3"}))["runs"]
    assert [r["run_id"] for r in runs] == ["huge", "latest", "bulk-099999"]
    failed = (await http_get(app, "/api/runs", {"status": "failed", "agent": "billing"}))["runs"]
    assert failed and all(r["status"] == "failed" and r["agent"] == "billing" for r in failed)
    # one tick of a live feed (the overview page): bounded too
    feed = Feed(DashboardReader(recording, keys, scale_settings), FeedQuery(status="failed"))
    Recording.sent.clear()
    events = feed.events()
    assert await anext(events) == b"retry: 3000\n\n"
    await anext(events)  # the first section: the tick has read everything
    await events.aclose()
    check_bounded(Recording.sent, "a live feed's tick", most=60)
    # a live feed of the big run's page: each tick bounded
    feed = Feed(DashboardReader(recording, keys, scale_settings), FeedQuery(run="huge"))
    Recording.sent.clear()
    events = feed.events()
    await anext(events)
    await anext(events)
    await events.aclose()
    check_bounded(Recording.sent, "a live feed's tick of a big trace", big=big)


async def http_get(app: Starlette, path: str, params: dict[str, str]) -> Any:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
        return (await http.get(path, params=params)).json()
