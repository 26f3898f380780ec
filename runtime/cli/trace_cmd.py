"""``agents-worker trace``: a run's span tree in the terminal, as a waterfall.

Each span is one row: its place in the tree, kind, start offset from the trace's first span,
duration, a bar showing when it ran within the trace, and its error. The argument is a run
id (its record names its trace), a trace id (32 hex digits), or the SDK's ``trace_<hex>``.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import anyio
import click
from rich.table import Column, Table
from rich.text import Text

from runtime.cli.app import Context, existing_redis, pass_context
from runtime.cli.observe_view import check_id, duration_ms, short, styled_status

if TYPE_CHECKING:
    import redis.asyncio

    from runtime.keys import Keys
    from runtime.observability.spans import SpanRecord, TraceSummary
    from runtime.observability.trace_store import SpanNode

__all__ = ["trace"]

_HEX32 = re.compile(r"[0-9a-f]{32}")
_BAR = 40
"""Widest waterfall column, in characters (narrower on a narrow terminal, down to 12)."""
_MIN_BAR = 12
_OTHER_COLUMNS = 64  # kind, start, duration, tokens, borders and padding
_NARROW_COLUMNS = 31  # start, duration, borders and padding
_KIND_STYLE = {
    "submit": "cyan",
    "inbox": "bright_black",
    "attempt": "blue",
    "retry": "yellow",
    "dead_letter": "red",
    "agent": "bright_blue",
    "generation": "magenta",
    "response": "magenta",
    "function": "green",
    "handoff": "yellow",
    "guardrail": "bright_cyan",
}


@click.command()
@click.argument("run_or_trace", metavar="RUN_ID", callback=check_id("run or trace"))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the summary and every span).")
@pass_context
def trace(ctx: Context, run_or_trace: str, as_json: bool) -> None:
    """Show the span tree of a run (RUN_ID, or a trace id) with its timings.

    Exit status 1 when neither a run nor a trace of that id is known (tracing off, or its
    spans expired with the run).
    """
    anyio.run(_trace, ctx, run_or_trace, as_json)


async def _trace(ctx: Context, run_or_trace: str, as_json: bool) -> None:
    from runtime.observability.trace_store import TraceStore, span_tree

    async with existing_redis(ctx) as conn:
        trace_id = await _resolve(conn.client, conn.keys, run_or_trace)
        store = TraceStore(conn.client, conn.keys)
        summary = await store.get_trace(trace_id)
        spans = await store.get_spans(trace_id)
    if not spans:
        raise click.ClickException(
            f"no spans of trace {trace_id} (tracing off when it ran, or expired with its run)"
        )
    nodes = _flatten(span_tree(spans))
    origin = min(span.start for span in spans)
    if as_json:
        doc = {
            "trace": _summary_doc(summary, trace_id),
            "spans": [_span_doc(n, origin) for n in nodes],
        }
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    ctx.console.print(_header(summary, trace_id, spans))
    ctx.console.print(_table(nodes, origin, _end_of(spans), ctx.console.width))
    for line in _errors(nodes, origin):
        ctx.console.print(line)


async def _resolve(client: redis.asyncio.Redis, keys: Keys, given: str) -> str:
    """The trace id *given* names: a run's (its record says), else *given* as a trace id."""
    from runtime.observability.tracecontext import trace_id_of
    from runtime.redis.connection import translate_errors

    if given.startswith("trace_") and (sdk := trace_id_of(given)):
        return sdk
    with translate_errors("read a run"):
        raw = await client.hmget(keys.run(given), ["trace_id", "status"])
    trace_id, status = (v.decode() if isinstance(v, bytes) else v for v in raw)
    if trace_id:
        return str(trace_id)
    if _HEX32.fullmatch(given):
        return given
    if status:
        raise click.ClickException(f"run {given} has no trace (it ran with tracing off)")
    raise click.ClickException(f"no run or trace {given!r} (unknown, or expired)")


def _flatten(roots: list[SpanNode]) -> list[tuple[SpanNode, str]]:
    """Depth first, each node with the tree drawn before its name (``├─ ``, ``│  └─ ``…)."""
    rows: list[tuple[SpanNode, str]] = []

    def walk(nodes: list[SpanNode], lead: str, top: bool) -> None:
        for index, node in enumerate(nodes):
            last = index == len(nodes) - 1
            rows.append((node, "" if top else lead + ("└─ " if last else "├─ ")))
            walk(node.children, "" if top else lead + ("   " if last else "│  "), False)

    walk(roots, "", True)
    return rows


def _end_of(spans: list[SpanRecord]) -> float:
    return max(span.end or span.start for span in spans)


