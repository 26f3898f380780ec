"""The seed's ``PrometheusExporter``: an :class:`AgentMetrics` in the Prometheus text format.

Stub: the implementation follows.
"""

from __future__ import annotations

from runtime.observability.agent_metrics import AgentMetrics

__all__ = ["PrometheusExporter"]


class PrometheusExporter:
    """Renders one :class:`AgentMetrics`' figures for a Prometheus scrape."""

    def __init__(self, metrics: AgentMetrics, prefix: str = "agent") -> None:
        self.metrics = metrics
        self.prefix = prefix

    def generate(self) -> str:
        """The Prometheus text exposition of the agent's figures."""
        return ""
