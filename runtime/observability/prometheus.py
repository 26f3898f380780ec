"""The seed's ``PrometheusExporter``: an :class:`AgentMetrics` in the Prometheus text format.

    exporter = PrometheusExporter(AgentMetrics("triage", redis_url=url))
    print(exporter.generate())

Built with ``prometheus_client`` (a registry of its own holding one collector), so the text
always parses with ``prometheus_client.parser``. The families, with the label ``agent``:
``<prefix>_requests_total`` (counter), ``<prefix>_latency_milliseconds{stat=avg|min|max}``
(gauge), ``<prefix>_tokens_total{type=input|output}`` (counter),
``<prefix>_cache_hit_ratio`` (gauge) and ``<prefix>_request_latency_milliseconds``
(histogram, the buckets of
:data:`~runtime.observability.metrics.LATENCY_BUCKETS_MS`). The fleet's own `/metrics`
endpoint is the web server's; this is the seed's per-agent façade.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from runtime.observability.agent_metrics import AgentMetrics

__all__ = ["PrometheusExporter"]


class _AgentCollector(Collector):
    def __init__(self, metrics: AgentMetrics, prefix: str) -> None:
        self.metrics = metrics
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        stats = self.metrics.get_stats()
        agent, p = [self.metrics.name], self.prefix
        requests = CounterMetricFamily(
            f"{p}_requests", "Total number of agent requests", labels=["agent"]
        )
        requests.add_metric(agent, stats["count"])
        yield requests
        latency = GaugeMetricFamily(
            f"{p}_latency_milliseconds", "Request latency in milliseconds", labels=["agent", "stat"]
        )
        for stat in ("avg", "min", "max"):
            latency.add_metric([*agent, stat], stats[f"latency_{stat}"])
        yield latency
        tokens = CounterMetricFamily(
            f"{p}_tokens", "Total tokens processed", labels=["agent", "type"]
        )
        tokens.add_metric([*agent, "input"], stats["input_tokens_sum"])
        tokens.add_metric([*agent, "output"], stats["output_tokens_sum"])
        yield tokens
        ratio = GaugeMetricFamily(
            f"{p}_cache_hit_ratio", "Cache hit ratio (0.0 to 1.0)", labels=["agent"]
        )
        ratio.add_metric(agent, stats["cache_hit_rate"])
        yield ratio
        yield self._histogram(agent)

    def _histogram(self, agent: list[str]) -> Metric:
        buckets, total, _ = self.metrics.latency_histogram()
        histogram = HistogramMetricFamily(
            f"{self.prefix}_request_latency_milliseconds",
            "Request latency in milliseconds",
            labels=["agent"],
        )
        if buckets:
            histogram.add_metric(agent, buckets, sum_value=total)
        return histogram


class PrometheusExporter:
    """Renders one :class:`AgentMetrics`' figures for a Prometheus scrape."""

    def __init__(self, metrics: AgentMetrics, prefix: str = "agent") -> None:
        self.metrics = metrics
        self.prefix = prefix

    def generate(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of the agent's figures."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_AgentCollector(self.metrics, self.prefix))
        return generate_latest(registry).decode()
