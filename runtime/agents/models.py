"""Models: which one a worker uses, an offline demo model, and how model errors are classified.

- ``OPENAI_API_KEY`` set → the SDK's OpenAI provider (``models.model`` names the model);
- ``models.base_url`` set → any OpenAI-compatible server (Chat Completions);
- ``models.model`` starting with ``litellm/`` → LiteLLM (needs ``openai-agents[litellm]``);
- none of these → :class:`DemoModel`, a deterministic offline model that routes by keywords,
  calls the agent's tools and hands off, so the demo runs with no key and no network.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import agents
import anyio
import openai
from agents import (
    Handoff,
    Model,
    ModelResponse,
    ModelSettings,
    ModelTracing,
    OpenAIProvider,
    Tool,
    Usage,
)
from agents.agent_output import AgentOutputSchemaBase
from agents.items import TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from agents.run_config import RunConfig
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from agents.tracing import generation_span

from runtime.errors import PermanentError, RetryLater
from runtime.settings.model import ModelSettingsSection

__all__ = [
    "DemoModel",
    "StepModel",
    "classify_model_error",
    "model_description",
    "run_config_for",
]

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "help",
        "i",
        "in",
        "is",
        "it",
        "me",
        "my",
        "of",
        "on",
        "or",
        "the",
        "to",
        "with",
        "you",
        "your",
        "agent",
        "handles",
        "questions",
        "about",
    ]
)


class StepModel(Model):
    """A model that decides each call's output in :meth:`step` (deterministic, offline).

    The SDK's ``ScriptedModel`` turns the step into a response or a stream of events, so a
    subclass only says *what* to answer; ``delay`` makes every call take that long. Each call
    is a ``generation`` span named after :attr:`model_name`, with the step's usage (as the
    SDK's own models record theirs), when the run is traced.
    """

    delay: float = 0.0
    model_name: str = "step-model"

    def step(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> ModelStep:
        raise NotImplementedError

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> ModelResponse:
        with generation_span(model=self.model_name, disabled=tracing.is_disabled()) as span:
            if self.delay:
                await anyio.sleep(self.delay)
            step = self.step(system_instructions, input, tools, handoffs)
            span.span_data.usage = _span_usage(step.usage)
            return await ScriptedModel([step]).get_response(
                system_instructions, input, model_settings, tools, output_schema, handoffs,
                tracing, previous_response_id=previous_response_id,
                conversation_id=conversation_id, prompt=prompt,
            )  # fmt: skip

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> AsyncIterator[TResponseStreamEvent]:
        with generation_span(model=self.model_name, disabled=tracing.is_disabled()) as span:
            if self.delay:
                await anyio.sleep(self.delay)
            step = self.step(system_instructions, input, tools, handoffs)
            span.span_data.usage = _span_usage(step.usage)
            async for event in ScriptedModel([step]).stream_response(
                system_instructions, input, model_settings, tools, output_schema, handoffs,
                tracing, previous_response_id=previous_response_id,
                conversation_id=conversation_id, prompt=prompt,
            ):  # fmt: skip
                yield event


def _span_usage(usage: Usage) -> dict[str, int]:
    """A step's usage as a generation span records it (a step without usage: one request)."""
    return {
        "requests": usage.requests or 1,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    }


