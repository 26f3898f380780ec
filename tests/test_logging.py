"""Structured logs: event name plus fields, console or JSON, secrets masked."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from runtime import configure_logging, get_logger, redact_url
from runtime.redaction import redact_text


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    configure_logging("INFO", "console")  # back to the default handler on stderr


def test_console_line(stream: io.StringIO) -> None:
    configure_logging("INFO", "console", stream)
    get_logger("runtime.test").info("redis.started", port=6379, note="two words", ms=1.23456)
    line = stream.getvalue().strip()
    assert line.endswith(
        'INFO    runtime.test  redis.started port=6379 note="two words" ms=1.23456'
    )


def test_json_lines_and_levels(stream: io.StringIO) -> None:
    configure_logging("WARNING", "json", stream)
    log = get_logger("runtime.test")
    log.info("hidden")
    log.warning("lease.lost", entry="1-0", url="redis://:pw@h:1/0")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handler.failed", entry="2-0")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "lease.lost" and first["level"] == "warning"
    assert first["entry"] == "1-0" and first["url"] == "redis://:***@h:1/0"
    assert second["event"] == "handler.failed" and "ValueError: boom" in second["exception"]


def test_configure_is_idempotent(stream: io.StringIO) -> None:
    configure_logging("INFO", "console", stream)
    configure_logging("INFO", "console", stream)
    ours = [h for h in logging.getLogger("runtime").handlers if h.get_name() == "agents-worker"]
    assert len(ours) == 1


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://default:s3cret@cache:6380", "rediss://default:***@cache:6380"),
        ("unix:///tmp/r.sock?db=0&password=s3cret", "unix:///tmp/r.sock?db=0&password=***"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "s3cret" not in redact_text(f"cannot reach {url} now")
