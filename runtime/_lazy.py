"""Lazy re-exports: a package's public names imported from their modules on first use.

    __getattr__, __dir__ = lazy_exports(__name__, {"Worker": "runtime.worker", ...}, globals())

so that importing a package costs only what its caller uses (``import runtime`` must not load
the Agents SDK). Declare the same names under ``if TYPE_CHECKING:`` for type checkers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, table: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for *package*: *table* maps a name to its module.

    A name is imported once, then kept in *namespace* (the package's globals), so later
    lookups do not come back here.
    """

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
