"""The settings of logs, traces, metrics and the web endpoints (probes, `/metrics`, dashboard)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from runtime.settings.section import SECRET, Section

__all__ = ["ObservabilitySettings", "WebSettings"]


class ObservabilitySettings(Section, frozen=True, kw_only=True):
    """Logs, traces and metrics."""

    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR"],
        Meta(description="Lowest level of log records written."),
    ] = "INFO"
    log_format: Annotated[
        Literal["console", "json"],
        Meta(
            description="`console`: one readable line per event; `json`: one JSON object per "
            "line, for log collectors."
        ),
    ] = "console"
    tracing: Annotated[
        bool,
        Meta(
            description="Record the spans of every run (the SDK's agent, model, tool and "
            "handoff spans, and the runtime's submit, inbox, attempt, retry and dead-letter "
            "spans) in Redis, kept as long as the run's record (`runs.result_ttl_seconds`)."
        ),
    ] = True
    traces_maxlen: Annotated[
        int,
        Meta(
            ge=100,
            description="Length (approximate) of the stream of recent traces that "
            "`list_traces`, `agents-worker runs` and the dashboard read.",
        ),
    ] = 10_000
    events_maxlen: Annotated[
        int,
        Meta(
            ge=100,
            description="Length (approximate) of the stream of run lifecycle events (queued, "
            "running, completed, failed, cancelled) behind the recent-runs views.",
        ),
    ] = 10_000
    flush_interval_seconds: Annotated[
        float,
        Meta(
            gt=0,
            le=60,
            description="How often a process writes the spans and metric samples it has "
            "buffered (they are written off the agent's event loop, in batches, and once more "
            "on shutdown).",
        ),
    ] = 0.5
    otel_exporter: Annotated[
        Literal["none", "otlp", "console"],
        Meta(
            description="Where the spans also go through OpenTelemetry: `none` (unless the app "
            "installed its own OpenTelemetry tracer provider, which is then used), `otlp` "
            "(needs the `otel` extra; endpoint from `otel_endpoint` or the standard "
            "`OTEL_EXPORTER_OTLP_*` variables), `console` (printed, for debugging)."
        ),
    ] = "none"
    otel_endpoint: Annotated[
        str | None,
        Meta(description="OTLP/HTTP endpoint of the collector, e.g. `http://127.0.0.1:4318`."),
    ] = None
    service_name: Annotated[
        str,
        Meta(
            min_length=1,
            description="`service.name` of the OpenTelemetry resource (the worker, app and "
            "agent are resource or span attributes).",
        ),
    ] = "agents-worker"
    metrics: Annotated[
        bool,
        Meta(
            description="Record metrics in Redis TimeSeries (one labelled series per process) "
            "and in fleet totals. Without the TimeSeries module the totals are still kept and "
            "the history is off (said once in the log)."
        ),
    ] = True
    metrics_retention_seconds: Annotated[
        float,
        Meta(gt=0, description="How long raw metric samples are kept."),
    ] = 86_400.0
    metrics_rollup_seconds: Annotated[
        float,
        Meta(
            ge=0,
            description="Bucket of the roll-up series (`TS.CREATERULE … AGGREGATION`) that "
            "keeps metrics past the raw retention; 0 turns roll-ups off.",
        ),
    ] = 60.0
    metrics_rollup_retention_seconds: Annotated[
        float,
        Meta(gt=0, description="How long roll-up samples are kept."),
    ] = 30 * 86_400.0
    sample_interval_seconds: Annotated[
        float,
        Meta(
            gt=0,
            description="How often the supervisor samples each inbox's lag, pending count and "
            "oldest pending age, and publishes its workers' state for the dashboard.",
        ),
    ] = 5.0


class WebSettings(Section, frozen=True, kw_only=True):
    """The web dashboard (`agents-worker dashboard`, and on the supervisor's HTTP port)."""

    host: Annotated[
        str,
        Meta(
            description="Address `agents-worker dashboard` listens on. On a loopback address "
            "(127.0.0.0/8, ::1, localhost) a request must name localhost, 127.0.0.1, [::1] or "
            "this address in its Host header (others get 400: no DNS rebinding); on any other "
            "address nothing is checked, so put an authenticating proxy in front."
        ),
    ] = "127.0.0.1"
    port: Annotated[
        int,
        Meta(ge=0, le=65535, description="Port of `agents-worker dashboard`; 0 picks a free one."),
    ] = 8081
    dashboard: Annotated[
        bool,
        Meta(
            description="Serve the dashboard on the supervisor's port too (`supervisor.http_port`)."
        ),
    ] = True
    token: Annotated[
        str | None,
        Meta(
            description="Token that every call changing something (replay, cancel, purge) "
            "must carry (`Authorization: Bearer …`, or typed once in the page). Unset: such "
            "calls are refused and the dashboard is read-only.",
            extra=SECRET,
        ),
    ] = None
