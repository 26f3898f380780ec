"""Model selection and model-error classification."""

from __future__ import annotations

import httpx2 as httpx
import openai
import pytest
from agents import OpenAIProvider

from runtime import PermanentError, RetryLater
from runtime.agents import DemoModel, classify_model_error
from runtime.agents.models import run_config_for
from runtime.settings import load_settings


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://model.invalid/v1/responses")
    response = httpx.Response(status, request=request, headers=headers or {})
    return openai.APIStatusError(f"status {status}", response=response, body=None)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
def test_retryable_statuses(status: int) -> None:
    decision = classify_model_error(status_error(status))
    assert isinstance(decision, RetryLater)
    assert decision.delay is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_client_errors_are_permanent(status: int) -> None:
    assert isinstance(classify_model_error(status_error(status)), PermanentError)


def test_retry_after_is_honoured() -> None:
    seconds = classify_model_error(status_error(429, {"retry-after": "7"}))
    millis = classify_model_error(status_error(503, {"retry-after-ms": "250"}))
    nonsense = classify_model_error(status_error(429, {"retry-after": "soon"}))
    assert isinstance(seconds, RetryLater) and seconds.delay == 7.0
    assert isinstance(millis, RetryLater) and millis.delay == 0.25
    assert isinstance(nonsense, RetryLater) and nonsense.delay is None


def test_unreachable_model_is_retryable_and_other_errors_are_not_model_errors() -> None:
    request = httpx.Request("POST", "http://model.invalid/v1/responses")
    assert isinstance(classify_model_error(openai.APITimeoutError(request)), RetryLater)
    assert isinstance(classify_model_error(openai.APIConnectionError(request=request)), RetryLater)
    assert classify_model_error(ValueError("not a model error")) is None


def test_model_choice() -> None:
    models = load_settings(env={}).models
    config, note = run_config_for(models, {})
    assert isinstance(config.model, DemoModel) and "offline demo model" in note
    config, note = run_config_for(models, {"OPENAI_API_KEY": "sk-test"})
    assert config.model == "gpt-4.1-mini" and note == "OpenAI gpt-4.1-mini"
    compatible = load_settings(
        env={}, overrides={"models.base_url": "http://localhost:11434/v1", "models.model": "llama3"}
    ).models
    config, note = run_config_for(compatible, {"OPENAI_API_KEY": "sk-test"})
    assert isinstance(config.model_provider, OpenAIProvider)
    assert note == "llama3 at http://localhost:11434/v1"
    litellm = load_settings(env={}, overrides={"models.model": "litellm/anthropic/x"}).models
    assert run_config_for(litellm, {})[1] == "litellm/anthropic/x through LiteLLM"
    forced = load_settings(env={}, overrides={"models.provider": "demo"}).models
    assert isinstance(run_config_for(forced, {"OPENAI_API_KEY": "sk"})[0].model, DemoModel)
