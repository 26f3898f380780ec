"""Agents on the runtime: apps of SDK agents, runs from apps, models.

app = AgentApp("support", agents=[triage, billing])      # served by `agents-worker run`
handle = await AgentClient(...).run("triage", "hi", session_id="c-1")
result = await handle.result(timeout=30)
"""

from runtime.agents.app import AgentApp
from runtime.agents.client import AgentClient, RunHandle, RunNotFound
from runtime.agents.models import DemoModel, classify_model_error
from runtime.agents.protocol import HandoffInfo, RunEvent, RunRequest, RunResult

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
