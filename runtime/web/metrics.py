"""``/metrics``: the fleet's figures from Redis and the supervisor's own, for Prometheus.

Built with ``prometheus-client``: at each scrape the route reads the fleet's totals and latest
gauges (:class:`~runtime.observability.timeseries.MetricsStore`), and a :class:`FleetCollector`
turns them into metric families, written in the Prometheus text format, or in OpenMetrics when
the ``Accept`` header asks for it (``application/openmetrics-text``).

- counters: ``agents_worker_<metric>_total`` (e.g. ``agents_worker_runs_completed_total
  {agent="triage"}``), summed over every process of the fleet;
- latencies: histograms in seconds, ``agents_worker_<metric>_seconds_bucket{le=…}``, ``_sum``
  and ``_count`` (recorded in milliseconds, converted here);
- gauges: ``agents_worker_inbox_lag{target=…}``, ``agents_worker_inbox_pending``,
  ``agents_worker_inbox_oldest_pending_age_seconds`` (the latest value sampled by any
  supervisor, left out once no supervisor sampled it for a minute or three sample intervals);
- the supervisor's own: ``agents_worker_workers{state="ready"|"running"|"paused"}``,
  ``agents_worker_worker_restarts_total``, ``agents_worker_backlog``;
- ``agents_worker_redis_up``: 1 when the figures above could be read from Redis, else 0 (the
  scrape still answers, with the supervisor's own gauges only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import anyio
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from runtime.errors import RedisError
from runtime.log import get_logger
from runtime.observability.metrics import LATENCY_BUCKETS_MS, METRICS
from runtime.observability.timeseries import MetricsStore, Total
from runtime.web.probes import SupervisorFigures
from runtime.web.state import WebState

__all__ = ["PREFIX", "FleetCollector", "FleetFigures", "metrics_route", "read_figures"]

log = get_logger(__name__)

PREFIX = "agents_worker_"
_MIN_GAUGE_AGE = 60.0
"""Gauges older than this (and than three sample intervals) are left out of a scrape."""
_READ_LIMIT = 5.0
"""Seconds a scrape waits for Redis before it answers without the fleet's figures."""


@dataclass
class FleetFigures:
    """What one scrape read from Redis (empty, with ``redis_up`` False, when it could not)."""

    totals: list[Total] = field(default_factory=list)
    gauges: list[Total] = field(default_factory=list)
    redis_up: bool = True


class FleetCollector:
    """A ``prometheus_client`` collector of figures already read (collect() does no I/O)."""

    def __init__(self, fleet: FleetFigures, supervisor: SupervisorFigures | None = None) -> None:
        self.fleet = fleet
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        yield from _counters(self.fleet.totals)
        yield from _histograms(self.fleet.totals)
        yield from _gauges(self.fleet.gauges)
        if self.supervisor is not None:
            yield from _supervisor(self.supervisor)
        up = Metric(f"{PREFIX}redis_up", "Whether the fleet's figures could be read.", "gauge")
        up.add_sample(f"{PREFIX}redis_up", {}, 1.0 if self.fleet.redis_up else 0.0)
        yield up


class _Failures:
    """Logs a failing read once per episode, and its recovery."""

    failing = False


async def read_figures(store: MetricsStore, failures: _Failures | None = None) -> FleetFigures:
    """The fleet's totals and gauges; a Redis fault gives empty figures with ``redis_up``
    False (logged once per episode when *failures* is given)."""
    try:
        with anyio.fail_after(_READ_LIMIT):
            figures = FleetFigures(await store.totals(), await store.gauges())
    except (RedisError, TimeoutError) as exc:
        if failures is not None and not failures.failing:
            log.warning("metrics.read_failed", error=str(exc) or "timed out")
            failures.failing = True
        return FleetFigures(redis_up=False)
    if failures is not None and failures.failing:
        log.info("metrics.read_recovered")
        failures.failing = False
    return figures


def metrics_route(state: WebState) -> BaseRoute:
    """The ``/metrics`` route of *state*."""
    failures = _Failures()
    # an inbox nobody samples any more (its supervisors gone) shows no stale gauges
    max_age = max(_MIN_GAUGE_AGE, 3 * state.settings.observability.sample_interval_seconds)
    store = MetricsStore(state.client, state.keys, gauge_max_age_seconds=max_age)

    async def metrics(request: Request) -> Response:
        fleet = await read_figures(store, failures)
        probe = state.probe
        collector = FleetCollector(fleet, None if probe is None else probe.figures())
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(collector), media_type=content_type)

    return Route("/metrics", metrics, methods=["GET", "HEAD"])


def _name(metric: str) -> str:
    return PREFIX + metric


def _counters(totals: Iterable[Total]) -> Iterator[Metric]:
    families: dict[str, Metric] = {}
    for total in totals:
        spec = METRICS.get(total.metric)
        if spec is None or spec.kind != "counter":
            continue
        family = families.get(total.metric)
        if family is None:
            family = families[total.metric] = Metric(_name(total.metric), spec.help, "counter")
        family.add_sample(_name(total.metric) + "_total", dict(total.labels), total.value)
    yield from families.values()


