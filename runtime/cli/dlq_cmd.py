"""``agents-worker dlq …``: list, show, replay and purge dead letters."""

from __future__ import annotations

import functools
import json
import time

import anyio
import click
from rich.table import Table
from rich.text import Text

from runtime.agents.runs import requeue_for_replay
from runtime.cli.app import Context, existing_redis, pass_context
from runtime.dlq import DeadLetter, DeadLetters
from runtime.streams import find_targets

__all__ = ["dlq_group"]


@click.group("dlq")
def dlq_group() -> None:
    """Inspect and act on dead-lettered entries (one stream per target)."""


@dlq_group.command("list")
@click.argument("target", required=False)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def list_letters(ctx: Context, target: str | None, limit: int, as_json: bool) -> None:
    """List the letters of TARGET (oldest first), or every dead-letter stream's size."""
    anyio.run(_list, ctx, target, limit, as_json)


async def _list(ctx: Context, target: str | None, limit: int, as_json: bool) -> None:
    async with existing_redis(ctx) as conn:
        letters = DeadLetters(conn.client, keys=conn.keys)
        if target is None:
            sizes = {t: await letters.size(t) for t in await find_targets(conn.client, conn.keys)}
            if as_json:
                click.echo(json.dumps(sizes))
                return
            table = Table("target", "dead letters", highlight=False)
            for name, size in sizes.items():
                table.add_row(Text(name), str(size))
            ctx.console.print(table)
            return
        rows = await letters.read(target, count=limit)
        if as_json:
            click.echo(json.dumps([_doc(letter) for letter in rows], indent=2))
            return
        table = Table(
            "id", "failed at", "reason", "detail", "error", "task", "tries", highlight=False
        )  # fmt: skip
        for letter in rows:
            table.add_row(  # the letter's texts (a run's error) as Text: never markup
                letter.id,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter.failed_at)),
                Text(letter.reason),
                Text(_short(letter.detail) or "-"),
                Text(_short(letter.error)),
                Text(letter.task_id or "-"),
                str(letter.attempts),
            )
        ctx.console.print(table)
        total = await letters.size(target)
        if total > len(rows):
            ctx.console.print(f"{len(rows)} of {total} shown (--limit).")


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _doc(letter: DeadLetter) -> dict[str, object]:
    return {
        "id": letter.id,
        "target": letter.target,
        "reason": letter.reason,
        "detail": letter.detail,
        "error": letter.error,
        "task_id": letter.task_id,
        "entry_id": letter.entry_id,
        "deliveries": letter.deliveries,
        "attempts": letter.attempts,
        "consumer": letter.consumer,
        "failed_at": letter.failed_at,
        "envelope": _envelope(letter),
        "fields": letter.extra,
    }


def _envelope(letter: DeadLetter) -> object:
    """The envelope as JSON when it parses, else as text (malformed entries keep theirs)."""
    if letter.envelope is None:
        return None
    try:
        return json.loads(letter.envelope)
    except ValueError:
        return letter.envelope.decode(errors="replace")


@dlq_group.command()
@click.argument("target")
@click.argument("letter_id")
@pass_context
def show(ctx: Context, target: str, letter_id: str) -> None:
    """Print one letter in full, with its envelope."""
    anyio.run(_show, ctx, target, letter_id)


async def _show(ctx: Context, target: str, letter_id: str) -> None:
    async with existing_redis(ctx) as conn:
        letter = await DeadLetters(conn.client, keys=conn.keys).get(target, letter_id)
    if letter is None:
        raise click.ClickException(f"no dead letter {letter_id} for {target!r}")
    click.echo(json.dumps(_doc(letter), indent=2))


@dlq_group.command()
@click.argument("target")
@click.argument("letter_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Replay every letter of TARGET.")
@pass_context
def replay(ctx: Context, target: str, letter_ids: tuple[str, ...], everything: bool) -> None:
    """Put letters back into TARGET's inbox with a fresh attempt count.

    An agent run goes again as a new attempt of the same run: its record says queued again
    and its event stream goes on (a run.requeued event, then the new attempt's events).
    """
    if not letter_ids and not everything:
        raise click.UsageError("name the letters to replay, or pass --all")
    anyio.run(_replay, ctx, target, None if everything else list(letter_ids))


async def _replay(ctx: Context, target: str, ids: list[str] | None) -> None:
    async with existing_redis(ctx) as conn:
        letters = DeadLetters(conn.client, keys=conn.keys)
        requeue = functools.partial(requeue_for_replay, conn.client, conn.keys, ctx.settings.runs)
        with ctx.errors.status(f"Replaying dead letters of {target!r}…"):
            result = await letters.replay(target, ids, after_move=requeue)
    for letter_id, new_id in result.moved.items():
        ctx.console.print(f"replayed {letter_id} → {new_id}", markup=False)
    for letter_id, why in result.warnings.items():
        ctx.errors.print(
            Text.assemble(
                ("warning", "yellow"),
                f" {letter_id}: replayed, but its run's record was not reset ({why}); the "
                "worker that takes it resets it",
            )
        )
    for letter_id, why in result.skipped.items():
        ctx.errors.print(Text.assemble(("skipped", "yellow"), f" {letter_id}: {why}"))
    ctx.console.print(f"{len(result.moved)} replayed, {len(result.skipped)} skipped.")
    if result.skipped and not result.moved:
        raise SystemExit(1)


@dlq_group.command()
@click.argument("target")
@click.argument("letter_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Delete every letter of TARGET.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def purge(
    ctx: Context, target: str, letter_ids: tuple[str, ...], everything: bool, yes: bool
) -> None:
    """Delete letters for good."""
    if not letter_ids and not everything:
        raise click.UsageError("name the letters to delete, or pass --all")
    what = "every dead letter" if everything else f"{len(letter_ids)} dead letter(s)"
    if not yes:
        click.confirm(f"Delete {what} of {target!r}?", abort=True)
    deleted = anyio.run(_purge, ctx, target, None if everything else list(letter_ids))
    ctx.console.print(f"{deleted} deleted.")


async def _purge(ctx: Context, target: str, ids: list[str] | None) -> int:
    async with existing_redis(ctx) as conn:
        return await DeadLetters(conn.client, keys=conn.keys).purge(target, ids)
