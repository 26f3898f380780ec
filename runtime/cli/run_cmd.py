"""``agents-worker run APP``: the supervisor."""

from __future__ import annotations

import sys

import anyio
import click

from runtime.cli.app import Context, pass_context
from runtime.redaction import redact_url
from runtime.supervisor import Supervisor

__all__ = ["run"]


@click.command()
@click.argument("app")
@click.option("--workers", "-w", type=int, help="Worker processes [supervisor.workers].")
@click.option("--concurrency", "-c", type=int, help="Entries per worker [worker.concurrency].")
@click.option("--min-workers", type=int, help="Autoscaling floor [supervisor.min_workers].")
@click.option("--max-workers", type=int, help="Autoscaling ceiling [supervisor.max_workers].")
@click.option("--http-port", type=int, help="Health/metrics port, 0 off [supervisor.http_port].")
@pass_context
def run(
    ctx: Context,
    app: str,
    workers: int | None,
    concurrency: int | None,
    min_workers: int | None,
    max_workers: int | None,
    http_port: int | None,
) -> None:
    """Run APP (module:object, e.g. workers.demo:app) in supervised worker processes.

    Without a Redis URL the embedded Redis Stack is started (and stopped afterwards).
    SIGTERM or Ctrl-C drains in-flight work and exits 0; a second one stops at once.
    """
    ctx.override(
        {
            "supervisor.workers": workers,
            "worker.concurrency": concurrency,
            "supervisor.min_workers": min_workers,
            "supervisor.max_workers": max_workers,
            "supervisor.http_port": http_port,
        }
    )
    settings = ctx.settings
    if settings.redis.url is None:
        ctx.errors.print("No Redis URL configured: starting the embedded Redis Stack.")
    else:
        ctx.errors.print(f"Using Redis at {redact_url(settings.redis.url)}.")
    supervisor = Supervisor(app, settings)
    sys.exit(anyio.run(supervisor.run))
