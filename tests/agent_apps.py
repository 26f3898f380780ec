"""Agent apps for the agent-runtime tests, with deterministic models (no network, no key).

``EchoModel`` answers "reply to <last user message>" (or, after an app handoff, "continuing
after <from>"), optionally slowly, and records the input of every call in ``calls``, so tests
can check what each model call saw.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2 as httpx
import openai
from agents import (
    Agent,
    Handoff,
    Tool,
    function_tool,
)
from agents.items import TResponseInputItem
from agents.testing import ModelStep, assistant_message, function_call

from runtime.agents import AgentApp
from runtime.agents.models import StepModel


class EchoModel(StepModel):
    """Answers from the input; ``behaviour`` picks a failure mode for the failure tests."""

    def __init__(self, behaviour: str = "echo", delay: float = 0.0) -> None:
        self.behaviour = behaviour
        self.delay = delay
        self.calls: list[list[dict[str, Any]]] = []
        self.failures_left = 1

    def step(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> ModelStep:
        items = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        self.calls.append([dict(i) for i in items])
        if self.behaviour == "raise":
            raise ValueError("the model broke")
        if self.behaviour == "rate_limited" and self.failures_left:
            self.failures_left -= 1
            request = httpx.Request("POST", "http://model.invalid/v1/responses")
            response = httpx.Response(429, request=request, headers={"retry-after": "0.05"})
            raise openai.RateLimitError("slow down", response=response, body=None)
        if self.behaviour == "loop":
            return ModelStep(output=[function_call("ping", {}, call_id=f"c{len(items)}")])
        last = next(
            (i for i in reversed(items) if i.get("role") in ("user", "system")), {"content": ""}
        )
        content = last.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        if last.get("role") == "system":
            text = f"continuing after {text.split('.')[0].removeprefix('Handoff from ')}"
        else:
            text = f"reply to {text}"
        return ModelStep(output=[assistant_message(text, item_id=f"m{len(items)}")])


@function_tool
def ping() -> str:
    """Answer pong."""
    return "pong"


def make_app(behaviour: str = "echo", delay: float = 0.0) -> tuple[AgentApp, EchoModel]:
    """A triage agent that can hand off to billing, both on one EchoModel."""
    model = EchoModel(behaviour, delay)
    billing = Agent(name="billing", instructions="Billing.", tools=[ping])
    triage = Agent(name="triage", instructions="Triage.", handoffs=[billing], tools=[ping])
    return AgentApp("tests", agents=[triage, billing], model=model), model


# For worker processes (``python -m runtime.worker --app tests.agent_apps:slow_app``): every
# model call takes a minute, so a test can kill the worker in the middle of a run.
slow_app, _ = make_app(delay=60)
