"""The test suite starts whether or not pytest-asyncio is installed beside anyio's plugin.

With pytest-asyncio installed (a common case for users), the suite aborted at start-up: the
plugin's configuration warning is an error under ``filterwarnings = error`` (issue 10, item
14). Each case runs a sync and an async test of the suite in a fresh pytest process, with the
plugin on its path: a stand-in that warns at start-up as pytest-asyncio does (always
available), and the real package when it can be installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SAMPLE = [
    "tests/test_keys.py",
    "tests/test_coordinator_settings.py::test_the_registered_handler_gets_the_coordinators_context",
]

_STAND_IN = """
import warnings

import pytest


def pytest_configure(config):
    warnings.warn(pytest.PytestDeprecationWarning("stand-in: asyncio fixture loop scope unset"))
"""


def _stand_in(folder: Path) -> Path:
    """A plugin registered as ``asyncio`` (pytest-asyncio's name) that warns at start-up."""
    folder.mkdir()
    (folder / "aw_stand_in_asyncio.py").write_text(_STAND_IN)
    info = folder / "aw_stand_in_asyncio-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: aw-stand-in-asyncio\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text("[pytest11]\nasyncio = aw_stand_in_asyncio\n")
    return folder


def _real(folder: Path) -> Path:
    pip = ["-m", "pip", "install", "--quiet", "--no-deps", "--target", str(folder)]
    done = subprocess.run(
        [sys.executable, *pip, "pytest-asyncio"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"pytest-asyncio cannot be installed here: {done.stderr.strip()[-300:]}")
    return folder


def _run_suite(plugin_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_dir), str(ROOT)])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", *extra, *SAMPLE],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=240,
        check=False,
    )


@pytest.mark.parametrize(
    "plugin", ["stand-in", pytest.param("pytest-asyncio", marks=pytest.mark.slow)]
)
def test_the_suite_runs_with_an_asyncio_plugin_installed(tmp_path: Path, plugin: str) -> None:
    folder = tmp_path / "plugins"
    plugin_dir = _stand_in(folder) if plugin == "stand-in" else _real(folder)
    done = _run_suite(plugin_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "passed" in done.stdout and "failed" not in done.stdout


def test_the_stand_in_aborts_a_suite_that_does_not_turn_it_off(tmp_path: Path) -> None:
    """The stand-in does break the suite without ``-p no:asyncio``: the check above is real."""
    plugin_dir = _stand_in(tmp_path / "plugins")
    done = _run_suite(plugin_dir, "-o", "addopts=-p no:cacheprovider")
    assert done.returncode != 0
    assert "stand-in: asyncio fixture loop scope unset" in done.stdout + done.stderr
