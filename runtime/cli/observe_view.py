"""Formatting shared by the observability commands (``runs``, ``trace``, ``metrics``,
``status``): durations, ages, run status colours, short cells, id checks.

Run data (ids, agents, errors, results, names) reaches rich as :class:`~rich.text.Text`,
never as a markup string: ``[/INST]`` in a model's output would raise a ``MarkupError`` and
``[bold red]…[/]`` would be rendered as a style. Only the commands' own literals are markup.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import click
from rich.text import Text

from runtime.errors import KeyNameError
from runtime.keys import validate_name

__all__ = [
    "STATUS_STYLE",
    "age",
    "check_id",
    "clock",
    "duration_ms",
    "parse_window",
    "short",
    "styled_status",
]

STATUS_STYLE = {
    "queued": "cyan",
    "requeued": "cyan",
    "running": "yellow",
    "completed": "green",
    "ok": "green",
    "failed": "red",
    "error": "red",
    "cancelled": "magenta",
}
"""Rich style of each run (or span) status."""

_WINDOW = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def styled_status(status: str, shown: str | None = None) -> Text:
    """*shown* (default: *status*) as text in the colour of *status* (none when unknown)."""
    return Text(status if shown is None else shown, style=STATUS_STYLE.get(status, ""))


def duration_ms(ms: float | None) -> str:
    """``830 µs``, ``12.3 ms``, ``4.21 s``, ``3 min 20 s``; ``-`` when unknown."""
    if ms is None:
        return "-"
    if ms == 0:
        return "0 ms"
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    if ms < 1000:
        return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def age(at: float | None, now: float | None = None, suffix: str = " ago") -> str:
    """How long ago the unix time *at* was: ``4 s ago``, ``3 min ago``, ``2.5 h ago``."""
    if not at:
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - at)
    if seconds < 60:
        return f"{seconds:.0f} s{suffix}"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min{suffix}"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h{suffix}"
    return f"{seconds / 86400:.1f} d{suffix}"


def clock(at: float | None) -> str:
    """The local date and time of the unix time *at* (``-`` when unknown)."""
    if not at:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def short(text: str | None, width: int = 60) -> str:
    """*text* on one line, cut to *width* characters (``-`` when empty)."""
    if not text:
        return "-"
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def check_id(kind: str) -> Callable[[click.Context, click.Parameter, str], str]:
    """A click callback refusing an id that cannot name a key (exit status 2, one line)."""

    def callback(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
        try:
            return validate_name(kind, value)
        except KeyNameError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def parse_window(
    _ctx: click.Context | None, _param: click.Parameter | None, value: str | None
) -> float | None:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` → seconds (click callback)."""
    if value is None:
        return None
    match = _WINDOW.fullmatch(value.strip())
    if not match or float(match.group(1)) <= 0:
        raise click.BadParameter(f"{value!r} is not a window such as 90s, 15m, 2h or 1d")
    return float(match.group(1)) * _UNIT[match.group(2)]