def _histograms(totals: Iterable[Total]) -> Iterator[Metric]:
    """Latency totals (ms) as histograms in seconds, every bucket bound present.

    The totals hold a cumulative bucket once an observation fell in it or below; a bound
    missing from them had none, so it is served as 0.
    """
    families: dict[str, Metric] = {}
    for total in totals:
        found = _latency_part(total)
        if found is None:
            continue
        metric, part, labels = found
        name = _name(metric) + "_seconds"
        family = families.get(metric)
        if family is None:
            help_text = METRICS[metric].help.replace("(ms)", "(seconds)")
            family = families[metric] = Metric(name, help_text, "histogram")
        value = total.value / 1000 if part == "sum" else total.value
        family.add_sample(f"{name}_{part}", labels, value)
    for family in families.values():
        _fill_buckets(family)
        family.samples.sort(key=_histogram_order)
        family.samples[:] = _consistent(family.name, family.samples)
        yield family


def _fill_buckets(family: Metric) -> None:
    bucket = family.name + "_bucket"
    label_sets: dict[str, dict[str, str]] = {}
    present: set[tuple[str, str]] = set()
    for sample in family.samples:
        key = _label_key(sample)
        label_sets[key] = {k: v for k, v in sample.labels.items() if k != "le"}
        if sample.name == bucket:
            present.add((key, sample.labels["le"]))
    for key, rest in label_sets.items():
        for bound_ms in LATENCY_BUCKETS_MS:
            le = _seconds_bound(repr(bound_ms))
            if (key, le) not in present:
                family.add_sample(bucket, {**rest, "le": le}, 0.0)


def _consistent(name: str, samples: list[Sample]) -> list[Sample]:
    """*samples* (sorted by :func:`_histogram_order`, every bucket present) as histograms the
    parsers accept.

    A flush adds to a latency's fields one by one (no transaction), so a scrape may read some
    already raised and others not yet: per label set the buckets are made non-decreasing, and
    the +Inf bucket and ``_count`` both the larger of the two, so that every figure lies
    between what it was before the flush and what it is after it; a ``_sum`` not written yet
    is 0.
    """
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(_label_key(sample), []).append(sample)
    consistent: list[Sample] = []
    for group in groups.values():
        buckets = [sample for sample in group if sample.name.endswith("_bucket")]
        found = {sample.name: sample.value for sample in group}
        highest = 0.0
        for bucket in buckets[:-1]:  # the finite bounds, in order (+Inf is last)
            highest = max(highest, bucket.value)
            consistent.append(bucket._replace(value=highest))
        top = buckets[-1]
        total = max(highest, top.value, found.get(f"{name}_count", 0.0))
        rest = {k: v for k, v in top.labels.items() if k != "le"}
        consistent.append(top._replace(value=total))
        consistent.append(Sample(f"{name}_sum", rest, found.get(f"{name}_sum", 0.0)))
        consistent.append(Sample(f"{name}_count", rest, total))
    return consistent


def _label_key(sample: Sample) -> str:
    return repr(sorted((k, v) for k, v in sample.labels.items() if k != "le"))


def _gauges(gauges: Iterable[Total]) -> Iterator[Metric]:
    families: dict[str, Metric] = {}
    for gauge in gauges:
        spec = METRICS.get(gauge.metric)
        if spec is None or spec.kind != "gauge":
            continue
        name = _name(gauge.metric) + ("_seconds" if gauge.metric.endswith("_age") else "")
        family = families.get(gauge.metric)
        if family is None:
            family = families[gauge.metric] = Metric(name, spec.help, "gauge")
        family.add_sample(name, dict(gauge.labels), gauge.value)
    yield from families.values()


def _supervisor(figures: SupervisorFigures) -> Iterator[Metric]:
    workers = Metric(_name("workers"), "Worker processes by state.", "gauge")
    for state, value in (
        ("ready", figures.ready),
        ("running", figures.running),
        ("paused", figures.paused),
    ):
        workers.add_sample(_name("workers"), {"state": state}, value)
    yield workers
    restarts = Metric(
        _name("worker_restarts"), "Worker processes restarted after a crash.", "counter"
    )
    restarts.add_sample(_name("worker_restarts_total"), {}, figures.restarts)
    yield restarts
    backlog = Metric(
        _name("backlog"), "Entries waiting or in flight (last autoscaler reading).", "gauge"
    )
    backlog.add_sample(_name("backlog"), {}, figures.backlog)
    yield backlog


_PARTS = ("bucket", "sum", "count")


def _latency_part(total: Total) -> tuple[str, str, dict[str, str]] | None:
    """``(metric, "bucket" | "sum" | "count", labels)`` of a latency total, else ``None``.

    Bucket bounds are recorded in milliseconds (label ``le``) and served in seconds.
    """
    metric, _, part = total.metric.rpartition("_")
    spec = METRICS.get(metric)
    if spec is None or spec.kind != "latency" or part not in _PARTS:
        return None
    labels = dict(total.labels)
    if part == "bucket":
        if "le" not in labels:
            return None
        labels["le"] = _seconds_bound(labels["le"])
    return metric, part, labels


def _seconds_bound(le_ms: str) -> str:
    bound = float(le_ms)
    return "+Inf" if math.isinf(bound) else repr(bound / 1000)


def _histogram_order(sample: Sample) -> tuple[str, int, float]:
    """Per label set: its buckets by bound, then its sum and count (as OpenMetrics wants)."""
    rest = _label_key(sample)
    part = _PARTS.index(sample.name.rsplit("_", 1)[-1])
    le = sample.labels.get("le")
    return rest, part, math.inf if le is None or le == "+Inf" else float(le)
