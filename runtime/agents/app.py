"""An app of agents: the agents a worker serves, each with its own inbox.

    from agents import Agent
    from runtime.agents import AgentApp

    billing = Agent(name="billing", instructions="…", tools=[refund])
    triage = Agent(name="triage", instructions="…", handoffs=[billing])
    app = AgentApp("support", agents=[triage, billing])

    # agents-worker run support.workers:app

Agent names must be unique and usable as target names (letters, digits, ``-``, ``_``, ``.``);
every agent another one hands off to must be served too, so in-run handoffs stay in the
worker's agent graph. The model is the app's ``model``, else the one the settings choose
(``[models]``); it runs every agent of the app (the SDK's ``RunConfig.model``), so a model
set on an agent itself is not used: a warning says so when the app is built.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio
from agents import Agent, Handoff, Model
from agents.run_config import RunConfig

from runtime.agents.execute import Resources, execute
from runtime.agents.instrument import RunTelemetry, tracing_disabled
from runtime.agents.models import run_config_for
from runtime.agents.protocol import RunRequest, RunResult
from runtime.agents.runs import RunStore
from runtime.agents.turns import SessionTurns
from runtime.app import App, DeadLetterContext, TaskContext
from runtime.coordinator import AgentCoordinator
from runtime.errors import AppError, KeyNameError
from runtime.keys import Keys, validate_name
from runtime.log import get_logger
from runtime.observability.lifecycle import LifecycleEvent, append_lifecycle
from runtime.observability.telemetry import trace_id_for
from runtime.observability.tracecontext import parse_traceparent

__all__ = ["AgentApp"]

log = get_logger(__name__)

_CORE_TIMEOUT = 7 * 24 * 3600.0


class AgentApp(App):
    """Serve *agents* (and run them on the SDK ``Runner``) in worker processes."""

    def __init__(
        self,
        name: str = "agents",
        *,
        agents: Sequence[Agent[Any]],
        model: Model | str | None = None,
        timeout: float | None = None,
    ) -> None:
        """*timeout*: a hard limit per run attempt in the worker core, above the run's own
        ``runs.timeout_seconds`` (which ends a run with a clear ``failed`` result)."""
        super().__init__(name=name)
        self.agents: dict[str, Agent[Any]] = {}
        self.model = model
        self._resources: dict[tuple[int, int], Resources] = {}
        for agent in agents:
            self._add_agent(agent, timeout)
        self._check_handoffs()
        for agent in self.agents.values():
            if agent.model is not None and agent.model != model:
                log.warning(
                    "agents.own_model_not_used",
                    agent=agent.name,
                    why="the worker runs every agent with the app's model, else the one the "
                    "[models] settings choose",
                )

    def _add_agent(self, agent: Agent[Any], timeout: float | None) -> None:
        try:
            validate_name("agent", agent.name)
        except KeyNameError as exc:
            raise AppError(
                f"{exc}: agent names are their inbox names; use e.g. {_slug(agent.name)!r}"
            ) from None
        if agent.name in self.agents:
            raise AppError(f"two agents are named {agent.name!r}: names must be unique")
        self.agents[agent.name] = agent

        async def handle(ctx: TaskContext, request: RunRequest) -> None:
            await execute(ctx, request, agent, self._resources_for(ctx))

        # A run ends itself after runs.timeout_seconds with a clear error; the worker core's
        # per-entry timeout (worker.task_timeout_seconds) must not cut it off first.
        self.add_handler(
            agent.name,
            handle,
            timeout=timeout or _CORE_TIMEOUT,
            on_dead_letter=self._dead_lettered,
            ends_trace=True,  # with the run's outcome (runtime.agents.instrument)
        )

    def _check_handoffs(self) -> None:
        for agent in self.agents.values():
            for target in agent.handoffs:
                name = target.agent_name if isinstance(target, Handoff) else target.name
                if name not in self.agents:
                    raise AppError(
                        f"agent {agent.name!r} hands off to {name!r}, which this app does not "
                        "serve: add it to agents=[…]"
                    )

    def _resources_for(self, ctx: TaskContext) -> Resources:
        """Per worker (its Redis client, its telemetry): run store, turns, model, publisher,
        what its runs record."""
        key = id(ctx.redis), id(ctx.telemetry)  # a worker's own: its recorders flush its runs'
        res = self._resources.get(key)
        if res is None:
            settings = ctx.settings
            config, note = self._run_config(settings.models, tracing_disabled(ctx.telemetry))
            res = Resources(
                runs=RunStore(
                    ctx.redis,
                    ctx.keys,
                    settings.runs,
                    events_maxlen=settings.observability.events_maxlen,
                ),
                turns=SessionTurns(
                    ctx.redis,
                    ctx.keys,
                    lease_seconds=settings.worker.lease_seconds,
                    session_ttl=settings.runs.session_ttl_seconds,
                ),
                run_config=config,
                model_note=note,
                observe=RunTelemetry(ctx.telemetry, settings, self.name),
                publisher=_publisher(ctx.redis, ctx.keys, settings.runs.coordination_stream),
            )
            self._resources[key] = res
            log.info("agents.model", app=self.name, model=note)
        return res

    def _run_config(self, models: Any, no_tracing: bool) -> tuple[RunConfig, str]:
        # The SDK makes spans for our processor (tracing or metrics on), else only for its
        # default exporter to OpenAI, which needs a key (runtime.agents.instrument).
        options: dict[str, Any] = {"workflow_name": self.name, "tracing_disabled": no_tracing}
        if isinstance(self.model, Model):
            return RunConfig(model=self.model, **options), type(self.model).__name__
        if isinstance(self.model, str):
            models = msgspec.structs.replace(models, model=self.model)
        return run_config_for(models, dict(os.environ), **options)

    async def _dead_lettered(self, info: DeadLetterContext) -> None:
        """A run whose entry was dead-lettered ends as failed, so nobody waits for it (and
        its conversation moves past it); one that had ended keeps its outcome."""
        runs = RunStore(
            info.redis, info.keys, info.settings.runs,
            events_maxlen=info.settings.observability.events_maxlen,
        )  # fmt: skip
        request = await _request_of(info, runs)
        if request is None:
            return
        what = info.detail or info.reason  # e.g. "failed 5 times (worker.max_deliveries = 5)"
        result = RunResult(
            run_id=request.run_id,
            status="failed",
            agent=request.agent,
            session_id=request.session_id,
            error=f"{what}: {info.error}" if info.error else what,
            error_type="DeadLettered",
            submitted_at=request.submitted_at,
            finished_at=time.time(),
        )
        event = LifecycleEvent(
            run=request.run_id, agent=request.agent, status="failed", at=result.finished_at or 0,
            session=request.session_id, trace=_trace_id(info), error=result.error,
        )  # fmt: skip
        maxlen = info.settings.observability.events_maxlen

        def also(pipe: Any) -> None:
            append_lifecycle(pipe, info.keys, maxlen, event)

        if not await runs.store(result, also=also):
            # the run had ended (e.g. completed: a late letter): its outcome stands, and has
            # the last word in the feed, after the 'failed' queued with the refused store
            await runs.feed_outcome(request.run_id)
            return
        tel = info.telemetry
        if tel is not None and tel.metering:
            tel.metrics.count("runs_failed", 1, agent=request.agent)


async def _request_of(info: DeadLetterContext, runs: RunStore) -> RunRequest | None:
    """The run a dead letter was for: its request, or, when the payload is not a valid one
    (``invalid_payload``), what the run's record says, the task id being the run id."""
    try:
        return msgspec.convert(info.envelope.payload, RunRequest)
    except msgspec.ValidationError:
        pass
    record = await runs.get(info.envelope.id)
    if record is None or record.agent != info.envelope.target:
        return None  # not a run submitted through the runtime: no record to end
    return RunRequest(
        run_id=record.run_id,
        agent=record.agent,
        input=None,
        session_id=record.session_id,
        submitted_at=record.submitted_at,
    )


def _trace_id(info: DeadLetterContext) -> str | None:
    """The trace of a dead-lettered run (with tracing on)."""
    if info.telemetry is None or not info.telemetry.tracing:
        return None
    parent = parse_traceparent(info.envelope.traceparent)
    return parent.trace_id if parent is not None else trace_id_for(info.envelope.id)


def _publisher(client: redis.asyncio.Redis, keys: Keys, stream_name: str) -> AgentCoordinator:
    # workers only announce in-run handoffs: those runs go on already
    return AgentCoordinator(
        stream_name=stream_name, client=client, keys=keys, continue_handoffs=False
    )


def _slug(name: str) -> str:
    return "-".join(name.lower().split()).replace(":", "-").replace("{", "").replace("}", "")
