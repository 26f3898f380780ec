"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright), on
a real Redis, with runs made by a real worker through the SDK Runner (issue 11, item 5).

It loads, shows the runs, opens a run's span waterfall, then a new run completes and the
open page shows it by itself (server-sent events: no reload, no polling requests). The
screenshots are kept in ``test-artifacts/`` (dashboard.png, run.png).

``scripts/test`` installs chromium (when run as root). Without it the test is skipped, unless
``CI`` is set: then it fails, so that CI never skips it silently. Playwright never downloads a
browser here: it drives ``/usr/bin/chromium``.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio

from runtime import Keys, Settings
from runtime.agents import AgentClient
from runtime.observability.fleet import FleetMember, read_fleet, touch_targets
from runtime.observability.spans import TraceRecorder
from runtime.web.app import create_app
from runtime.web.dashboard.live import Feed
from runtime.web.server import serve
from runtime.web.state import WebState
from tests.conftest import free_port, make_settings
from tests.dashboard_seed import seed_letter, seed_run
from tests.helpers import wait_until
from tests.supervision import FAST, Running, supervise, supervisors

pytestmark = pytest.mark.anyio

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WAIT_MS = 15_000
DEMO = ["My invoice 1042 was charged twice", "My login keeps failing", "Hello there"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def chromium() -> str:
    """The system's chromium, with Playwright to drive it."""
    missing = None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed (a dev dependency: pip install -e '.[dev]')"
    if missing is None and not CHROMIUM.is_file():
        missing = f"{CHROMIUM} is not installed (scripts/test installs Debian's chromium as root)"
    if missing is None:
        return str(CHROMIUM)
    if _in_ci():
        pytest.fail(f"{missing}: CI must run the dashboard's browser test")
    pytest.skip(missing)


@pytest.fixture
def browser_settings(redis_url: str, keys: Keys) -> Settings:
    overrides = {
        "runs.timeout_seconds": "10",
        "observability.flush_interval_seconds": "0.1",
        "web.token": "browser-test",
    }
    return make_settings(redis_url, keys.prefix, **overrides)


@pytest.fixture
async def dashboard(
    client: redis.asyncio.Redis, keys: Keys, browser_settings: Settings
) -> AsyncIterator[str]:
    """The web app (with the dashboard) served by uvicorn on a free port: its base URL."""
    app = create_app(WebState(client, keys, browser_settings), dashboard=True)
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, app, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            tg.cancel_scope.cancel()


@pytest.fixture
def runs() -> Iterator[list[Running]]:
    with supervisors() as started:
        yield started


async def serving(client: redis.asyncio.Redis, keys: Keys, workers: int) -> FleetMember:
    """The supervisor, once it reports *workers* ready workers and its HTTP address."""
    found: list[FleetMember] = []

    async def reported() -> bool:
        found[:] = [
            member
            for member in await read_fleet(client, keys)
            if member.http and sum(w.state == "ready" for w in member.workers) == workers
        ]
        return bool(found)

    await wait_until(reported, limit=60, what=f"a supervisor with {workers} ready workers")
    return found[0]


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_dashboard_shows_runs_a_waterfall_and_a_new_run_without_reload(
    chromium: str,
    client: redis.asyncio.Redis,
    keys: Keys,
    redis_url: str,
    runs: list[Running],
    browser_settings: Settings,
) -> None:
    """The demo app served by `agents-worker run` (a supervisor and two worker processes);
    the page is the one the supervisor serves on its HTTP port."""
    from playwright.async_api import async_playwright

    sets = [*FAST, "observability.sample_interval_seconds=0.5"]
    sets += ["observability.flush_interval_seconds=0.1", "web.token=browser-test"]
    port = str(free_port())  # 0 would turn the supervisor's HTTP endpoints off
    args = ["-w", "2", "--http-port", port]
    supervise(runs, redis_url, keys.prefix, *args, app="workers.demo:app", sets=sets)
    member = await serving(client, keys, 2)
    dashboard = f"http://{member.http}"
    agents = AgentClient(client, keys=keys, settings=browser_settings)
    first = []
    for i, text in enumerate(DEMO):
        handle = await agents.run("triage", text, session_id=f"conv-{i}")
        result = await handle.result(timeout=30)
        assert result.status == "completed", result
        first.append(handle.run_id)
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            problems = _watch(page)
            await page.goto(dashboard + "/")
            for run_id in first:
                row = page.locator(f'tr[data-run="{run_id}"]')
                await row.wait_for(timeout=WAIT_MS)
                assert await row.get_attribute("data-status") == "completed"
            assert await page.locator("#fleet .worker").count() == 2
            await page.locator('#inboxes td:text-is("triage")').wait_for(timeout=WAIT_MS)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            # a run's page: its record and its spans drawn as a waterfall
            run_page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            problems += _watch(run_page)
            await run_page.goto(f"{dashboard}/runs/{first[0]}")
            await run_page.locator("#result").wait_for(timeout=WAIT_MS)
            assert "1042" in await run_page.inner_text("#result")
            await run_page.locator('.wf-row[data-kind="function"]').first.wait_for(timeout=WAIT_MS)
            kinds = await run_page.eval_on_selector_all(
                ".wf-row[data-kind]", "rows => rows.map(r => r.dataset.kind)"
            )
            assert {"attempt", "agent", "generation", "function", "handoff"} <= set(kinds), kinds
            widths = await run_page.eval_on_selector_all(
                ".wf-bar", "bars => bars.map(b => b.getBoundingClientRect().width)"
            )
            assert len(widths) == len(kinds) and all(w >= 1 for w in widths)
            await run_page.hover('.wf-row[data-kind="agent"]')
            assert "run_id" in await run_page.inner_text("#tip")
            await run_page.screenshot(path=str(ARTIFACTS / "run.png"), full_page=True)
            await run_page.close()

            # a new run completes: the open overview shows it by itself
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            await page.evaluate("window.__same_page = true")
            handle = await agents.run("triage", "I cannot log in", session_id="conv-new")
            assert (await handle.result(timeout=30)).status == "completed"
            new_row = page.locator(f'tr[data-run="{handle.run_id}"][data-status="completed"]')
            await new_row.wait_for(timeout=WAIT_MS)
            assert await page.evaluate("window.__same_page") is True  # not reloaded
            assert requests == []  # no polling: the open event stream brought it
            assert problems == []
        finally:
            await browser.close()
    assert await runs[0].stop() == 0


async def _no_feed() -> bool:
    return Feed.running == 0


def _watch(page: Any) -> list[str]:
    """Errors the page logs or throws (none expected)."""
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    return problems


async def test_replay_and_cancel_from_the_pages_ask_for_the_token_once(
    chromium: str,
    client: redis.asyncio.Redis,
    keys: Keys,
    browser_settings: Settings,
    dashboard: str,
) -> None:
    from playwright.async_api import async_playwright

    await touch_targets(client, keys, ["triage"])
    for run_id in ("dead-1", "dead-2"):
        await seed_letter(client, keys, run_id)
    await seed_run(client, keys, browser_settings, "waiting", status="queued")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium)
        try:
            page = await browser.new_page()
            problems = _watch(page)
            await page.goto(dashboard + "/dlq?target=triage")
            letters = page.locator("#letters tbody tr")
            await letters.nth(1).wait_for(timeout=WAIT_MS)
            # a wrong token is refused, and asked again
            await page.locator("#letters tbody tr input[type=checkbox]").first.check()
            await page.click("#replay-selected")
            await page.fill("#aw-token input", "wrong")
            await page.click('#aw-token button[value="ok"]')
            await page.locator("#aw-token-why:has-text('Refused')").wait_for(timeout=WAIT_MS)
            await page.fill("#aw-token input", "browser-test")
            await page.click('#aw-token button[value="ok"]')
            await (
                page.locator("#letters tbody tr").nth(1).wait_for(state="detached", timeout=WAIT_MS)
            )
            assert await client.xlen(keys.dlq("triage")) == 1
            assert await client.hget(keys.run("dead-1"), "status") == b"queued"
            # the token is kept for the tab: the next change does not ask
            await page.click("#replay-all")
            await page.locator("#letters-empty").wait_for(state="visible", timeout=WAIT_MS)
            assert await client.xlen(keys.dlq("triage")) == 0
            assert await client.xlen(keys.inbox("triage")) == 2
            await page.goto(dashboard + "/runs/waiting")
            await page.click("#cancel")
            await page.locator("#cancel.hidden").wait_for(state="attached", timeout=WAIT_MS)
            assert await client.hget(keys.run("waiting"), "cancel_requested") == b"1"
            assert await page.locator("#aw-token[open]").count() == 0
            refused = "the server responded with a status of 403"  # the wrong token, logged
            assert [p for p in problems if refused not in p] == []
        finally:
            await browser.close()
    # the server's feeds ended with their pages
    await wait_until(_no_feed, what="no live feed left")


