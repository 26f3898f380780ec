"""The web app of the supervisor's HTTP port and of ``agents-worker dashboard``.

    state = WebState(conn.client, conn.keys, settings, probe)   # probe None: no supervisor
    app = create_app(state)          # /healthz, /readyz, /metrics (+ the dashboard)
    port = await tg.start(serve, app, host, port)

Routes: ``/healthz`` and ``/readyz`` (:mod:`runtime.web.probes`), ``/metrics`` (the fleet's
figures read from Redis at scrape time plus the supervisor's own gauges,
:mod:`runtime.web.metrics`) and, when ``web.dashboard`` is on, the dashboard's pages and API
(:func:`runtime.web.dashboard.dashboard_routes`). Every call that changes something takes
:func:`runtime.web.auth.require_token`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from runtime.web.dashboard import dashboard_routes
from runtime.web.metrics import metrics_route
from runtime.web.probes import probe_routes
from runtime.web.state import WebState

__all__ = ["WebState", "create_app"]


def create_app(state: WebState, *, dashboard: bool | None = None) -> Starlette:
    """The Starlette app serving *state*; the dashboard when *dashboard* (default:
    ``web.dashboard``)."""
    routes: list[BaseRoute] = [*probe_routes(state.probe, state.client), metrics_route(state)]
    if state.settings.web.dashboard if dashboard is None else dashboard:
        routes.extend(dashboard_routes(state))
    app = Starlette(routes=routes)
    app.state.web = state
    return app
