"""An app that calls ``logging.basicConfig`` when imported (tests/test_logging.py): the worker
process must keep that setup, not override it."""

from __future__ import annotations

import logging

from runtime.app import App, TaskContext

logging.basicConfig(level=logging.INFO, format="APPFMT %(name)s %(levelname)s %(message)s")
logging.getLogger("logging_basic_app").info("app imported")

app = App("logging-basic-app")


@app.task("noop")
async def noop(ctx: TaskContext, payload: object) -> None:
    logging.getLogger("logging_basic_app").info("noop ran")
