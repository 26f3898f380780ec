"""The typed settings of agents-worker: one frozen tree of :mod:`msgspec` structs.

Each field carries its documentation (``Meta(description=…)``); ``docs/configuration.md`` is
generated from it, so a setting cannot exist undocumented.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from runtime.settings.observability import ObservabilitySettings, WebSettings
from runtime.settings.section import SECRET, URL, PositiveFloat, Section

ModuleName = Literal["search", "json", "timeseries", "bloom"]

__all__ = [
    "EmbeddedRedisSettings",
    "ModelSettingsSection",
    "ObservabilitySettings",
    "RedisSettings",
    "RunSettings",
    "Settings",
    "StreamSettings",
    "SupervisorSettings",
    "WebSettings",
    "WorkerSettings",
]


class EmbeddedRedisSettings(Section, frozen=True, kw_only=True):
    """The Redis Stack server that agents-worker starts itself when no URL is given."""

    data_dir: Annotated[
        str,
        Meta(
            description="Folder of the embedded server's AOF files, log and pid file; "
            "relative paths are taken from the current directory."
        ),
    ] = ".agents-worker/redis"
    host: Annotated[
        str,
        Meta(
            description="Address the embedded server binds to. It has no TLS: keep it on "
            "loopback unless a password is set."
        ),
    ] = "127.0.0.1"
    port: Annotated[
        int,
        Meta(ge=0, le=65535, description="TCP port of the embedded server; 0 picks a free port."),
    ] = 0
    unix_socket: Annotated[
        bool,
        Meta(description="Listen on a unix socket in `data_dir` instead of a TCP port."),
    ] = False
    password: Annotated[
        str | None,
        Meta(description="Password (`requirepass`) of the embedded server.", extra=SECRET),
    ] = None
    appendonly: Annotated[
        bool,
        Meta(description="Keep an append-only file so data survives a restart of the server."),
    ] = True
    modules: Annotated[
        list[ModuleName],
        Meta(
            description="Redis modules to load: any of `search`, `json`, `timeseries`, `bloom`. "
            "An empty list runs a plain Redis."
        ),
    ] = msgspec.field(default_factory=lambda: ["search", "json", "timeseries", "bloom"])
    server_binary: Annotated[
        str | None,
        Meta(
            description="Path of a `redis-server` binary to run instead of the bundled Redis "
            "Stack one (e.g. `/usr/bin/redis-server` with `modules = []`)."
        ),
    ] = None
    startup_timeout: Annotated[
        PositiveFloat,
        Meta(description="Seconds to wait for the embedded server to answer PING."),
    ] = 10.0
    openssl_dir: Annotated[
        str,
        Meta(
            description="Folder holding `libssl.so.1.1` and `libcrypto.so.1.1` for the bundled "
            "server when the system lacks them (fetched there by `agents-worker redis setup`)."
        ),
    ] = ".agents-worker/openssl"
    fetch_openssl: Annotated[
        bool,
        Meta(
            description="Fetch OpenSSL 1.1 into `openssl_dir` from Debian's security archive "
            "when the system lacks it (Debian/Ubuntu only)."
        ),
    ] = True


class RedisSettings(Section, frozen=True, kw_only=True):
    """How to reach Redis."""

    url: Annotated[
        str | None,
        Meta(
            description="URL of the Redis server (`redis://`, `rediss://` or `unix://`). When "
            "unset, the plain `REDIS_URL` variable is used; when both are unset, an embedded "
            "Redis Stack is started.",
            extra=URL,
        ),
    ] = None
    key_prefix: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=64,
            description="Prefix of every Redis key the runtime writes; lets several deployments "
            "share one server.",
        ),
    ] = "aw"
    socket_timeout: Annotated[
        PositiveFloat,
        Meta(description="Seconds to wait for a reply to one command (blocking reads excepted)."),
    ] = 5.0
    connect_timeout: Annotated[
        PositiveFloat, Meta(description="Seconds to wait for a connection to Redis.")
    ] = 5.0
    max_connections: Annotated[
        int,
        Meta(ge=1, description="Most connections one process keeps open to Redis."),
    ] = 64
    health_check_interval: Annotated[
        int,
        Meta(
            ge=0,
            description="Seconds of idleness after which a pooled connection is checked with "
            "PING before use; 0 disables the check.",
        ),
    ] = 30
    embedded: EmbeddedRedisSettings = msgspec.field(default_factory=EmbeddedRedisSettings)


class WorkerSettings(Section, frozen=True, kw_only=True):
    """One worker process (used by `agents-worker run`)."""

    concurrency: Annotated[
        int,
        Meta(ge=1, le=10_000, description="Entries one worker process handles at the same time."),
    ] = 16
    lease_seconds: Annotated[
        float,
        Meta(
            ge=1,
            description="Lease on an entry in flight, renewed every third of it; an entry whose "
            "worker stopped renewing is reclaimed by another after this long.",
        ),
    ] = 15.0
    max_deliveries: Annotated[
        int,
        Meta(
            ge=1,
            description="Deliveries of one entry before it goes to the dead-letter stream.",
        ),
    ] = 5
    shutdown_grace_seconds: Annotated[
        float,
        Meta(
            ge=0,
            description="On SIGTERM, how long in-flight entries may run before they are "
            "cancelled and released to other workers.",
        ),
    ] = 30.0
    block_ms: Annotated[
        int,
        Meta(
            ge=1,
            le=60_000,
            description="Longest wait of one XREADGROUP for new entries (milliseconds); new "
            "entries end the wait at once.",
        ),
    ] = 2000
    reclaim_interval_seconds: Annotated[
        float,
        Meta(
            gt=0,
            description="How often the reclaimer looks for entries whose lease expired "
            "(XAUTOCLAIM), even when no new work arrives.",
        ),
    ] = 0.5
    task_timeout_seconds: Annotated[
        float,
        Meta(
            gt=0,
            description="Longest run of one handler call unless the handler sets its own; a "
            "timed-out attempt counts as a retryable failure.",
        ),
    ] = 300.0
    retry_backoff_seconds: Annotated[
        float,
        Meta(
            ge=0,
            description="Delay before the first retry of a failed entry; doubled per attempt, "
            "with jitter.",
        ),
    ] = 1.0
    retry_backoff_max_seconds: Annotated[
        float, Meta(ge=0, description="Longest delay between two retries.")
    ] = 300.0
    max_entries: Annotated[
        int,
        Meta(
            ge=0,
            description="Recycle a worker process (drain, exit, replace) after it handled this "
            "many entries; 0 never.",
        ),
    ] = 0
    max_rss_mb: Annotated[
        int,
        Meta(
            ge=0,
            description="Recycle a worker process whose resident memory exceeds this many MiB; "
            "0 never.",
        ),
    ] = 0


class StreamSettings(Section, frozen=True, kw_only=True):
    """Streams, groups and their bounds."""

    group: Annotated[
        str,
        Meta(
            min_length=1,
            description="Consumer group the workers of every inbox stream read through.",
        ),
    ] = "workers"
    max_entry_bytes: Annotated[
        int,
        Meta(
            ge=256,
            description="Largest envelope accepted; larger ones are refused at enqueue and "
            "dead-lettered by workers.",
        ),
    ] = 1_048_576
    dlq_maxlen: Annotated[
        int,
        Meta(ge=1, description="Approximate bound (MAXLEN ~) of each dead-letter stream."),
    ] = 100_000
    idempotency_window_seconds: Annotated[
        float,
        Meta(
            gt=0,
            description="How long an idempotency key makes duplicate enqueues return the "
            "first task.",
        ),
    ] = 86_400.0


class ModelSettingsSection(Section, frozen=True, kw_only=True):
    """Which model runs the agents, unless the app sets one (it runs every agent of the app)."""

    provider: Annotated[
        Literal["auto", "openai", "compatible", "litellm", "demo"],
        Meta(
            description="`auto`: an OpenAI-compatible server when `base_url` is set, OpenAI "
            "when `OPENAI_API_KEY` is set, LiteLLM for `litellm/…` model names, else the "
            "offline demo model. `demo` forces the offline model."
        ),
    ] = "auto"
    model: Annotated[
        str,
        Meta(
            min_length=1,
            description="Model name, e.g. `gpt-4.1-mini`, or `litellm/anthropic/…` for LiteLLM.",
        ),
    ] = "gpt-4.1-mini"
    base_url: Annotated[
        str | None,
        Meta(
            description="Base URL of an OpenAI-compatible server (Chat Completions API).",
            extra=URL,
        ),
    ] = None
    api_key: Annotated[
        str | None,
        Meta(
            description="API key for `base_url` (OpenAI itself reads `OPENAI_API_KEY`).",
            extra=SECRET,
        ),
    ] = None


class RunSettings(Section, frozen=True, kw_only=True):
    """Agent runs: limits, retention, conversations."""

    max_turns: Annotated[
        int, Meta(ge=1, description="Model turns one run may take before it fails.")
    ] = 10
    timeout_seconds: Annotated[
        float,
        Meta(
            gt=0,
            description="Longest one agent run may take; it then ends with a timeout error.",
        ),
    ] = 120.0
    result_ttl_seconds: Annotated[
        int,
        Meta(
            ge=60,
            description="How long a run's record, result and event stream are kept.",
        ),
    ] = 86_400
    events_maxlen: Annotated[
        int,
        Meta(ge=100, description="Approximate bound of one run's event stream."),
    ] = 10_000
    session_ttl_seconds: Annotated[
        Annotated[int, Meta(ge=1)] | None,
        Meta(description="Expire a conversation this long after its last write; unset: never."),
    ] = None
    stream_deltas: Annotated[
        bool,
        Meta(
            description="Default for runs that do not say: run with `Runner.run_streamed` and "
            "publish text deltas on the run's event stream (costs about 2 ms per run). A run "
            "asks for it with `AgentClient.run(..., stream=True)` or `submit --follow`."
        ),
    ] = False
    coordination_stream: Annotated[
        str,
        Meta(
            min_length=1,
            description="Name of the coordination stream workers publish lifecycle events to.",
        ),
    ] = "agent_events"


class SupervisorSettings(Section, frozen=True, kw_only=True):
    """The supervisor process of `agents-worker run`."""

    workers: Annotated[
        int, Meta(ge=1, le=256, description="Worker processes the supervisor keeps running.")
    ] = 2
    http_host: Annotated[
        str,
        Meta(
            description="Address of the `/healthz`, `/readyz` and `/metrics` endpoints and, "
            "with `web.dashboard`, the dashboard. Keep it on loopback unless a proxy in front "
            "of it checks who comes in: the pages show runs' inputs and results. On a loopback "
            "address the Host header is checked as for `web.host`; the images in `deploy/` "
            "bind 0.0.0.0 and set `web.dashboard = false`."
        ),
    ] = "127.0.0.1"
    http_port: Annotated[
        int,
        Meta(
            ge=0,
            le=65535,
            description="Port of the `/healthz`, `/readyz` and `/metrics` endpoints and, with "
            "`web.dashboard`, the dashboard; 0 turns them off.",
        ),
    ] = 8080
    min_workers: Annotated[
        Annotated[int, Meta(ge=0, le=256)] | None,
        Meta(
            description="Fewest worker processes when autoscaling; unset: `workers` (no "
            "autoscaling unless `max_workers` is set).",
        ),
    ] = None
    max_workers: Annotated[
        Annotated[int, Meta(ge=1, le=256)] | None,
        Meta(
            description="Most worker processes when autoscaling on backlog (lag + pending); "
            "unset: `workers`.",
        ),
    ] = None
    scale_interval_seconds: Annotated[
        float, Meta(gt=0, description="How often the autoscaler reads the backlog.")
    ] = 2.0
    scale_down_after_seconds: Annotated[
        float,
        Meta(
            ge=0,
            description="Backlog must stay low this long before a worker is removed.",
        ),
    ] = 30.0
    ready_timeout_seconds: Annotated[
        float,
        Meta(gt=0, description="How long a new worker may take to report READY."),
    ] = 30.0
    restart_backoff_seconds: Annotated[
        float,
        Meta(
            ge=0,
            description="Delay before restarting a crashed worker; doubled per crash in a row, "
            "at most 30 s.",
        ),
    ] = 0.5
    crash_loop_restarts: Annotated[
        int,
        Meta(
            ge=1,
            description="Crashes within `crash_loop_window_seconds` after which the "
            "supervisor gives up and exits 1. Only a worker that dies before READY, or within "
            "`crash_loop_min_uptime_seconds` after it without having started any work, counts; "
            "one that served (killed by an operator or the OOM killer, or by an entry) is "
            "restarted with backoff, never given up on.",
        ),
    ] = 5
    crash_loop_window_seconds: Annotated[
        float, Meta(gt=0, description="The window over which crashes are counted.")
    ] = 60.0
    crash_loop_min_uptime_seconds: Annotated[
        float,
        Meta(
            ge=0,
            description="A worker that dies sooner than this after reporting READY, before "
            "its first handler started, counts as a crash towards `crash_loop_restarts`; one "
            "that ran longer, or died running work (an entry that kills its worker is "
            "dead-lettered by `worker.max_deliveries`), does not.",
        ),
    ] = 10.0


class Settings(Section, frozen=True, kw_only=True):
    """Every setting of agents-worker.

    Loaded by :func:`runtime.load_settings` from defaults ← TOML file ← ``AGENTS_WORKER_*``
    environment variables ← command-line flags::

        settings = load_settings(overrides={"worker.concurrency": 32})
        settings.worker.concurrency  # 32
    """

    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    worker: WorkerSettings = msgspec.field(default_factory=WorkerSettings)
    streams: StreamSettings = msgspec.field(default_factory=StreamSettings)
    runs: RunSettings = msgspec.field(default_factory=RunSettings)
    models: ModelSettingsSection = msgspec.field(default_factory=ModelSettingsSection)
    supervisor: SupervisorSettings = msgspec.field(default_factory=SupervisorSettings)
    observability: ObservabilitySettings = msgspec.field(default_factory=ObservabilitySettings)
    web: WebSettings = msgspec.field(default_factory=WebSettings)
