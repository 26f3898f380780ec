"""The token that every call changing something (replay, cancel, purge) must carry.

    async def replay(request: Request) -> Response:
        require_token(request, state.settings)   # raises HTTPException 401 / 403
        ...

The token is ``web.token`` (a secret setting), sent as ``Authorization: Bearer <token>``.
Without ``web.token`` every change is refused: the dashboard is read-only. Reading needs no
token; the endpoints bind to 127.0.0.1 by default (``web.host``, ``supervisor.http_host``).

On a loopback address, :func:`guard_host` also refuses (400) a request whose ``Host`` header
names another host: a page of another site that a DNS-rebinding attack points at 127.0.0.1
sends its own host name, and so cannot read the runs. On other addresses nothing is checked:
whatever stands in front of the port (a proxy, an ingress) decides who comes in.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp

from runtime.settings.model import Settings

__all__ = ["LOOPBACK_NAMES", "TOKEN_UNSET", "guard_host", "is_loopback", "require_token"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
"""The ``Host`` names (any port) a server bound to loopback answers, besides its own host."""

TOKEN_UNSET = (
    "changes are turned off: no web.token is set (set AGENTS_WORKER_WEB_TOKEN, or web.token in "
    "the settings file, and send it as 'Authorization: Bearer <token>')"
)


def require_token(request: Request, settings: Settings) -> None:
    """Let *request* change something only when it carries ``web.token``.

    Raises:
        HTTPException: 401 without a bearer token, 403 with a wrong one or when no
            ``web.token`` is set (every change refused), each with a message saying so.
    """
    expected = settings.web.token
    if not expected:
        raise HTTPException(403, TOKEN_UNSET)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise HTTPException(
            401,
            "this call changes something: send the token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="agents-worker"'},
        )
    # compared in constant time: the time taken says nothing about how much matched
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise HTTPException(403, "wrong token (it must equal web.token)")


def is_loopback(host: str) -> bool:
    """Is *host* (a bind address) loopback only: ``localhost``, 127.0.0.0/8 or ``::1``?"""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: whatever it resolves to, it is not ours to judge
        return False


def guard_host(app: ASGIApp, host: str) -> ASGIApp:
    """*app* behind a ``Host`` header check when *host* (the bind address) is loopback.

    Allowed: ``localhost``, ``127.0.0.1``, ``[::1]`` and *host* itself, on any port; any
    other ``Host`` gets 400 (DNS rebinding). A non-loopback *host* gets *app* as it is.
    """
    if not is_loopback(host):
        return app
    own = host.lower()
    if ":" in own and not own.startswith("["):
        own = f"[{own}]"  # an IPv6 literal, as a Host header spells it
    allowed = list(dict.fromkeys([*LOOPBACK_NAMES, own]))
    return TrustedHostMiddleware(app, allowed_hosts=allowed, www_redirect=False)