def _header(summary: TraceSummary | None, trace_id: str, spans: list[SpanRecord]) -> Text:
    """One line: the trace, its name, run, agent, status, spans, duration, failures (the
    names are text: a span or agent name is never read as markup)."""
    origin, end = min(span.start for span in spans), _end_of(spans)
    errors = sum(1 for span in spans if span.status == "error")
    parts = [Text(f"Trace {trace_id}", style="bold")]
    if summary is not None:
        parts.append(Text(summary.name))
        if summary.run_id:
            parts.append(Text(f"run {summary.run_id}"))
        if summary.agent:
            parts.append(Text(f"agent {summary.agent}"))
        parts.append(styled_status(summary.status))
    parts.append(Text(f"{len(spans)} spans"))
    parts.append(Text(duration_ms((end - origin) * 1000)))
    if errors:
        parts.append(Text(f"{errors} failed", style="red"))
    return Text(" · ").join(parts)


def _table(rows: list[tuple[SpanNode, str]], origin: float, end: float, width: int) -> Table:
    """One row per span; a failed span's error on a line of its own under its name. On a
    narrow terminal the kind and tokens columns are left out before the bar gets short."""
    names = min(60, max((len(_name(node.span, lead)) for node, lead in rows), default=10))
    wide = width - names - _OTHER_COLUMNS >= _MIN_BAR
    bar = max(_MIN_BAR, min(_BAR, width - names - (_OTHER_COLUMNS if wide else _NARROW_COLUMNS)))
    columns = [
        Column("span", no_wrap=True, overflow="ellipsis", max_width=names),
        Column("kind", no_wrap=True, min_width=10),
        Column("start", justify="right", no_wrap=True, min_width=9),
        Column("duration", justify="right", no_wrap=True, min_width=8),
        Column("waterfall", no_wrap=True, min_width=bar),
        Column("tokens", no_wrap=True),
    ]
    table = Table(*(columns if wide else [columns[0], *columns[2:5]]), highlight=False)
    total = max(end - origin, 1e-6)
    for node, lead in rows:
        span = node.span
        took = None if span.end is None else (span.end - span.start) * 1000
        cells: list[str | Text] = [
            _name(span, lead),
            Text(span.kind),
            "+" + duration_ms((span.start - origin) * 1000),
            "running" if took is None else duration_ms(took),
            _bar(span, origin, total, bar),
            Text(_tokens(span)),
        ]
        table.add_row(*(cells if wide else [cells[0], *cells[2:5]]))
    return table


def _name(span: SpanRecord, lead: str) -> Text:
    name = Text(lead, style="bright_black") + Text(span.name, style=_span_style(span))
    if span.error:
        name.append(" ✗", style="bold red")
    return name


def _errors(rows: list[tuple[SpanNode, str]], origin: float) -> list[Text]:
    """The failed spans' errors in full (a table cell would cut them), in tree order."""
    return [
        Text.assemble(
            ("✗", "red"),
            " ",
            (node.span.name, "bold"),
            f" (+{duration_ms((node.span.start - origin) * 1000)}): ",
            (short(node.span.error, 500), "red"),
        )
        for node, _ in rows
        if node.span.error
    ]


def _tokens(span: SpanRecord) -> str:
    """``120 → 30`` for a model call's input and output tokens, else empty."""
    usage = span.attrs.get("usage")
    if not isinstance(usage, dict) or "input_tokens" not in usage:
        return ""
    return f"{usage.get('input_tokens')} → {usage.get('output_tokens', '?')}"


def _span_style(span: SpanRecord) -> str:
    if span.status == "error":
        return "bold red"
    return "yellow" if span.status == "running" else ""


def _bar(span: SpanRecord, origin: float, total: float, cells: int) -> Text:
    """Where *span* ran within the trace, on *cells* characters: ``····████·······``
    (``▒`` while it runs)."""
    first = min(cells - 1, int((span.start - origin) / total * cells))
    stop = span.end if span.end is not None else origin + total
    width = max(1, min(cells - first, round((stop - span.start) / total * cells)))
    style = "red" if span.status == "error" else _KIND_STYLE.get(span.kind, "white")
    mark = "▒" if span.end is None else "█"
    bar = Text("·" * first, style="bright_black")
    bar.append(mark * width, style=style)
    bar.append("·" * (cells - first - width), style="bright_black")
    return bar


def _summary_doc(summary: TraceSummary | None, trace_id: str) -> dict[str, Any]:
    import msgspec

    if summary is None:
        return {"trace_id": trace_id}
    doc: dict[str, Any] = msgspec.to_builtins(summary)
    return doc


def _span_doc(row: tuple[SpanNode, str], origin: float) -> dict[str, Any]:
    import msgspec

    node = row[0]
    span = node.span
    doc: dict[str, Any] = msgspec.to_builtins(span)
    doc["depth"] = node.depth
    doc["offset_ms"] = (span.start - origin) * 1000
    doc["duration_ms"] = None if span.end is None else (span.end - span.start) * 1000
    return doc
