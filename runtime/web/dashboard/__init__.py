"""The live web dashboard: `agents-worker dashboard`, and on the supervisor's HTTP port.

    app = Starlette(routes=dashboard_routes(WebState(client, keys, settings)))

Pages (:mod:`~runtime.web.dashboard.pages`): the overview (fleet and workers with their state;
each inbox's lag, pending entries, oldest pending age and dead letters; runs per minute and
latency charts from TimeSeries; the recent runs, filtered by status and agent), a run's page
(its record, events and span tree as a waterfall, with cancel) and the dead letters per target
(with replay). Changes (replay, cancel) need ``web.token`` (:func:`runtime.web.auth.require_token`);
the page asks for it once and keeps it for the browser tab.

The pages update by themselves through server-sent events (:mod:`~runtime.web.dashboard.live`):
one reader per connection, reading Redis at most once a second and sending only what changed.
Every read is bounded (:mod:`~runtime.web.dashboard.bounds`), so the dashboard stays fast with
100,000 runs in Redis: ``XREVRANGE … COUNT``, one run's own keys, never ``KEYS`` or ``SCAN``.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from runtime.web.dashboard.api import api_routes
from runtime.web.dashboard.pages import page_routes
from runtime.web.dashboard.readers import DashboardReader
from runtime.web.state import WebState

__all__ = ["DashboardReader", "dashboard_routes"]


def dashboard_routes(state: WebState) -> list[BaseRoute]:
    """The dashboard's pages, static files, JSON API and live feed, reading *state*'s Redis."""
    reader = DashboardReader(state.client, state.keys, state.settings)
    return [*api_routes(reader, state.settings, state.closing), *page_routes()]
