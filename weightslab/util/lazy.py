"""Names of a package loaded on first use (PEP 562), so that importing the package stays cheap.

``import weightslab`` must not import torch: the read-only commands of the CLI start in a fraction
of the time torch takes to import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    package: str, table: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose names ``table`` maps to their modules.

    A name is imported from its module at its first lookup and stored in ``namespace`` (the package's
    ``globals()``), so later lookups are plain attribute reads.
    """

    def __getattr__(name: str) -> object:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
