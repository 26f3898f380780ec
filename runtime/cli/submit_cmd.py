"""``agents-worker submit``: run an agent from the shell and follow it."""

from __future__ import annotations

import json

import anyio
import click

from runtime.agents import AgentClient, RunEvent
from runtime.cli.app import Context, existing_redis, pass_context

__all__ = ["submit"]


@click.command()
@click.argument("agent")
@click.argument("text")
@click.option("--session", "session_id", help="Conversation id: runs of one session run in order.")
@click.option("--context", "context_json", help="JSON object handed to the agent's tools.")
@click.option(
    "--run-id",
    help="Your own run id: after a connection error, the same command again runs it once.",
)
@click.option("--follow", "-f", is_flag=True, help="Print the run's events until it ends.")
@click.option("--wait", "wait_s", type=float, default=None, help="Wait this long for the result.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def submit(
    ctx: Context,
    agent: str,
    text: str,
    session_id: str | None,
    context_json: str | None,
    run_id: str | None,
    follow: bool,
    wait_s: float | None,
    as_json: bool,
) -> None:
    """Submit TEXT to AGENT; prints the run id, or follows the run to its result."""
    context = {}
    if context_json:
        try:
            context = json.loads(context_json)
        except ValueError as exc:
            raise click.BadParameter(f"--context is not JSON: {exc}") from None
        if not isinstance(context, dict):
            raise click.BadParameter("--context must be a JSON object")
    ids = (session_id, run_id)
    status = anyio.run(_submit, ctx, agent, text, ids, context, follow, wait_s, as_json)
    raise SystemExit(status)


async def _submit(
    ctx: Context,
    agent: str,
    text: str,
    ids: tuple[str | None, str | None],
    context: dict[str, object],
    follow: bool,
    wait_s: float | None,
    as_json: bool,
) -> int:
    async with existing_redis(ctx) as conn:
        client = AgentClient(conn.client, keys=conn.keys, settings=ctx.settings)
        session_id, run_id = ids
        handle = await client.run(
            agent, text, session_id=session_id, context=context, run_id=run_id
        )
        if not follow and wait_s is None:
            click.echo(handle.run_id)
            return 0
        ctx.errors.print(f"run {handle.run_id} submitted to {agent!r}")
        if follow:
            with anyio.move_on_after(wait_s):
                async for event in handle.events():
                    _show(ctx, event)
        result = await handle.result(timeout=wait_s)
    if as_json:
        click.echo(json.dumps({
            "run_id": result.run_id, "status": result.status, "agent": result.agent,
            "last_agent": result.last_agent, "final_output": result.final_output,
            "usage": result.usage, "error": result.error,
        }))  # fmt: skip
    elif result.ok:
        ctx.console.print(f"[bold]{result.last_agent}[/]: {result.final_output}")
    else:
        ctx.errors.print(f"[red]{result.status}[/]: {result.error}")
    return 0 if result.ok else 1


def _show(ctx: Context, event: RunEvent) -> None:
    data = event.data
    if event.type == "message.delta":
        return  # the whole message follows
    if event.type == "message":
        ctx.errors.print(f"  {data.get('agent')}: {data.get('text')}")
    elif event.type == "tool.called":
        ctx.errors.print(f"  {data.get('agent')} → {data.get('tool')}({data.get('arguments')})")
    elif event.type == "tool.output":
        ctx.errors.print(f"  ← {data.get('output')}")
    elif event.type == "handoff":
        ctx.errors.print(f"  handoff {data.get('from')} → {data.get('to')}")
    elif event.type in ("run.started", "run.retrying", "run.requeued"):
        ctx.errors.print(f"  {event.type} {json.dumps(data)}")
