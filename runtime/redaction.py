"""Keep secrets out of reprs, logs and terminal output."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["redact_text", "redact_url"]

_MASK = "***"
# scheme://[user[:password]@]host… — the password part, wherever it appears in free text.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s/]+)(?=@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<secret>[^&\s]+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Return *url* with its password (user-info or ``?password=``) masked.

    >>> redact_url("redis://:s3cret@cache:6379/0")
    'redis://:***@cache:6379/0'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is not None:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        url = url.replace(parts.netloc, f"{user}:{_MASK}@{hostport}", 1)
    return _QUERY_PASSWORD.sub(lambda m: m["head"] + _MASK, url)


def redact_text(text: str) -> str:
    """Mask every URL password found anywhere in *text* (log lines, error messages)."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + _MASK, text)
    return _QUERY_PASSWORD.sub(lambda m: m["head"] + _MASK, text)
