"""Structured logging: one event name plus fields, rendered as a console line or JSON.

    log = get_logger(__name__)
    log.info("redis.started", port=6379, startup_ms=12.5)

renders ``… INFO  runtime.redis  redis.started port=6379 startup_ms=12.5`` on a console, or a
JSON object per line with ``observability.log_format = "json"``. URL passwords in messages
and fields are masked.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from runtime.redaction import redact_text

__all__ = ["StructLogger", "configure_logging", "get_logger"]

_HANDLER_NAME = "agents-worker"


class StructLogger:
    """A thin wrapper of :class:`logging.Logger` taking an event name and keyword fields."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    @property
    def name(self) -> str:
        return self._logger.name

    def isEnabledFor(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)

    def _log(self, level: int, event: str, fields: dict[str, Any], exc_info: bool) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(
                level, event, extra={"aw_fields": fields}, exc_info=exc_info, stacklevel=3
            )

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields, False)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields, False)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields, False)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, False)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, True)


def get_logger(name: str) -> StructLogger:
    """The structured logger named *name* (use ``__name__``)."""
    return StructLogger(logging.getLogger(name))


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "aw_fields", None)
    return fields if isinstance(fields, dict) else {}


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return redact_text(text)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS.mmm LEVEL logger event key=value …``"""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        pairs = " ".join(f"{key}={_quoted(_text(v))}" for key, v in _fields(record).items())
        line = (
            f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {record.name}  "
            f"{redact_text(record.getMessage())}"
        )
        if pairs:
            line += " " + pairs
        if record.exc_info:
            line += "\n" + redact_text(self.formatException(record.exc_info))
        return line


def _quoted(text: str) -> str:
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``event`` and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact_text(record.getMessage()),
        }
        for key, value in _fields(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return redact_text(json.dumps(doc, default=str))


def configure_logging(
    level: str = "INFO", fmt: str = "console", stream: TextIO | None = None
) -> None:
    """Print log records on *stream* (stderr) in *fmt*, at *level* for ``runtime`` and ``workers``.

    For processes the runtime owns: the ``agents-worker`` command and the worker processes
    call it at start-up. A library user does not need it (and the library never calls it):
    the runtime's loggers only emit records, which reach whatever handlers the application
    set up, like any library's.

    Like :func:`logging.basicConfig`, it puts one handler on the root logger, and only when
    the root has none: a worker process calls it after importing its app, so an app that set
    up logging at import (``logging.basicConfig(level=…, format=…)``, a handler of its own)
    keeps its setup, and the runtime's records, which keep propagating, reach its handlers
    in its format; only the levels of ``runtime`` and ``workers`` are set then. An app that
    uses :func:`logging.config.dictConfig` must pass ``"disable_existing_loggers": False``
    (or name the ``runtime`` logger in its configuration): by default dictConfig disables
    every logger already created, the runtime's included. Other libraries' records print at
    the root's level (WARNING by default). Idempotent: calling it again replaces the handler
    it installed before.
    """
    for name in ("runtime", "workers"):
        logging.getLogger(name).setLevel(level)
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == _HANDLER_NAME]
    if len(ours) < len(root.handlers):
        return  # the application's own logging setup: keep it
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JSONFormatter() if fmt == "json" else ConsoleFormatter())
    for old in ours:
        root.removeHandler(old)
    root.addHandler(handler)