class DemoModel(StepModel):
    """A deterministic offline model for the demo and for trying the runtime without a key.

    Per call it decides, from what the agent offers and the conversation so far:

    1. an agent with handoffs hands off to the one whose description shares most words with
       the user's latest message (if any shares one);
    2. an agent with tools that has not called one this turn calls the best-matching tool,
       filling string arguments with the user's message and numbers with the first number in it;
    3. otherwise it answers, quoting the tool results of this turn.

    Its answers start with "(offline demo model)" so no one mistakes them for a real model's.
    """

    model_name = "demo"

    def step(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> ModelStep:
        return _decide(instructions, input, tools, handoffs)


def _items(input: str | list[TResponseInputItem]) -> list[dict[str, Any]]:
    if isinstance(input, str):
        return [{"role": "user", "content": input}]
    return [dict(item) for item in input]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _words(text: str) -> set[str]:
    """Content words, cut to 5 letters so "invoice"/"invoices" and "charged"/"charges" meet."""
    return {w[:5] for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


def _this_turn(items: list[dict[str, Any]], handoffs: set[str]) -> tuple[str, list[str]]:
    """The latest user (or system, for app handoffs) message, and tool outputs since then.

    Outputs of handoff calls do not count: after a handoff the new agent still acts.
    """
    last = 0
    for index, item in enumerate(items):
        if item.get("role") in ("user", "system") and item.get("type", "message") == "message":
            last = index
    message = _text(items[last].get("content")) if items else ""
    # the SDK names handoff tools transfer_to_<agent>; an earlier agent's are not offered now
    handoff_calls = {
        item.get("call_id")
        for item in items[last:]
        if item.get("type") == "function_call"
        and (item.get("name") in handoffs or str(item.get("name", "")).startswith("transfer_to_"))
    }
    outputs = [
        str(item.get("output", ""))
        for item in items[last:]
        if item.get("type") == "function_call_output" and item.get("call_id") not in handoff_calls
    ]
    return message, outputs


def _best(message: str, candidates: Sequence[tuple[str, str]]) -> str | None:
    wanted = _words(message)
    scored = [(len(wanted & _words(text)), name) for name, text in candidates]
    top = max(scored, default=(0, None))
    return top[1] if top[0] > 0 else None


def _arguments(schema: dict[str, Any], message: str) -> dict[str, Any]:
    number = re.search(r"\d+", message)
    args: dict[str, Any] = {}
    for name, spec in (schema.get("properties") or {}).items():
        kind = spec.get("type")
        if kind in ("integer", "number"):
            args[name] = int(number.group()) if number else 0
        elif kind == "boolean":
            args[name] = False
        else:
            args[name] = message
    return args


def _decide(
    instructions: str | None,
    input: str | list[TResponseInputItem],
    tools: list[Tool],
    handoffs: list[Handoff],
) -> ModelStep:
    items = _items(input)
    message, outputs = _this_turn(items, {h.tool_name for h in handoffs})
    call_id = f"call_{len(items)}"  # grows within a run: unique per run
    usage = Usage(
        requests=1,
        input_tokens=sum(len(_text(i.get("content")).split()) for i in items) + 1,
        output_tokens=8,
        total_tokens=sum(len(_text(i.get("content")).split()) for i in items) + 9,
    )
    output: list[TResponseOutputItem]
    if handoffs and not outputs:
        offered = [(h.tool_name, f"{h.agent_name} {h.tool_description}") for h in handoffs]
        target = _best(message, offered)
        if target is not None:
            output = [function_call(target, {}, call_id=call_id)]
            return ModelStep(output=output, usage=usage)
    function_tools = [t for t in tools if isinstance(t, agents.FunctionTool)]
    if function_tools and not outputs:
        chosen = _best(message, [(t.name, f"{t.name} {t.description}") for t in function_tools])
        tool = next((t for t in function_tools if t.name == chosen), function_tools[0])
        arguments = _arguments(tool.params_json_schema, message)
        output = [function_call(tool.name, arguments, call_id=call_id)]
        return ModelStep(output=output, usage=usage)
    role = (instructions or "an assistant").split(".")[0]
    found = f" Here is what I found: {'; '.join(outputs)}." if outputs else ""
    reply = f"(offline demo model) {role}: about “{message[:80]}”.{found}"
    return ModelStep(output=[assistant_message(reply, item_id=f"msg_{len(items)}")], usage=usage)


def run_config_for(
    models: ModelSettingsSection, environ: dict[str, str], **options: Any
) -> tuple[RunConfig, str]:
    """The SDK ``RunConfig`` for *models* and a one-line description of the choice."""
    provider = models.provider
    if provider == "auto":
        if models.base_url:
            provider = "compatible"
        elif environ.get("OPENAI_API_KEY"):
            provider = "openai"
        elif models.model.startswith("litellm/"):
            provider = "litellm"
        else:
            provider = "demo"
    if provider == "demo":
        return RunConfig(model=DemoModel(), **options), "offline demo model (no API key needed)"
    if provider == "compatible":
        client = openai.AsyncOpenAI(
            base_url=models.base_url, api_key=models.api_key or "unused", max_retries=0
        )
        model_provider = OpenAIProvider(openai_client=client, use_responses=False)
        config = RunConfig(model=models.model, model_provider=model_provider, **options)
        return config, f"{models.model} at {models.base_url}"
    if provider == "litellm":
        return RunConfig(model=models.model, **options), f"{models.model} through LiteLLM"
    return RunConfig(model=models.model, **options), f"OpenAI {models.model}"


def model_description(models: ModelSettingsSection, environ: dict[str, str]) -> str:
    """Which model the workers will use, in words."""
    return run_config_for(models, environ)[1]


_RETRYABLE_STATUS = frozenset({408, 409, 429})


def classify_model_error(exc: BaseException) -> RetryLater | PermanentError | None:
    """Turn a model API error into the runtime's retry decision.

    Rate limits, timeouts, connection errors and 5xx are retryable, after ``retry-after`` when
    the server sent one; other 4xx are not. Returns ``None`` for errors that are not model API
    errors.
    """
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError):
        return RetryLater(f"model API unreachable: {exc}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in _RETRYABLE_STATUS or status >= 500:
            return RetryLater(f"model API {status}: {exc.message}", delay=_retry_after(exc))
        return PermanentError(f"model API {status}: {exc.message}")
    return None


def _retry_after(exc: Any) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None
