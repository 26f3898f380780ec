"""The dashboard's pages and its static files (all in the package: no CDN, works offline).

    /               overview: fleet, inboxes, charts, recent runs
    /runs/{run_id}  a run: record, span waterfall, events
    /dlq            dead letters per target, with replay
    /static/…       our CSS and JS, and the vendored uPlot (static/vendor/uplot)

A page is its HTML file with ``{{version}}`` filled in (so a new release's assets are not
taken from a browser's cache); the data comes from the API and the live feed.
"""

from __future__ import annotations

import functools
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from runtime._version import __version__

__all__ = ["SECURITY_HEADERS", "page_routes"]

SECURITY_HEADERS = {
    # everything is our own: scripts and data from this origin only; inline styles for
    # the positions of the waterfall's bars and the tables' column widths
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _page(name: str) -> str:
    text = resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")
    return text.replace("{{version}}", __version__)


def _serve(name: str) -> Response:
    return HTMLResponse(_page(name), headers=SECURITY_HEADERS)


async def overview(request: Request) -> Response:
    return _serve("index.html")


async def run(request: Request) -> Response:
    return _serve("run.html")


async def dlq(request: Request) -> Response:
    return _serve("dlq.html")


def page_routes() -> list[BaseRoute]:
    """The pages and the static files."""
    return [
        Route("/", overview),
        Route("/runs/{run_id}", run),
        Route("/dlq", dlq),
        Mount("/static", StaticFiles(packages=[(__package__, "static")]), name="static"),
    ]
