"""Agents on the runtime: apps of SDK agents, runs from apps, models.

app = AgentApp("support", agents=[triage, billing])      # served by `agents-worker run`
handle = await AgentClient(...).run("triage", "hi", session_id="c-1")
result = await handle.result(timeout=30)

Importing this package registers what a handoff published on the coordinator does (a run
that continues the conversation: :mod:`runtime.agents.handoffs`). Its public names are
imported on first use, so that registering loads no Agents SDK.
"""

import typing as _typing

from runtime._lazy import lazy_exports as _lazy_exports
from runtime.agents import handoffs as _handoffs

if _typing.TYPE_CHECKING:
    from runtime.agents.app import AgentApp
    from runtime.agents.client import AgentClient, RunHandle, RunNotFound
    from runtime.agents.models import DemoModel, classify_model_error
    from runtime.agents.protocol import HandoffInfo, RunEvent, RunRequest, RunResult

_EXPORTS = {
    "AgentApp": "runtime.agents.app",
    "AgentClient": "runtime.agents.client",
    "RunHandle": "runtime.agents.client",
    "RunNotFound": "runtime.agents.client",
    "DemoModel": "runtime.agents.models",
    "classify_model_error": "runtime.agents.models",
    "HandoffInfo": "runtime.agents.protocol",
    "RunEvent": "runtime.agents.protocol",
    "RunRequest": "runtime.agents.protocol",
    "RunResult": "runtime.agents.protocol",
}

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())

_handoffs.register()

__all__ = [
    "AgentApp",
    "AgentClient",
    "DemoModel",
    "HandoffInfo",
    "RunEvent",
    "RunHandle",
    "RunNotFound",
    "RunRequest",
    "RunResult",
    "classify_model_error",
]
