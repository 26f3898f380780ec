"""The HTTP side: probes, ``/metrics`` and the dashboard, on Starlette served by uvicorn.

    state = WebState(conn.client, conn.keys, settings, probe)
    app = create_app(state)
    port = await tg.start(serve, app, "127.0.0.1", 8080)   # until cancelled

The supervisor serves it on ``supervisor.http_port``; ``agents-worker dashboard`` on
``web.port``. Every call that changes something takes :func:`require_token`.
"""

from runtime.web.app import create_app
from runtime.web.auth import require_token
from runtime.web.probes import Probe, SupervisorFigures
from runtime.web.server import (
    DASHBOARD_ENDPOINT,
    SUPERVISOR_ENDPOINT,
    Endpoint,
    bind_sockets,
    serve,
    supervisor_endpoint,
    url_of,
)
from runtime.web.state import WebState

__all__ = [
    "DASHBOARD_ENDPOINT",
    "SUPERVISOR_ENDPOINT",
    "Endpoint",
    "Probe",
    "SupervisorFigures",
    "WebState",
    "bind_sockets",
    "create_app",
    "require_token",
    "serve",
    "supervisor_endpoint",
    "url_of",
]
