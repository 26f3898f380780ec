"""An app that sets up logging of its own when imported (tests/test_logging.py).

Its handler, on the root logger, writes one JSON line per record to ``$LOGGING_APP_FILE``.
"""

from __future__ import annotations

import json
import logging
import os

from runtime.app import App, TaskContext


class _JSONLines(logging.FileHandler):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"logger": record.name, "msg": record.getMessage()})


logging.getLogger().addHandler(_JSONLines(os.environ["LOGGING_APP_FILE"]))

app = App("logging-app")


@app.task("noop")
async def noop(ctx: TaskContext, payload: object) -> None:
    logging.getLogger("logging_app").warning("noop ran")