async def test_a_running_runs_bars_grow_by_themselves_and_unreadable_parts_are_shown(
    chromium: str,
    client: redis.asyncio.Redis,
    keys: Keys,
    browser_settings: Settings,
    dashboard: str,
) -> None:
    """The feed sends a running run once while nothing changes: the page itself extends the
    bar of a span still running. A record field and an event that cannot be read are said."""
    from playwright.async_api import async_playwright

    tid = await seed_run(client, keys, browser_settings, "live", status="running")
    recorder = TraceRecorder(keys, browser_settings)
    still = recorder.span(tid, "attempt 2", "attempt", start=time.time() - 1.0)  # no end yet
    await recorder.flush(client)
    await client.hset(keys.run("live"), "started_at", "abc")
    await client.xadd(keys.run_events("live"), {"event": b"{nope"})
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            problems = _watch(page)
            await page.goto(dashboard + "/runs/live")
            bar = page.locator(f'.wf-row[data-span="{still.span_id}"] .wf-bar')
            await bar.wait_for(timeout=WAIT_MS)
            first = await bar.evaluate("b => b.getBoundingClientRect().width")

            async def grown() -> bool:
                width = await bar.evaluate("b => b.getBoundingClientRect().width")
                return bool(width > first + 1)

            await wait_until(grown, what="the running span's bar to grow")
            banner = await page.inner_text("#banner")
            assert "cannot be read" in banner and "started_at" in banner, banner
            await page.locator('#events .type:text-is("event.unreadable")').wait_for(
                timeout=WAIT_MS
            )
            assert problems == []
        finally:
            await browser.close()
