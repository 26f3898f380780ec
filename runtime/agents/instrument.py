"""What agent runs record of themselves: traces, metrics and the lifecycle feed.

At submit (:class:`SubmitTelemetry`, the app side, which has no flusher): the run joins the
caller's OpenTelemetry trace when a span is active, else a trace of its own (its id made from
the run's id); a ``submit <agent>`` span, the ``queued`` lifecycle event and the
``runs_submitted`` count go in the submit's own round trip, and the envelope carries the
submit span's context.

In the worker (:class:`RunTelemetry`, one per worker process): one
:class:`~runtime.observability.tracing.RedisTracingProcessor` feeds the SDK's spans to the
worker's trace recorder; each run gets ``RunConfig(trace_id=…)`` with the run's trace id and
its SDK root spans are bound to the attempt span (with run id, agent, worker and app as
attributes). Metrics per run (label ``agent``): ``runs_started``, ``runs_completed`` /
``runs_failed`` / ``runs_cancelled``, ``run_latency``; model calls, tokens, tool calls and
turn latency come from the ended SDK spans (:func:`~runtime.observability.telemetry.span_metrics`).
Nothing here does I/O: spans and samples are buffered, lifecycle events ride on the run's
own writes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from agents.run_config import RunConfig

from runtime.agents.protocol import RunRequest, RunResult
from runtime.app import TaskContext
from runtime.keys import Keys
from runtime.observability.lifecycle import LifecycleEvent, LifecycleStatus, append_lifecycle
from runtime.observability.spans import SpanRecord, TraceSummary
from runtime.observability.telemetry import (
    Telemetry,
    app_bridge,
    new_traceparent,
    queue_count,
    queue_span,
    submit_span,
    trace_id_for,
)
from runtime.observability.tracecontext import current_traceparent, sdk_trace_id
from runtime.observability.tracing import RedisTracingProcessor, install
from runtime.redis.connection import Batch
from runtime.settings.model import Settings

__all__ = ["RunTelemetry", "SubmitTelemetry", "tracing_disabled"]

Queue = Callable[[Any], None]
"""Queues commands on a pipeline."""


class SubmitTelemetry:
    """What a submit records (see the module's docstring), for one :class:`AgentClient`."""

    def __init__(self, keys: Keys, settings: Settings) -> None:
        obs = settings.observability
        self._keys = keys
        self._settings = settings
        self._tracing = obs.tracing
        self._metering = obs.metrics
        self._maxlen = obs.events_maxlen
        self._ttl_ms = max(1, int(settings.runs.result_ttl_seconds * 1000))
        self._counts: dict[str, Queue] = {}  # agent → what queues its runs_submitted count

    def prepare(self, request: RunRequest, start: float) -> tuple[str, str | None, Queue]:
        """The envelope's ``traceparent``, the run's trace id (``None`` with tracing off)
        and what to queue in the submit's round trip after its own writes."""
        caller = current_traceparent()
        span: SpanRecord | None = None
        if self._tracing:
            attrs = {"run_id": request.run_id, "agent": request.agent}
            if request.session_id is not None:
                attrs["session_id"] = request.session_id
            span, traceparent = submit_span(
                request.agent, caller, task_id=request.run_id, start=start, attrs=attrs
            )
        else:
            traceparent = new_traceparent(caller, request.run_id)
        trace_id = span.trace_id if span is not None else None
        event = LifecycleEvent(
            run=request.run_id, agent=request.agent, status="queued", at=start,
            session=request.session_id, trace=trace_id,
        )  # fmt: skip

        if span is not None and (bridge := app_bridge(self._settings)) is not None:
            bridge.export(span)  # the app's side of the trace, in its own OpenTelemetry

        def after(pipe: Any) -> None:
            if span is not None:
                queue_span(pipe, self._keys, span, self._ttl_ms)
            if self._metering:
                self._count(request.agent)(pipe)
            append_lifecycle(pipe, self._keys, self._maxlen, event)

        return traceparent, trace_id, after

    def _count(self, agent: str) -> Queue:
        """What queues one ``runs_submitted`` of *agent* (made once per agent)."""
        queue = self._counts.get(agent)
        if queue is None:
            batch = Batch()
            queue_count(batch, self._keys, "runs_submitted", 1, agent=agent)
            (command,) = batch.commands
            if len(self._counts) < 10_000:
                self._counts[agent] = queue = partial(_send, command)
            else:
                queue = partial(_send, command)
        return queue


def _send(command: tuple[Any, ...], pipe: Any) -> None:
    pipe.execute_command(*command)


def tracing_disabled(telemetry: Telemetry | None) -> bool:
    """``RunConfig.tracing_disabled`` for a worker: the SDK makes spans when our processor
    takes them (tracing or metrics on); otherwise only when OpenAI's exporter has a key."""
    if telemetry is not None:
        return False
    return not os.environ.get("OPENAI_API_KEY")


class RunTelemetry:
    """What the runs of one worker process record (see the module's docstring)."""

    def __init__(self, telemetry: Telemetry | None, settings: Settings, app: str) -> None:
        self.telemetry = telemetry
        self.traces = telemetry.traces if telemetry is not None and telemetry.tracing else None
        self.metrics = telemetry.metrics if telemetry is not None and telemetry.metering else None
        self.processor: RedisTracingProcessor | None = None
        if telemetry is not None:
            self.processor = RedisTracingProcessor(recorder=telemetry.traces, settings=settings)
            install(self.processor)
        self.app = app
        self.events_maxlen = settings.observability.events_maxlen

    # --- the SDK's trace of a run -----------------------------------------------------------
    def trace_id(self, ctx: TaskContext, request: RunRequest) -> str:
        """The run's trace id: its attempt's, else the one made from its id."""
        return ctx.trace.trace_id if ctx.trace is not None else trace_id_for(request.run_id)

    def config(self, base: RunConfig, ctx: TaskContext, request: RunRequest) -> RunConfig:
        """The run's ``RunConfig``; with the processor, the SDK trace is bound to the attempt
        span until :meth:`unbind`."""
        metadata = {"run_id": request.run_id, "worker": ctx.consumer}
        if self.processor is None:
            return dataclasses.replace(base, group_id=request.session_id, trace_metadata=metadata)
        sdk_id = sdk_trace_id(self.trace_id(ctx, request))
        attrs = {"run_id": request.run_id, "agent": request.agent, "worker": ctx.consumer}
        attrs["app"] = self.app
        parent = ctx.trace.span_id if ctx.trace is not None else ""
        self.processor.bind(sdk_id, parent, attrs)
        return dataclasses.replace(
            base, group_id=request.session_id, trace_metadata=metadata, trace_id=sdk_id
        )

    def unbind(self, config: RunConfig) -> None:
        if self.processor is not None and config.trace_id is not None:
            self.processor.unbind(config.trace_id)

    # --- metrics and the lifecycle feed ------------------------------------------------
    def started(self, request: RunRequest) -> None:
        """A run starts (it holds its turn; it is not over nor cancelled)."""
        if self.metrics is not None:
            self.metrics.count("runs_started", 1, agent=request.agent)

    def lifecycle(
        self, pipe: Any, ctx: TaskContext, request: RunRequest, status: LifecycleStatus,
        **details: Any,
    ) -> None:  # fmt: skip
        """Queue the run's lifecycle event on *pipe* (a write the run makes anyway)."""
        event = LifecycleEvent(
            run=request.run_id, agent=request.agent, status=status, at=time.time(),
            session=request.session_id, trace=ctx.trace.trace_id if ctx.trace else None,
            worker=ctx.consumer, **details,
        )  # fmt: skip
        append_lifecycle(pipe, ctx.keys, self.events_maxlen, event)

    def finished(self, ctx: TaskContext, result: RunResult) -> None:
        """The run ended (its result was stored): its count, its latency, its trace's end."""
        status = result.status
        finished = result.finished_at or time.time()
        if self.metrics is not None:
            self.metrics.count(f"runs_{status}", 1, agent=result.agent)
            if result.started_at:
                latency = (finished - result.started_at) * 1000
                self.metrics.observe("run_latency", latency, agent=result.agent)
        if self.traces is not None and ctx.trace is not None:
            failed = status != "completed"
            summary = TraceSummary(
                trace_id=ctx.trace.trace_id, name=result.agent, run_id=result.run_id,
                agent=result.agent, start=result.submitted_at or result.started_at or finished,
                end=finished, status="error" if failed else "ok",
                error=(result.error or status) if failed else None,
            )  # fmt: skip
            self.traces.end_trace(summary)
