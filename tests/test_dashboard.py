"""The dashboard's JSON API and live feed against a real Redis (issue 11, item 5).

The API is called in the test's own event loop (httpx's ASGI transport, so the app shares
the test's Redis client); the live feed over a real uvicorn server is tested at the end.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2 as httpx
import msgspec
import pytest
import redis.asyncio
from starlette.applications import Starlette

from runtime import Keys, Settings
from runtime.observability.lifecycle import LifecycleEvent, append_lifecycle
from runtime.observability.metrics import MetricsRecorder
from runtime.web.dashboard import dashboard_routes
from runtime.web.dashboard.live import Feed, FeedQuery
from runtime.web.dashboard.readers import DashboardReader
from runtime.web.server import serve
from runtime.web.state import WebState
from tests.conftest import make_settings
from tests.dashboard_seed import seed_fleet, seed_letter, seed_run
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token"


@pytest.fixture
def web_settings(redis_url: str, keys: Keys) -> Settings:
    return make_settings(redis_url, keys.prefix, **{"web.token": TOKEN})


def app_for(client: redis.asyncio.Redis, keys: Keys, settings: Settings) -> Starlette:
    return Starlette(routes=dashboard_routes(WebState(client, keys, settings)))


@pytest.fixture
async def api(
    client: redis.asyncio.Redis, keys: Keys, web_settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_for(client, keys, web_settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
        yield http


async def test_overview_shows_the_fleet_the_inboxes_and_their_dead_letters(
    api: httpx.AsyncClient, client: redis.asyncio.Redis, keys: Keys
) -> None:
    await seed_fleet(client, keys, ["triage", "billing"])
    for _ in range(3):
        await client.xadd(keys.inbox("triage"), {"envelope": b"{}"})
    await client.xgroup_create(keys.inbox("triage"), "workers", id="0")
    await client.xreadgroup("workers", "w1", {keys.inbox("triage"): ">"}, count=1)
    await seed_letter(client, keys, "dead-1")
    body = (await api.get("/api/overview")).json()
    [member] = body["fleet"]
    assert member["instance"] == "sup1"
    assert [w["state"] for w in member["workers"]] == ["busy", "ready"]
    inboxes = {row["target"]: row for row in body["inboxes"]}
    assert set(inboxes) == {"billing", "triage"}
    triage = inboxes["triage"]
    assert (triage["length"], triage["lag"], triage["pending"], triage["dlq"]) == (3, 2, 1, 1)
    assert triage["oldest_pending_age_s"] is not None
    assert inboxes["billing"]["dlq"] == 0
    assert set(body["totals"]) >= {"runs_completed", "runs_failed"}


async def test_recent_runs_newest_first_filtered_by_status_and_agent(
    api: httpx.AsyncClient, client: redis.asyncio.Redis, keys: Keys, web_settings: Settings
) -> None:
    await seed_run(client, keys, web_settings, "r1", agent="triage", status="completed", at=1000)
    await seed_run(client, keys, web_settings, "r2", agent="billing", status="failed", error="no")
    await seed_run(client, keys, web_settings, "r3", agent="triage", status="running")
    every = (await api.get("/api/runs")).json()
    assert [(r["run_id"], r["status"]) for r in every["runs"]] == [
        ("r3", "running"),
        ("r2", "failed"),
        ("r1", "completed"),
    ]
    assert every["window"] == 2000
    failed = (await api.get("/api/runs", params={"status": "failed"})).json()
    assert [(r["run_id"], r["error"]) for r in failed["runs"]] == [("r2", "no")]
    triage = (await api.get("/api/runs", params={"agent": "triage", "limit": "1"})).json()
    assert [r["run_id"] for r in triage["runs"]] == ["r3"]
    assert triage["filter"] == {"status": None, "agent": "triage"}


async def test_bad_parameters_are_refused_with_a_reason(api: httpx.AsyncClient) -> None:
    for params in ({"status": "lost"}, {"limit": "0"}, {"limit": "x"}, {"agent": "a b"}):
        for path in ("/api/runs", "/api/stream"):
            reply = await api.get(path, params=params)
            assert reply.status_code == 400, (path, params)
            assert reply.json()["error"]


async def test_a_runs_page_has_its_record_events_and_span_waterfall(
    api: httpx.AsyncClient, client: redis.asyncio.Redis, keys: Keys, web_settings: Settings
) -> None:
    tid = await seed_run(client, keys, web_settings, "r1", status="failed", error="tool broke")
    reply = await api.get("/api/runs/r1")
    assert reply.status_code == 200
    body = reply.json()
    run = body["run"]
    assert (run["status"], run["error"], run["attempts"], run["trace_id"]) == (
        "failed",
        "tool broke",
        1,
        tid,
    )
    assert run["usage"] == {"input_tokens": 12, "output_tokens": 34}
    # consecutive text deltas are one row
    assert [(e["type"], e["count"]) for e in body["events"]] == [
        ("run.started", 1),
        ("message.delta", 3),
        ("message", 1),
        ("run.failed", 1),
    ]
    assert body["events"][1]["data"] == {"text": "abc"}
    assert body["events_total"] == 6
    spans = body["spans"]
    assert [(s["name"], s["depth"]) for s in spans] == [
        ("submit triage", 0),
        ("inbox", 1),
        ("attempt 1", 1),
        ("agent: triage", 2),
        ("generation: demo", 3),
        ("function: lookup", 3),
        ("handoff: a → b", 3),
    ]
    by_name = {s["name"]: s for s in spans}
    assert by_name["submit triage"]["offset_ms"] == 0
    assert by_name["function: lookup"]["offset_ms"] == pytest.approx(500, abs=1)
    assert by_name["function: lookup"]["duration_ms"] == pytest.approx(200, abs=1)
    assert by_name["function: lookup"]["status"] == "error"
    assert by_name["attempt 1"]["error"] == "tool broke"
    assert body["trace_ms"] == pytest.approx(1100, abs=1)
    assert body["trace"]["run_id"] == "r1"


async def test_an_unknown_run_is_404_and_a_bad_run_id_400(api: httpx.AsyncClient) -> None:
    missing = await api.get("/api/runs/nobody")
    assert missing.status_code == 404
    assert missing.json()["run"] is None
    assert (await api.get("/api/runs/a{b")).status_code == 400


async def test_cancel_needs_the_token_and_asks_the_run_to_stop(
    api: httpx.AsyncClient, client: redis.asyncio.Redis, keys: Keys, web_settings: Settings
) -> None:
    await seed_run(client, keys, web_settings, "r1", status="queued")
    assert (await api.post("/api/runs/r1/cancel")).status_code == 401
    wrong = await api.post("/api/runs/r1/cancel", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert await client.hget(keys.run("r1"), "cancel_requested") is None
    auth = {"Authorization": f"Bearer {TOKEN}"}
    done = await api.post("/api/runs/r1/cancel", headers=auth)
    assert done.json() == {"run_id": "r1", "cancelled": True, "status": "queued"}
    assert await client.hget(keys.run("r1"), "cancel_requested") == b"1"
    assert (await api.get("/api/runs/r1")).json()["run"]["cancel_requested"] is True
    await seed_run(client, keys, web_settings, "r2", status="completed")
    over = await api.post("/api/runs/r2/cancel", headers=auth)
    assert over.json()["cancelled"] is False
    assert (await api.post("/api/runs/nobody/cancel", headers=auth)).status_code == 404


async def test_changes_are_refused_when_no_token_is_set(
    client: redis.asyncio.Redis, keys: Keys, redis_url: str
) -> None:
    settings = make_settings(redis_url, keys.prefix)
    await seed_letter(client, keys, "dead-1")
    transport = httpx.ASGITransport(app=app_for(client, keys, settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
        reply = await http.post(
            "/api/dlq/triage/replay", json={"all": True}, headers={"Authorization": "Bearer x"}
        )
    assert reply.status_code == 403
    assert "web.token" in reply.text
    assert await client.xlen(keys.dlq("triage")) == 1


async def test_dead_letters_per_target_and_replay_puts_the_run_back_in_its_inbox(
    api: httpx.AsyncClient, client: redis.asyncio.Redis, keys: Keys
) -> None:
    await seed_fleet(client, keys, ["triage", "billing"])
    await seed_letter(client, keys, "dead-1")
    await seed_letter(client, keys, "dead-2")
    counts = (await api.get("/api/dlq")).json()
    assert counts["targets"] == [
        {"target": "billing", "size": 0},
        {"target": "triage", "size": 2},
    ]
    assert counts["letters"] == []
    view = (await api.get("/api/dlq", params={"target": "triage"})).json()
    assert [(x["run_id"], x["reason"], x["attempts"]) for x in view["letters"]] == [
        ("dead-1", "max_deliveries", 3),
        ("dead-2", "max_deliveries", 3),
    ]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = view["letters"][0]["id"]
    assert (await api.post("/api/dlq/triage/replay", json={}, headers=auth)).status_code == 400
    one = await api.post("/api/dlq/triage/replay", json={"ids": [first]}, headers=auth)
    assert list(one.json()["moved"]) == [first]
    assert await client.xlen(keys.dlq("triage")) == 1
    assert await client.xlen(keys.inbox("triage")) == 1
    # the run's record says queued again, as `agents-worker dlq replay` leaves it
    assert await client.hget(keys.run("dead-1"), "status") == b"queued"
    rest = await api.post("/api/dlq/triage/replay", json={"all": True}, headers=auth)
    assert len(rest.json()["moved"]) == 1
    assert await client.xlen(keys.dlq("triage")) == 0
    assert await client.xlen(keys.inbox("triage")) == 2


async def test_charts_show_runs_per_minute_and_the_average_latency(
    client: redis.asyncio.Redis, keys: Keys, web_settings: Settings
) -> None:
    """Two processes record in the same minute: the chart adds their runs up and averages
    their latencies (sum / count, not an average of averages)."""
    now = time.time()
    for process, latencies in (("p1", [100.0, 200.0, 300.0]), ("p2", [1000.0])):
        recorder = MetricsRecorder(keys, web_settings, process=process, clock=lambda: now)
        for value in latencies:
            recorder.count("runs_completed", 1, agent="triage")
            recorder.observe("run_latency", value, agent="triage")
        recorder.count("runs_failed", 1, agent="billing")
        await recorder.flush(client)
    charts = await DashboardReader(client, keys, web_settings).charts(now=now)
    assert charts.history is True and charts.reason is None
    assert len(charts.x) == len(charts.completed) == len(charts.latency_ms) == 60
    assert charts.x[-1] == int(now // 60) * 60  # the current minute is the last
    assert charts.completed[-1] == 4 and charts.failed[-1] == 2
    assert charts.latency_ms[-1] == pytest.approx(400.0)  # 1,600 ms over 4 runs
    assert sum(charts.completed) == 4 and set(charts.latency_ms[:-1]) == {None}


async def test_charts_say_history_off_without_timeseries(plain_redis_url: str, keys: Keys) -> None:
    plain = redis.asyncio.Redis.from_url(plain_redis_url)
    try:
        settings = make_settings(plain_redis_url, keys.prefix)
        charts = await DashboardReader(plain, keys, settings).charts()
    finally:
        await plain.aclose()
    assert charts.history is False
    assert charts.reason is not None and "TimeSeries" in charts.reason
    off = make_settings(plain_redis_url, keys.prefix, **{"observability.metrics": "false"})
    plain = redis.asyncio.Redis.from_url(plain_redis_url)
    try:
        reason = (await DashboardReader(plain, keys, off).charts()).reason
    finally:
        await plain.aclose()
    assert reason is not None and "observability.metrics" in reason


async def test_the_pages_and_their_assets_are_served_from_the_package(
    api: httpx.AsyncClient,
) -> None:
    for path in ("/", "/runs/r1", "/dlq"):
        page = await api.get(path)
        assert page.status_code == 200, path
        assert "text/html" in page.headers["content-type"]
        assert "{{version}}" not in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in _assets(page.text):
            reply = await api.get(asset)
            assert reply.status_code == 200, asset
            assert len(reply.content) > 100, asset
    assert "uPlot" in (await api.get("/static/vendor/uplot/uPlot.iife.min.js")).text
    assert (await api.get("/static/vendor/uplot/LICENSE")).status_code == 200


def _assets(html: str) -> list[str]:
    import re

    return [m.split("?")[0] for m in re.findall(r'(?:src|href)="(/static/[^"]+)"', html)]


# --- the live feed ------------------------------------------------------------------------


def _parse(chunks: list[bytes]) -> list[tuple[str, Any]]:
    """(event name, data) of every event in *chunks* (comments and retry lines left out)."""
    events = []
    for block in b"".join(chunks).split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if line and b": " in line)
        if b"event" in lines:
            events.append((lines[b"event"].decode(), msgspec.json.decode(lines[b"data"])))
    return events


async def test_the_feed_sends_each_section_once_then_only_what_changed(
    client: redis.asyncio.Redis, keys: Keys, web_settings: Settings
) -> None:
    await seed_fleet(client, keys, ["triage"])
    await seed_run(client, keys, web_settings, "r1")
    reader = DashboardReader(client, keys, web_settings)
    feed = Feed(reader, FeedQuery(), tick=0.05)
    got: list[bytes] = []

    async def follow() -> None:
        async for chunk in feed.events():
            got.append(chunk)

    began = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        await wait_until(lambda: _async(feed.reads >= 5), what="five reads")
        names = [name for name, _ in _parse(got)]
        assert sorted(names) == ["charts", "overview", "runs"]  # nothing changed since
        event = LifecycleEvent(run="r2", agent="triage", status="queued")
        async with client.pipeline(transaction=False) as pipe:
            append_lifecycle(pipe, keys, 1000, event)
            await pipe.execute()

        async def runs_sent_again() -> bool:
            return [n for n, _ in _parse(got)].count("runs") == 2

        await wait_until(runs_sent_again, what="the runs table sent again")
        tg.cancel_scope.cancel()
    # at most one read of Redis per tick (a slow machine makes fewer, never more)
    assert feed.reads <= (anyio.current_time() - began) / feed.tick + 1
    runs = [data for name, data in _parse(got) if name == "runs"]
    assert [r["run_id"] for r in runs[-1]["runs"]] == ["r2", "r1"]
    assert [n for n, _ in _parse(got)].count("overview") == 1


async def _async(value: bool) -> bool:
    return value


async def test_the_feed_says_when_redis_is_unreachable_and_resends_after(
    own_server: tuple[Any, str], keys: Keys
) -> None:
    server, url = own_server
    settings = make_settings(url, keys.prefix, **{"redis.socket_timeout": "2"})
    conn = redis.asyncio.Redis.from_url(url)
    got: list[tuple[str, Any]] = []
    feed = Feed(DashboardReader(conn, keys, settings), FeedQuery(run="r1"), tick=0.05)
    try:
        async with anyio.create_task_group() as tg:

            async def follow() -> None:
                async for chunk in feed.events():
                    got.extend(_parse([chunk]))

            tg.start_soon(follow)
            await wait_until(lambda: _async(len(got) == 1), what="the first section")
            server.stop()
            await wait_until(lambda: _async(got[-1][0] == "problem"), what="a problem")
            assert "cannot read Redis" in got[-1][1]["message"]
            problems = len(got)
            server.start()
            await wait_until(lambda: _async(got[-1][0] == "run"), limit=30, what="run again")
            assert len(got) == problems + 1  # one problem event, then the section again
            tg.cancel_scope.cancel()
    finally:
        await conn.aclose()
    assert got[0][0] == "run" and got[0][1]["run"] is None


async def test_the_stream_over_http_sends_events_and_stops_reading_when_the_client_goes(
    client: redis.asyncio.Redis, keys: Keys, web_settings: Settings
) -> None:
    await seed_run(client, keys, web_settings, "r1")
    app = app_for(client, keys, web_settings)
    assert Feed.running == 0
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, app, "127.0.0.1", 0)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
            http.stream("GET", "/api/stream", params={"run": "r1"}) as reply,
        ):
            assert reply.headers["content-type"].startswith("text/event-stream")
            chunks: list[bytes] = []
            async for chunk in reply.aiter_bytes():
                chunks.append(chunk)
                if _parse(chunks):
                    break
            assert Feed.running == 1
        [(name, data)] = _parse(chunks)
        assert name == "run" and data["run"]["status"] == "completed"

        await wait_until(lambda: _async(Feed.running == 0), what="the feed ended with its client")
        tg.cancel_scope.cancel()
