"""``agents-worker dashboard``: the web dashboard, on its own, until Ctrl-C."""

from __future__ import annotations

import signal

import anyio
import click

from runtime.cli.app import Context, existing_redis, pass_context

__all__ = ["dashboard"]


@click.command()
@click.option("--host", help="Address to listen on [web.host].")
@click.option("--port", "-p", type=int, help="Port to listen on, 0 for a free one [web.port].")
@pass_context
def dashboard(ctx: Context, host: str | None, port: int | None) -> None:
    """Serve the live web dashboard: workers, inboxes, runs, traces and charts.

    It reads the configured Redis (REDIS_URL, --redis-url, or the running embedded server;
    it never starts one) and serves until Ctrl-C or SIGTERM. Calls that change something
    (replay, cancel) need web.token; without one the dashboard is read-only.
    """
    ctx.override({"web.host": host, "web.port": port})
    anyio.run(_dashboard, ctx)


async def _dashboard(ctx: Context) -> None:
    from runtime.web import DASHBOARD_ENDPOINT, WebState, bind_sockets, create_app, serve, url_of

    web = ctx.settings.web
    sockets = bind_sockets(web.host, web.port, DASHBOARD_ENDPOINT)
    try:
        async with existing_redis(ctx) as conn:
            state = WebState(conn.client, conn.keys, ctx.settings, probe=None)
            app = create_app(state, dashboard=True)
            async with anyio.create_task_group() as tg:
                port = await tg.start(serve, app, web.host, web.port, sockets)
                ctx.console.print(f"Dashboard: {url_of(web.host, port)}  (Ctrl-C to stop)")
                if not web.token:
                    ctx.console.print("  read-only: set web.token to replay or cancel from it")
                await _until_signal()
                tg.cancel_scope.cancel()
    finally:
        for sock in sockets:
            sock.close()
    ctx.console.print("Dashboard stopped.")


async def _until_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return
