"""A 3-agent app for the tracing tests, on scripted models traced as the SDK's real models
trace themselves (no network, no key).

``triage`` hands off to ``billing``; ``billing`` calls the ``lookup_order`` tool, the
``broken_tool`` (which raises) and the ``refunds`` agent as a tool; ``refunds`` answers.
``triage`` and ``refunds`` run on a chat-style model (a ``generation`` span with its model and
usage), ``billing`` on a responses-style model (a ``response`` span whose response carries the
model and usage).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from agents import Agent, Model, ModelResponse, RunConfig, Runner, Usage, function_tool
from agents.items import TResponseOutputItem
from agents.testing import assistant_message, function_call
from agents.tracing import generation_span, response_span
from openai.types.responses import Response, ResponseUsage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

HUGE = 5 * 1024 * 1024  # characters of the huge tool's output


class TracedModel(Model):
    """Answers with its scripted outputs, one per call, and traces each call like the SDK's
    chat model (``generation`` span) or responses model (``response`` span)."""

    def __init__(
        self,
        name: str,
        steps: Sequence[list[TResponseOutputItem]],
        *,
        style: str = "generation",
        usage: tuple[int, int] = (11, 7),
    ) -> None:
        self.name = name
        self.steps = list(steps)
        self.style = style
        self.usage = usage

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        tracing = args[6] if len(args) > 6 else kwargs["tracing"]
        output = self.steps.pop(0)
        tokens_in, tokens_out = self.usage
        if self.style == "generation":
            with generation_span(model=self.name, disabled=tracing.is_disabled()) as span:
                span.span_data.usage = {"input_tokens": tokens_in, "output_tokens": tokens_out}
        else:
            with response_span(disabled=tracing.is_disabled()) as span:
                span.span_data.response = self._response(output)
        usage = Usage(
            requests=1,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            total_tokens=tokens_in + tokens_out,
        )
        return ModelResponse(output=output, usage=usage, response_id=None)

    def _response(self, output: list[TResponseOutputItem]) -> Response:
        tokens_in, tokens_out = self.usage
        usage = ResponseUsage.model_construct(
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            total_tokens=tokens_in + tokens_out,
            input_tokens_details=InputTokensDetails.model_construct(cached_tokens=0),
            output_tokens_details=OutputTokensDetails.model_construct(reasoning_tokens=0),
        )
        return Response.model_construct(
            id=f"resp_{len(self.steps)}", model=self.name, output=output, usage=usage
        )

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError


@function_tool
def lookup_order(order_id: int) -> str:
    """Look an order up."""
    return f"order {order_id}: shipped"


@function_tool
def broken_tool() -> str:
    """Always fails."""
    raise RuntimeError("the tool broke")


@function_tool
def huge_tool() -> str:
    """Returns 5 MB of text."""
    return "x" * HUGE


def support_agents() -> Agent[Any]:
    """The 3-agent app (fresh models each call); returns the starting agent, ``triage``."""
    refunds = Agent(
        name="refunds",
        instructions="Refunds.",
        model=TracedModel("gpt-refunds", [[assistant_message("refund approved")]]),
    )
    billing = Agent(
        name="billing",
        instructions="Billing.",
        tools=[
            lookup_order,
            broken_tool,
            huge_tool,
            refunds.as_tool(tool_name="refunds", tool_description="Ask refunds."),
        ],
        model=TracedModel(
            "gpt-billing",
            [
                [
                    function_call("lookup_order", {"order_id": 7}, call_id="c1"),
                    function_call("broken_tool", {}, call_id="c2"),
                ],
                [function_call("refunds", {"input": "refund order 7"}, call_id="c3")],
                [assistant_message("billing done")],
            ],
            style="response",
            usage=(23, 5),
        ),
    )
    return Agent(
        name="triage",
        instructions="Triage.",
        handoffs=[billing],
        model=TracedModel("gpt-triage", [[function_call("transfer_to_billing", {}, call_id="h1")]]),
    )


def huge_agent() -> Agent[Any]:
    """One agent that calls ``huge_tool`` once, then answers."""
    return Agent(
        name="huge",
        instructions="Huge.",
        tools=[huge_tool],
        model=TracedModel(
            "gpt-huge",
            [[function_call("huge_tool", {}, call_id="u1")], [assistant_message("done")]],
        ),
    )


async def run_support(trace_id: str) -> tuple[float, float]:
    """Run the support app under SDK trace ``trace_<trace_id>``; the wall-clock window."""
    began = time.time()
    config = RunConfig(workflow_name="support", trace_id=f"trace_{trace_id}")
    result = await Runner.run(support_agents(), "refund order 7", run_config=config)
    assert result.final_output == "billing done"
    return began, time.time()
