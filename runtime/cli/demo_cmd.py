"""``agents-worker demo``: the README's first command, end to end.

Starts Redis (the embedded Redis Stack unless a URL is set) and checks its modules, runs the
demo app (``workers.demo:app``: triage → billing / technical) under the supervisor with two
worker processes, submits a few conversations — one of them multi-turn, one continued by an
app-published handoff — prints what happened and a status table, and shuts everything down.
The web dashboard is served meanwhile (its address is printed); in a terminal the demo keeps
it and the workers up until Enter is pressed.
"""

from __future__ import annotations

import os
import sys
import uuid

import anyio
import click
import msgspec
from rich.table import Table
from rich.text import Text

from runtime.agents import AgentClient, RunHandle, RunResult
from runtime.agents.models import model_description
from runtime.cli.app import Context, pass_context
from runtime.coordinator import AgentCoordinator, CoordinationEvent
from runtime.log import configure_logging
from runtime.redaction import redact_url
from runtime.redis.connection import Connection, open_redis, read_server_info
from runtime.redis.modules import exercise_modules
from runtime.settings import Settings
from runtime.streams import stream_status
from runtime.supervisor import Supervisor
from runtime.web import DASHBOARD_ENDPOINT, WebState, bind_sockets, create_app, serve, url_of

__all__ = ["demo"]

APP = "workers.demo:app"
_READY_TIMEOUT = 60.0


@click.command()
@click.option("--workers", "-w", type=int, default=2, show_default=True)
@click.option("--keep-redis", is_flag=True, help="Leave an embedded server it started running.")
@pass_context
def demo(ctx: Context, workers: int, keep_redis: bool) -> None:
    """Run the demo agents end to end on the embedded Redis Stack (or REDIS_URL)."""
    quiet = {"observability.log_level": "WARNING"}
    if ctx.resolved.sources["observability.log_level"] == "default":
        ctx.override(quiet)  # the demo's own output tells the story
        configure_logging("WARNING", ctx.settings.observability.log_format)
    ctx.override({"supervisor.workers": workers, "supervisor.http_port": 0})
    failed = anyio.run(_demo, ctx, keep_redis)
    if failed:
        raise click.ClickException(f"{failed} demo run(s) did not complete; see above")
    ctx.console.print("[green]Demo finished:[/] every run completed; workers and Redis stopped.")


async def _demo(ctx: Context, keep_redis: bool) -> int:
    out = ctx.console
    settings = ctx.settings
    if settings.redis.url is None:
        out.print("No Redis URL configured: starting the embedded Redis Stack…")
    else:
        source = ctx.resolved.sources["redis.url"]
        out.print(f"Using Redis at {redact_url(settings.redis.url)} ({source}).")
    async with open_redis(settings, stop_embedded=not keep_redis) as conn:
        await _foundation(ctx, conn)
        note = model_description(settings.models, dict(os.environ))
        out.print(f"Model: {note}.")
        if "demo model" in note:
            out.print(
                "  (deterministic and offline; set OPENAI_API_KEY, or models.base_url for any "
                "OpenAI-compatible server, to use a real model)"
            )
        worker_settings = ctx.settings if conn.embedded is None else _with_url(ctx, conn.url)
        supervisor = Supervisor(APP, worker_settings)
        ended = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_supervise, supervisor, ended)
            out.print(f"Starting {settings.supervisor.workers} worker processes for {APP}…")
            await _until_ready(supervisor, settings.supervisor.workers)
            async with anyio.create_task_group() as web:
                url = await web.start(_dashboard, ctx, conn)
                out.print(f"Dashboard: {url}")
                failed = await _conversations(ctx, conn)
                await _status(ctx, conn)
                if sys.stdin.isatty():
                    out.print(f"\nThe dashboard stays up at {url}: press Enter to stop.")
                    await _enter_or(ended)
                web.cancel_scope.cancel()
            out.print("Stopping the workers (graceful drain)…")
            supervisor.stop()
    return failed


async def _supervise(supervisor: Supervisor, ended: anyio.Event) -> None:
    try:
        await supervisor.run()
    finally:
        ended.set()


async def _dashboard(
    ctx: Context, conn: Connection, *, task_status: anyio.abc.TaskStatus[str]
) -> None:
    """Serve the dashboard until cancelled; reports its URL. The port is ``web.port`` when it
    was set, else a free one (a demo must not fail on a port another program holds)."""
    web = ctx.settings.web
    port = web.port if ctx.resolved.sources["web.port"] != "default" else 0
    sockets = bind_sockets(web.host, port, DASHBOARD_ENDPOINT)
    app = create_app(WebState(conn.client, conn.keys, ctx.settings), dashboard=True)
    async with anyio.create_task_group() as tg:
        bound = await tg.start(serve, app, web.host, port, sockets)
        task_status.started(url_of(web.host, bound))


