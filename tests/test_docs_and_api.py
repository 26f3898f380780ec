"""The public API is what `__all__` says; every setting is documented."""

from __future__ import annotations

import importlib
import re
import tomllib
import types
from pathlib import Path

import pytest

import runtime
from runtime.settings import iter_fields
from runtime.settings.docs import render_example, render_reference

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [
    "runtime",
    "runtime.agents",
    "runtime.cli",
    "runtime.redis",
    "runtime.sessions",
    "runtime.settings",
    "runtime.supervisor",
    "runtime.worker",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_matches_exports(name: str) -> None:
    """What ``__all__`` says is what the package offers, eagerly or lazily (``dir()`` lists
    the lazy names too), and every name resolves."""
    module = importlib.import_module(name)
    exported = set(module.__all__)
    public = {
        attr
        for attr in dir(module)
        if not attr.startswith("_") and not isinstance(getattr(module, attr), types.ModuleType)
    }
    assert exported == public | ({"__version__"} & exported)
    for attr in exported:
        assert getattr(module, attr) is not None


def test_every_setting_has_a_description() -> None:
    missing = [spec.path for spec in iter_fields() if len(spec.description) < 10]
    assert missing == []


def test_configuration_page_lists_every_setting() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    for spec in iter_fields():
        assert f"`{spec.path}`" in page, f"{spec.path} is not in docs/configuration.md"
        assert f"`{spec.env}`" in page, f"{spec.env} is not in docs/configuration.md"
    assert page == render_reference(), (
        "docs/configuration.md is stale: run `agents-worker config docs > docs/configuration.md`"
    )


def test_example_config_file_shows_every_setting() -> None:
    text = (ROOT / "config" / "agents-worker.toml").read_text()
    sections = re.split(r"^\[([\w.]+)\]$", text, flags=re.M)
    shown = {
        f"{section}.{key}"
        for section, body in zip(sections[1::2], sections[2::2], strict=True)
        for key in re.findall(r"^# (\w+) = ", body, flags=re.M)
    }
    assert shown == {spec.path for spec in iter_fields()}
    sections = {spec.path.rsplit(".", 1)[0] for spec in iter_fields()}
    assert set(tomllib.loads(text)) == {s.split(".")[0] for s in sections}  # all commented out
    assert text == render_example(), (
        "config/agents-worker.toml is stale: run `agents-worker config example > "
        "config/agents-worker.toml`"
    )


def test_version_is_exported() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", runtime.__version__)


def test_the_metrics_page_lists_every_metric_of_the_catalogue() -> None:
    """docs/metrics.md names each metric the runtime records (and none it does not)."""
    from runtime.observability.metrics import METRICS

    page = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    listed = set(re.findall(r"^\| `([a-z_]+)` \| (?:counter|latency|gauge)", page, re.M))
    assert listed == set(METRICS)
