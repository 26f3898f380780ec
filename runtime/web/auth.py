"""The token that every call changing something (replay, cancel, purge) must carry.

    async def replay(request: Request) -> Response:
        require_token(request, state.settings)   # raises HTTPException 401 / 403
        ...

The token is ``web.token`` (a secret setting), sent as ``Authorization: Bearer <token>``.
Without ``web.token`` every change is refused: the dashboard is read-only. Reading needs no
token; the endpoints bind to 127.0.0.1 by default (``web.host``, ``supervisor.http_host``).
"""

from __future__ import annotations

import hmac

from starlette.exceptions import HTTPException
from starlette.requests import Request

from runtime.settings.model import Settings

__all__ = ["TOKEN_UNSET", "require_token"]

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
