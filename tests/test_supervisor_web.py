"""The supervisor's HTTP port (issue 11): probes, ``/metrics`` with the fleet's figures its own
sampler wrote, and the dashboard when ``web.dashboard`` is on (404 when it is off)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from runtime import Keys
from tests.conftest import free_port
from tests.helpers import wait_until
from tests.supervision import FAST, Running, http_get, producer, supervise, supervisors

SAMPLE = [
    *FAST,
    "observability.sample_interval_seconds=0.2",
    "worker.shutdown_grace_seconds=1",  # the held entry is released, not waited for
]


@pytest.fixture
def runs() -> Iterator[list[Running]]:
    with supervisors() as started:
        yield started


def _values(text: str, name: str) -> dict[str, float]:
    """Samples named *name*: their ``target`` label → value."""
    return {
        sample.labels.get("target", ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


@pytest.mark.timeout(120)
async def test_the_supervisor_serves_the_dashboard_and_the_fleets_metrics(
    runs: list[Running], redis_url: str, keys: Keys, client: redis.asyncio.Redis
) -> None:
    port = free_port()
    run = supervise(runs, redis_url, keys.prefix, "-w", "1", "--http-port", str(port), sets=SAMPLE)
    await run.wait_for(r"worker\.ready slot=")
    status, page = await http_get(port, "/")
    assert status == 200 and "<html" in page.lower()
    assert (await http_get(port, "/healthz")) == (200, "ok\n")
    await producer(redis_url, keys, client).enqueue("slow", 30)  # held: pending 1

    async def sampled() -> bool:
        _, text = await http_get(port, "/metrics")
        return _values(text, "agents_worker_inbox_pending").get("slow") == 1

    await wait_until(sampled, limit=30, what="the sampler's inbox_pending on /metrics")
    _, text = await http_get(port, "/metrics")
    assert _values(text, "agents_worker_inbox_lag")["slow"] == 0
    assert _values(text, "agents_worker_inbox_oldest_pending_age_seconds")["slow"] >= 0
    assert _values(text, "agents_worker_redis_up") == {"": 1.0}
    assert await run.stop() == 0


async def test_without_web_dashboard_the_port_serves_only_probes_and_metrics(
    runs: list[Running], redis_url: str, keys: Keys
) -> None:
    port = free_port()
    sets = [*FAST, "web.dashboard=false"]
    run = supervise(runs, redis_url, keys.prefix, "-w", "1", "--http-port", str(port), sets=sets)
    await run.wait_for(r"worker\.ready slot=")
    assert (await http_get(port, "/"))[0] == 404
    assert (await http_get(port, "/readyz")) == (200, "ready\n")
    assert (await http_get(port, "/metrics"))[0] == 200
    assert await run.stop() == 0


async def test_a_bind_error_names_the_host_setting_and_the_dashboard(
    runs: list[Running], redis_url: str, keys: Keys
) -> None:
    """An address not of this host is the host setting's fault, not the port's; the message
    lists everything the port would have served, the dashboard included."""
    sets = [*FAST, "supervisor.http_host=192.0.2.7"]  # TEST-NET-1: no host has it
    port = free_port()
    run = supervise(runs, redis_url, keys.prefix, "-w", "1", "--http-port", str(port), sets=sets)
    assert await run.wait() == 1
    errors = [line for line in run.lines if line.startswith("Error: ")]
    assert len(errors) == 1, run.output
    assert errors[0].startswith(
        "Error: cannot serve /healthz, /readyz, /metrics and the dashboard on 192.0.2.7:"
        f"{port}: not an address of this host"
    )
    assert "supervisor.http_host" in errors[0] and "another port" not in errors[0]
    assert "Traceback" not in run.output and not run.workers()
