"""The deployment files parse and run the commands the runtime has."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
YAML_FILES = sorted((ROOT / "deploy").rglob("*.yml")) + sorted((ROOT / "deploy").rglob("*.yaml"))


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert documents, f"{path} holds no document"


def test_manifests_present() -> None:
    names = {str(p.relative_to(ROOT / "deploy")) for p in YAML_FILES}
    assert {"docker-compose.yml", "kubernetes/worker.yaml", "kubernetes/keda.yaml"} <= names
    assert (ROOT / "deploy" / "systemd" / "agents-worker.service").is_file()


def test_keda_scales_on_the_inbox_stream() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "keda.yaml").read_text()))
    scaled = next(d for d in docs if d and d["kind"] == "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["stream"] == "aw:{inbox:triage}"
    assert trigger["metadata"]["consumerGroup"] == "workers"


def test_procfile_process_types() -> None:
    lines = (ROOT / "Procfile").read_text().splitlines()
    kinds = dict(line.split(":", 1) for line in lines if line.strip())
    assert set(kinds) == {"worker", "dashboard"}
    assert kinds["worker"].strip().startswith("agents-worker run ")
