"""Agent apps for the observability wiring tests (``tests.observability_apps:app`` in worker
processes): three agents — triage hands off to billing, billing looks an order up with a
function tool and hands off to refunds, refunds answers — on a scripted model whose every call
reports a known usage, so the spans and metrics a run leaves can be checked exactly.
"""

from __future__ import annotations

from typing import Any

from agents import Agent, Handoff, Tool, function_tool
from agents.items import TResponseInputItem
from agents.testing import ModelStep, assistant_message, function_call
from agents.usage import Usage

from runtime.agents import AgentApp
from runtime.agents.models import StepModel

INPUT_TOKENS = {"triage": 11, "billing": 13, "refunds": 17}
"""Input tokens every model call of each agent reports; output tokens are 5 per call."""
OUTPUT_TOKENS = 5


@function_tool
def lookup_order(order_id: int) -> str:
    """Look an order up."""
    return f"order {order_id}: paid twice"


class TriageModel(StepModel):
    """triage → handoff to billing; billing → lookup_order, then handoff to refunds;
    refunds → an answer. A message containing "boom" makes refunds' model call fail."""

    model_name = "scripted"

    def step(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> ModelStep:
        items = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        agent = (instructions or "").split(".")[0].lower()
        usage = Usage(
            requests=1, input_tokens=INPUT_TOKENS[agent], output_tokens=OUTPUT_TOKENS,
            total_tokens=INPUT_TOKENS[agent] + OUTPUT_TOKENS,
        )  # fmt: skip
        call = f"call_{len(items)}"
        if agent == "triage":
            output = [function_call("transfer_to_billing", {}, call_id=call)]
        elif agent == "billing" and not any(_looked_up(i) for i in items):
            output = [function_call("lookup_order", {"order_id": 42}, call_id=call)]
        elif agent == "billing":
            output = [function_call("transfer_to_refunds", {}, call_id=call)]
        elif any("boom" in str(i.get("content")) for i in items):
            raise RuntimeError("refunds broke")
        else:
            output = [assistant_message("refund issued", item_id=f"m{len(items)}")]
        return ModelStep(output=output, usage=usage)


def _looked_up(item: Any) -> bool:
    """Whether *item* is the output of lookup_order."""
    return item.get("type") == "function_call_output" and "paid twice" in str(item.get("output"))


def make_app(delay: float = 0.0) -> AgentApp:
    """The app; every model call takes *delay* seconds."""
    refunds = Agent(name="refunds", instructions="Refunds. Issue refunds.")
    billing = Agent(
        name="billing", instructions="Billing. Look orders up.", tools=[lookup_order],
        handoffs=[refunds],
    )  # fmt: skip
    triage = Agent(name="triage", instructions="Triage. Route.", handoffs=[billing])
    model = TriageModel()
    model.delay = delay
    return AgentApp("shop", agents=[triage, billing, refunds], model=model)


app = make_app()