async def _enter_or(ended: anyio.Event) -> None:
    """Wait for a line on stdin (Enter), or for *ended* (the supervisor stopped: Ctrl-C)."""
    async with anyio.create_task_group() as tg:

        async def enter() -> None:
            await anyio.wait_readable(sys.stdin.fileno())
            sys.stdin.readline()
            tg.cancel_scope.cancel()

        async def stopped() -> None:
            await ended.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(enter)
        tg.start_soon(stopped)


def _with_url(ctx: Context, url: str) -> Settings:
    """The settings the workers get: the embedded server this command started or reuses."""
    redis_settings = msgspec.structs.replace(ctx.settings.redis, url=url)
    return msgspec.structs.replace(ctx.settings, redis=redis_settings)


async def _foundation(ctx: Context, conn: Connection) -> None:
    info = await read_server_info(conn.client, conn.url)
    checks = await exercise_modules(conn.client, conn.keys, info)
    where = "embedded Redis Stack" if conn.embedded is not None else "Redis"
    startup = (
        f", started in {conn.embedded.startup_ms:.0f} ms"
        if conn.embedded is not None and not conn.embedded.reused
        else ""
    )
    ctx.console.print(f"Redis: {where} {info.version} at {redact_url(conn.url)}{startup}.")
    shown = ", ".join(f"{c.module} {'ok' if c.ok else '[yellow]missing[/]'}" for c in checks)
    ctx.console.print(f"  modules: {shown}")
    if not all(c.ok for c in checks):
        ctx.console.print(
            "  [yellow]Some modules are missing:[/] the agent runtime runs without them; search, "
            "JSON sessions and metrics need Redis 8 or Redis Stack."
        )


async def _until_ready(supervisor: Supervisor, wanted: int) -> None:
    with anyio.fail_after(_READY_TIMEOUT):
        await supervisor.wait_ready(wanted)


async def _conversations(ctx: Context, conn: Connection) -> int:
    out = ctx.console
    client = AgentClient(conn.client, keys=conn.keys, settings=ctx.settings)
    tag = uuid.uuid4().hex[:6]
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    out.print(f"\nConversations ({alice} has three turns; {bob} one):")
    turns = [
        (alice, "Hi, my invoice 1042 was charged twice"),
        (bob, "The app crashes when I try to log in"),
        (alice, "Please refund the duplicate charge on invoice 1042"),
    ]
    handles = [
        (str(n), await client.run("triage", text, session_id=session))
        for n, (session, text) in enumerate(turns, 1)
    ]

    async def handoff_sink(event: CoordinationEvent) -> str:
        handle = await client.handoff(
            str(event.data["to_agent"]),
            session_id=str(event.session_id),
            from_agent=str(event.data["from_agent"]),
            context=dict(event.data.get("context") or {}),
        )
        handles.append(("4", handle))
        return handle.run_id

    coordinator = AgentCoordinator(client=conn.client, keys=conn.keys, handoff_sink=handoff_sink)
    await coordinator.publish_handoff_ready(
        "triage", "technical", alice, {"reason": "the customer also cannot log in"}
    )
    failed = 0
    for label, handle in handles:
        result = await handle.result(timeout=60)
        failed += not result.ok
        await _print_run(ctx, label, handle, result)
    return failed


async def _print_run(ctx: Context, label: str, handle: RunHandle, result: RunResult) -> None:
    steps = []
    async for event in handle.events(follow=False):
        data = event.data
        if event.type == "handoff":
            steps.append(f"{data['from']} → {data['to']}")
        elif event.type == "tool.called":
            steps.append(f"{data['tool']}()")
        elif event.type == "run.started" and not steps:
            steps.append(f"worker {data['worker']}")
    # a model's words may hold "[/INST]" or "[bold]": data goes to rich as Text, never markup
    head = Text.assemble((f"#{label}", "bold"), f" {handle.session_id} · {result.agent}")
    if not result.ok:
        ctx.console.print(Text.assemble(head, " ", (result.status, "red"), f": {result.error}"))
        return
    took = (result.finished_at or 0) - (result.submitted_at or 0)
    ctx.console.print(Text.assemble(head, f" · {' · '.join(steps)} · {took * 1000:.0f} ms"))
    ctx.console.print(Text(f"    {result.last_agent}: {result.final_output}"))


async def _status(ctx: Context, conn: Connection) -> None:
    streams = await stream_status(conn.client, conn.keys, ["triage", "billing", "technical"])
    table = Table(
        "inbox", "length", "pending", "DLQ", "consumers", title="\nStatus", highlight=False
    )
    for s in streams:
        consumers = ", ".join(c.name for g in s.groups for c in g.consumers) or "-"
        table.add_row(Text(s.target), str(s.length), str(s.pending), str(s.dlq), Text(consumers))
    ctx.console.print(table)
    events = await AgentCoordinator(client=conn.client, keys=conn.keys).get_stream_info()
    ctx.console.print(f"Coordination stream: {events.get('length', 0)} lifecycle events.")
