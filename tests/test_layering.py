"""Imports flow down the layers of ARCHITECTURE.md, never up, not even inside a function.

    cli → agents, supervisor, web → worker, producer, coordinator, sessions, … → redis
        → settings → keys, log, errors, envelope

The coordinator once imported the agents layer inside a function, behind an ImportError guard
(issue 10, item 12). This test reads every module of ``runtime/`` with :mod:`ast` and checks
every import statement in it (top level, functions, ``TYPE_CHECKING`` blocks alike).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"

# Layer of each part of the package: a higher number is a higher layer. A module may import
# its own layer and those below; the facade (``runtime/__init__.py``, which re-exports from
# every layer) is above them all and nothing inside the package imports it.
FACADE = 100
LAYERS: dict[str, int] = {
    "cli": 5,
    "agents": 4,
    "supervisor": 4,
    "web": 4,
    "worker": 3,
    "producer": 3,
    "coordinator": 3,
    "sessions": 3,
    "cache": 3,
    "search": 3,
    "router": 3,
    "observability": 3,
    "app": 3,  # the app a worker serves: handlers, their context
    "dlq": 3,  # dead-letter streams, beside the producer
    "streams": 3,  # stream status, for the operator commands
    "redis": 2,
    "scripts": 2,  # the registered Lua scripts of the stream core
    "settings": 1,
    "keys": 0,
    "log": 0,
    "errors": 0,
    "envelope": 0,
    "redaction": 0,
    "_version": 0,
    "_lazy": 0,
    "_files": 0,
}

# Known upward imports in files this change does not own, for the lead to clear: each
# (importing module, imported module). Empty when none is left.
KNOWN: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    module: str
    line: int
    target: str


def module_name(path: Path) -> str:
    parts = list(path.relative_to(RUNTIME.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer of a ``runtime…`` module (``None`` for anything outside the package)."""
    parts = module.split(".")
    if parts[0] != "runtime":
        return None
    if len(parts) == 1:
        return FACADE
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: add its part {parts[1]!r} to LAYERS (per ARCHITECTURE)")
    return LAYERS[parts[1]]


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path) -> list[Import]:
    module = module_name(path)
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend(Import(module, node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, path.name == "__init__.py")
            found.append(Import(module, node.lineno, target))
            # `from runtime import x` may name a submodule: judge it as that module
            if target == "runtime":
                found.extend(
                    Import(module, node.lineno, f"runtime.{alias.name}")
                    for alias in node.names
                    if (RUNTIME / alias.name).is_dir() or (RUNTIME / f"{alias.name}.py").exists()
                )
    return found


def upward_imports() -> list[str]:
    bad: list[str] = []
    for path in sorted(RUNTIME.rglob("*.py")):
        for imp in imports_of(path):
            here, there = layer_of(imp.module), layer_of(imp.target)
            if here is None or there is None or here == FACADE:
                continue
            if there > here and (imp.module, imp.target) not in KNOWN:
                rel = path.relative_to(RUNTIME.parent)
                bad.append(f"{rel}:{imp.line}: {imp.module} (layer {here}) imports {imp.target}")
    return bad


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert upward_imports() == []


def test_the_known_violations_are_still_there() -> None:
    """An allow-listed import that is gone must leave the list too (keep it honest)."""
    present = {
        (imp.module, imp.target) for path in RUNTIME.rglob("*.py") for imp in imports_of(path)
    }
    assert KNOWN - present == set()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    from runtime.agents.client import AgentClient\n", True),
        ("if TYPE_CHECKING:\n    from runtime.cli import cli\n", True),
        ("from . import worker\n", False),
        ("from ..agents import app\n", True),
        ("import runtime.redis.connection\n", False),
        ("from runtime import agents\n", True),
        ("from runtime import Keys\n", True),  # the facade is above every layer
    ],
)
def test_the_check_sees_imports_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, expected: bool
) -> None:
    """A module of the coordinator (stream layer) importing what *source* does."""
    package = tmp_path / "runtime" / "coordinator"
    package.mkdir(parents=True)
    (tmp_path / "runtime" / "agents").mkdir()
    (tmp_path / "runtime" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "probe.py").write_text(source)
    monkeypatch.setattr(f"{__name__}.RUNTIME", tmp_path / "runtime")
    found = upward_imports()
    assert bool(found) is expected, found
