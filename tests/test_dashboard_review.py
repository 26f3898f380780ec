"""The dashboard's review findings (issue 11): a live feed ends when the server closes, an
unreadable record or event is shown as such, a problem is logged once, a running run that does
not change sends nothing, a big trace is read in part, a Unicode ``limit`` is a 400, targets
nobody serves any more leave the overview."""

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
from runtime.dlq import DeadLetter
from runtime.observability.spans import TraceRecorder
from runtime.web.dashboard import dashboard_routes, detail
from runtime.web.dashboard.live import Feed, FeedQuery
from runtime.web.dashboard.readers import DashboardReader
from runtime.web.state import WebState
from tests.conftest import make_settings
from tests.dashboard_seed import seed_fleet, seed_letter, seed_run
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

LONG_TICK = 3600.0
"""A tick no test waits out: a feed that ends, ends on something else."""


@pytest.fixture
def web_settings(redis_url: str, keys: Keys) -> Settings:
    return make_settings(redis_url, keys.prefix, **{"web.token": "t"})


@pytest.fixture
async def api(
    client: redis.asyncio.Redis, keys: Keys, web_settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=dashboard_routes(WebState(client, keys, web_settings)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
        yield http


def _parse(chunks: list[bytes]) -> list[tuple[str, Any]]:
    """(event name, data) of every event in *chunks* (comments and retry lines left out)."""
    events = []
    for block in b"".join(chunks).split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if line and b": " in line)
        if b"event" in lines:
            events.append((lines[b"event"].decode(), msgspec.json.decode(lines[b"data"])))
    return events


class Following:
    """A feed consumed in a task: its chunks as they come."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.chunks: list[bytes] = []
        self.ended = False

    async def run(self) -> None:
        async for chunk in self.feed.events():
            self.chunks.append(chunk)
        self.ended = True

    def events(self) -> list[tuple[str, Any]]:
        return _parse(self.chunks)

    def named(self, name: str) -> list[Any]:
        return [data for event, data in self.events() if event == name]

    async def reads_past(self, reads: int) -> None:
        async def more() -> bool:
            return self.feed.reads >= reads

        await wait_until(more, what=f"{reads} reads of the feed")


def _read_failed(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.getMessage() == "dashboard.read_failed" for r in caplog.records)


# --- 1. the server closes: open feeds end -------------------------------------------------


async def test_a_feed_ends_within_a_tick_once_closing_is_set(
    client: redis.asyncio.Redis, keys: Keys, web_settings: Settings
) -> None:
    await seed_run(client, keys, web_settings, "r1")
    closing = anyio.Event()
    feed = Feed(
        DashboardReader(client, keys, web_settings), FeedQuery(run="r1"), tick=LONG_TICK,
        closing=closing,
    )  # fmt: skip
    following = Following(feed)
    async with anyio.create_task_group() as tg:
        tg.start_soon(following.run)

        async def first_section() -> bool:
            return bool(following.named("run"))

        await wait_until(first_section, what="the run's section")
        assert not following.ended  # waiting for its next tick, an hour away
        closing.set()

        async def ended() -> bool:
            return following.ended

        await wait_until(ended, what="the feed to end without waiting for its tick")
    assert Feed.running == 0
    assert feed.reads == 1


async def test_the_stream_response_ends_by_itself_when_the_server_is_closing(
    client: redis.asyncio.Redis, keys: Keys, web_settings: Settings
) -> None:
    """dashboard_routes hands the state's ``closing`` to every feed: a stream asked for once
    the server is closing is a complete response (the ASGI transport returns it whole)."""
    await seed_run(client, keys, web_settings, "r1")
    state = WebState(client, keys, web_settings)
    state.closing.set()
    transport = httpx.ASGITransport(app=Starlette(routes=dashboard_routes(state)))
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
        with anyio.fail_after(20):
            reply = await http.get("/api/stream", params={"run": "r1"})
    assert reply.status_code == 200
    assert _parse([reply.content]) == []  # closing before the first read: nothing is read
    assert reply.content == b"retry: 3000\n\n"


# --- 2. an unreadable record or event is shown as such -------------------------------------


async def _seed_bad_run(client: redis.asyncio.Redis, keys: Keys) -> None:
    """The brief's record (``started_at abc``) and events: a good one, bad JSON, no field."""
    await client.hset(
        keys.run("bad"),
        mapping={"status": "running", "agent": "a", "submitted_at": "1", "started_at": "abc"},
    )
    await client.xadd(keys.run_events("bad"), {"event": b'{"type": "run.started", "at": 2}'})
    await client.xadd(keys.run_events("bad"), {"event": b"{nope"})
    await client.xadd(keys.run_events("bad"), {"other": b"1"})
    await client.xadd(keys.run_events("bad"), {"event": b'{"type": "message", "at": 3}'})


async def test_an_unreadable_record_field_and_events_are_shown_as_such(
    api: httpx.AsyncClient, client: redis.asyncio.Redis, keys: Keys, web_settings: Settings
) -> None:
    await _seed_bad_run(client, keys)
    reply = await api.get("/api/runs/bad")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    run = body["run"]
    # what can be read is shown; the bad field is left out and named
    assert (run["status"], run["agent"], run["submitted_at"], run["started_at"]) == (
        "running",
        "a",
        1.0,
        None,
    )
    types = [e["type"] for e in body["events"]]
    assert types == ["run.started", "event.unreadable", "event.unreadable", "message"]
    bad = [e for e in body["events"] if e["type"] == "event.unreadable"]
    assert all(e["data"]["error"] and e["id"] and e["at"] > 0 for e in bad)
    assert body["events_total"] == body["events_read"] == 4
    problems = body["problems"]
    assert len(problems) == 2
    assert "'started_at'" in problems[0] and "abc" in problems[0]
    assert problems[1].startswith("2 of the run's events are unreadable")
    await seed_run(client, keys, web_settings, "ok")
    assert (await api.get("/api/runs/ok")).json()["problems"] == []


async def test_the_feed_of_an_unreadable_run_shows_it_and_goes_on(
    client: redis.asyncio.Redis, keys: Keys, web_settings: Settings
) -> None:
    await _seed_bad_run(client, keys)
    feed = Feed(DashboardReader(client, keys, web_settings), FeedQuery(run="bad"), tick=0.05)
    following = Following(feed)
    async with anyio.create_task_group() as tg:
        tg.start_soon(following.run)
        await following.reads_past(4)
        tg.cancel_scope.cancel()
    assert not following.ended  # it did not die (the browser would reconnect every 3 s)
    [detail] = following.named("run")
    assert len(detail["problems"]) == 2
    assert following.named("problem") == []


async def test_any_failure_of_a_feed_is_a_problem_event_logged_once(
    client: redis.asyncio.Redis,
    keys: Keys,
    web_settings: Settings,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dead letter that cannot be read (a ValueError from our own code, not a Redis error:
    one is made to fail here) makes the letters unreadable: the page says so at every tick,
    the log once; once the letter is gone, the page is sent again."""
    _poison_letters(monkeypatch)
    await seed_fleet(client, keys, ["triage"])
    await seed_letter(client, keys, "dead-1")
    bad_id = await client.xadd(keys.dlq("triage"), {"poison": "1", "reason": "x"})
    feed = Feed(DashboardReader(client, keys, web_settings), FeedQuery(dlq="triage"), tick=0.05)
    following = Following(feed)
    async with anyio.create_task_group() as tg:
        tg.start_soon(following.run)
        await following.reads_past(5)
        assert [name for name, _ in following.events()] == ["problem"]
        [problem] = following.named("problem")
        assert "ValueError" in problem["message"]
        assert _read_failed(caplog) == 1
        await client.xdel(keys.dlq("triage"), bad_id)

        async def shown() -> bool:
            return bool(following.named("dlq"))

        await wait_until(shown, what="the dead letters once readable")
        tg.cancel_scope.cancel()
    assert not following.ended
    [view] = following.named("dlq")
    assert [letter["run_id"] for letter in view["letters"]] == ["dead-1"]
    assert _read_failed(caplog) == 1


def _poison_letters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Letters with a ``poison`` field fail to parse with a ValueError (a bug of ours)."""
    parse = DeadLetter.parse.__func__  # type: ignore[attr-defined]

    def failing(cls: type[DeadLetter], entry_id: bytes | str, fields: dict[bytes, bytes]) -> Any:
        if b"poison" in fields:
            raise ValueError("a letter this test made unreadable")
        return parse(cls, entry_id, fields)

    monkeypatch.setattr(DeadLetter, "parse", classmethod(failing))


async def test_an_unexpected_failure_of_an_api_call_is_a_json_500(
    api: httpx.AsyncClient,
    client: redis.asyncio.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _poison_letters(monkeypatch)
    await seed_fleet(client, keys, ["triage"])
    await client.xadd(keys.dlq("triage"), {"poison": "1", "reason": "x"})
    reply = await api.get("/api/dlq", params={"target": "triage"})
    assert reply.status_code == 500
    assert "ValueError" in reply.json()["error"]


# --- 3. an outage is logged once per problem, not once per tick -----------------------------


async def test_a_redis_outage_is_logged_once_per_problem_not_every_tick(
    own_server: tuple[Any, str], keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    server, url = own_server
    settings = make_settings(url, keys.prefix, **{"redis.socket_timeout": "2"})
    conn = redis.asyncio.Redis.from_url(url)
    feed = Feed(DashboardReader(conn, keys, settings), FeedQuery(run="r1"), tick=0.05)
    following = Following(feed)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(following.run)
            await wait_until(lambda: _true(bool(following.named("run"))), what="the first read")
            server.stop()
            await wait_until(lambda: _true(bool(following.named("problem"))), what="a problem")
            await following.reads_past(feed.reads + 5)
            tg.cancel_scope.cancel()
    finally:
        await conn.aclose()
    problems = following.named("problem")
    assert all("cannot read Redis" in p["message"] for p in problems)
    # each problem sent once and logged once, however many ticks it lasted
    assert _read_failed(caplog) == len(problems) < feed.reads - 1


async def _true(value: bool) -> bool:
    return value


# --- 4. a running run that does not change sends nothing -----------------------------------


async def test_a_running_run_that_does_not_change_is_sent_once(
    client: redis.asyncio.Redis, keys: Keys, web_settings: Settings
) -> None:
    tid = await seed_run(client, keys, web_settings, "r1", status="running")
    recorder = TraceRecorder(keys, web_settings)
    still = recorder.span(tid, "attempt 2", "attempt", start=time.time() - 1.0)  # no end yet
    await recorder.flush(client)
    feed = Feed(DashboardReader(client, keys, web_settings), FeedQuery(run="r1"), tick=0.05)
    following = Following(feed)
    async with anyio.create_task_group() as tg:
        tg.start_soon(following.run)
        await following.reads_past(5)
        [detail] = following.named("run")  # five reads, nothing changed: sent once
        assert detail["running"] is True and detail["now"] > 0
        row = next(s for s in detail["spans"] if s["span_id"] == still.span_id)
        assert row["end"] is None and row["status"] == "running"
        recorder.end_span(still, end=still.start + 0.5)
        await recorder.flush(client)

        async def sent_again() -> bool:
            return len(following.named("run")) == 2

        await wait_until(sent_again, what="the run sent again once its span ended")
        reads = feed.reads
        await following.reads_past(reads + 3)
        tg.cancel_scope.cancel()
    assert len(following.named("run")) == 2
    row = next(s for s in following.named("run")[-1]["spans"] if s["span_id"] == still.span_id)
    assert row["duration_ms"] == pytest.approx(500, abs=1)


# --- 5. a big trace is read in part --------------------------------------------------------


async def test_a_trace_over_the_cap_is_read_in_part_and_says_so(
    api: httpx.AsyncClient,
    client: redis.asyncio.Redis,
    keys: Keys,
    web_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tid = await seed_run(client, keys, web_settings, "big", status="completed")
    recorder = TraceRecorder(keys, web_settings)
    for n in range(40):
        recorder.span(tid, f"function: f{n}", "function", start=1000.0 + n, end=1000.5 + n)
    await recorder.flush(client)
    full = (await api.get("/api/runs/big")).json()
    assert (full["spans_total"], full["spans_read"], len(full["spans"])) == (47, 47, 47)
    # a cap low enough for a test (the scale test reads 5,000 spans with the real one)
    monkeypatch.setattr(detail, "SPANS_MAX", 20)
    body = (await api.get("/api/runs/big")).json()
    assert (body["spans_total"], body["spans_read"], len(body["spans"])) == (47, 20, 20)


# --- 6. a limit in Unicode digits ----------------------------------------------------------


async def test_a_limit_in_unicode_digits_is_a_400(api: httpx.AsyncClient) -> None:
    for value in ("²", "١٢", "1²"):
        for path in ("/api/runs", "/api/stream"):
            reply = await api.get(path, params={"limit": value})
            assert reply.status_code == 400, (path, value, reply.text)
            assert "limit" in reply.json()["error"]


# --- 7. targets nobody serves any more leave the overview -----------------------------------


async def test_a_target_nobody_reported_lately_leaves_the_overview_not_the_dead_letters(
    client: redis.asyncio.Redis, keys: Keys, redis_url: str
) -> None:
    await seed_fleet(client, keys, ["triage"])
    now = time.time()
    await client.zadd(keys.targets(), {"gone": now - 600, "lately": now - 200})
    for target in ("triage", "gone", "lately"):  # each has an inbox, with an entry waiting
        await client.xadd(keys.inbox(target), {"envelope": b"{}"})
    await seed_letter(client, keys, "dead-1", agent="gone")
    settings = make_settings(redis_url, keys.prefix)  # samples every 5 s: listed for 60 s
    reader = DashboardReader(client, keys, settings)
    assert [row.target for row in (await reader.overview()).inboxes] == ["triage"]
    # dead letters outlive their workers: still counted
    counts = {t.target: t.size for t in (await reader.dlq()).targets}
    assert counts == {"gone": 1, "lately": 0, "triage": 0}
    slow = make_settings(redis_url, keys.prefix, **{"observability.sample_interval_seconds": 100})
    inboxes = (await DashboardReader(client, keys, slow).overview()).inboxes
    assert [row.target for row in inboxes] == ["lately", "triage"]  # three samples: 300 s
