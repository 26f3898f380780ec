"""The deployment files open the supervisor's port to the network for probes and scrapes only.

Each of them binds ``supervisor.http_host`` to every interface (a probe or a scrape comes from
outside the container), so each must turn the dashboard off on that port: it shows runs'
inputs and results, and would show them to anyone who reaches it. The settings are read as
the runtime reads them (``load_settings`` with the file's environment).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from runtime import load_settings
from runtime.web.auth import is_loopback

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _dockerfile_env() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            pairs = (item.split("=", 1) for item in shlex.split(line.strip()[4:]))
            env.update((key, value) for key, value in pairs)
    return env


def _compose_env() -> dict[str, str]:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    environment = compose["services"]["worker"]["environment"]
    return {key: str(value) for key, value in environment.items()}


def _kubernetes_env() -> dict[str, str]:
    docs = yaml.safe_load_all((DEPLOY / "kubernetes" / "worker.yaml").read_text())
    config = next(d for d in docs if d and d["kind"] == "ConfigMap")
    data = config["data"]
    assert all(isinstance(value, str) for value in data.values()), data  # as Kubernetes wants
    return dict(data)


@pytest.mark.parametrize(
    "read", [_dockerfile_env, _compose_env, _kubernetes_env], ids=["Dockerfile", "compose", "k8s"]
)
def test_a_port_open_to_the_network_serves_no_dashboard(
    read: Callable[[], dict[str, str]],
) -> None:
    env = read()
    settings = load_settings(env=env)
    assert not is_loopback(settings.supervisor.http_host)  # probes and scrapes reach it
    assert settings.web.dashboard is False, env


def test_the_readme_says_how_to_run_the_dashboard_separately() -> None:
    text = (DEPLOY / "README.md").read_text()
    assert "## The dashboard" in text
    assert "AGENTS_WORKER_WEB_DASHBOARD=false" in text
    assert "agents-worker dashboard" in text and "authenticating proxy" in text
