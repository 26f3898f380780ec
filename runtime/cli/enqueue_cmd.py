"""``agents-worker enqueue``: put work on a target's inbox from the shell."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import click

from runtime.cli.app import Context, existing_redis, pass_context
from runtime.producer import Producer

__all__ = ["enqueue"]


@click.command()
@click.argument("target")
@click.argument("payload", required=False, default="null")
@click.option("--text", is_flag=True, help="Send PAYLOAD as a string, not as JSON.")
@click.option("--key", "idempotency_key", help="Idempotency key: duplicates return the first.")
@click.option("--delay", type=float, help="Seconds before it may run.")
@click.option("--deadline-in", type=float, help="Seconds after which it is not started any more.")
@click.option("--count", type=int, default=1, show_default=True, help="Enqueue it this often.")
@pass_context
def enqueue(
    ctx: Context,
    target: str,
    payload: str,
    text: bool,
    idempotency_key: str | None,
    delay: float | None,
    deadline_in: float | None,
    count: int,
) -> None:
    """Enqueue PAYLOAD (JSON, or a string with --text) for TARGET; prints the task id."""
    if text:
        value: Any = payload
    else:
        try:
            value = json.loads(payload)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON ({exc}); pass --text to send a string") from None
    if count < 1:
        raise click.BadParameter("--count must be at least 1")
    if count > 1 and idempotency_key:
        raise click.BadParameter("--count and --key together would enqueue it once")
    anyio.run(_enqueue, ctx, target, value, idempotency_key, delay, deadline_in, count)


async def _enqueue(
    ctx: Context,
    target: str,
    value: Any,
    key: str | None,
    delay: float | None,
    deadline_in: float | None,
    count: int,
) -> None:
    deadline = time.time() + deadline_in if deadline_in is not None else None
    async with existing_redis(ctx) as conn:
        producer = Producer(conn.client, keys=conn.keys, settings=ctx.settings)
        for _ in range(count):
            sent = await producer.enqueue(
                target, value, idempotency_key=key, delay=delay, deadline=deadline
            )
            note = " (duplicate: the first task's id)" if sent.duplicate else ""
            click.echo(f"{sent.task_id}{note}")
