"""``agents-worker config …``: show, check and document the settings."""

from __future__ import annotations

import json
from typing import Any

import click
import msgspec
from rich.table import Table

from runtime.cli.app import Context, pass_context
from runtime.redaction import redact_url
from runtime.settings import iter_fields
from runtime.settings.docs import render_example, render_reference

__all__ = ["config_group"]


@click.group("config")
def config_group() -> None:
    """Show, check and document the settings."""


def _shown(ctx: Context) -> list[tuple[str, Any, str]]:
    """(setting, value with secrets masked, source) for every setting."""
    rows = []
    for spec in iter_fields():
        value: Any = ctx.settings
        for part in spec.path.split("."):
            value = getattr(value, part)
        if value is not None and spec.secret:
            value = "***"
        elif value is not None and spec.is_url:
            value = redact_url(value)
        rows.append((spec.path, msgspec.to_builtins(value), ctx.resolved.sources[spec.path]))
    return rows


@config_group.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_context
def show(ctx: Context, as_json: bool) -> None:
    """Print every effective setting and where its value came from."""
    rows = _shown(ctx)
    if as_json:
        doc = {path: {"value": value, "source": source} for path, value, source in rows}
        click.echo(json.dumps(doc, indent=2))
        return
    table = Table("setting", "value", "source", highlight=False)
    for path, value, source in rows:
        style = "dim" if source == "default" else ""
        shown = "(unset)" if value is None else json.dumps(value)
        table.add_row(path, shown, source, style=style)
    ctx.console.print(table)


@config_group.command()
@pass_context
def check(ctx: Context) -> None:
    """Load the settings and report problems (exit status 1 when there are any)."""
    changed = sum(1 for _, _, source in _shown(ctx) if source != "default")
    ctx.console.print(f"Settings are valid ({changed} set, the rest default).")


@config_group.command()
def docs() -> None:
    """Print the settings reference in Markdown (docs/configuration.md)."""
    click.echo(render_reference(), nl=False)


@config_group.command()
def example() -> None:
    """Print a TOML file with every setting at its default (config/agents-worker.toml)."""
    click.echo(render_example(), nl=False)
