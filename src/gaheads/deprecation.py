"""Old public names kept for one release: a module ``__getattr__`` that serves them with a warning."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any


def renamed(module: str, aliases: dict[str, str], lookup: Callable[[str], Any]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``module``: ``aliases`` maps each old name to its new one,
    ``lookup(new)`` returns the object. Using an old name warns (DeprecationWarning) and works."""

    def __getattr__(name: str) -> Any:
        if name not in aliases:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new = aliases[name]
        warnings.warn(f"{module}.{name} is renamed {new}; the old name will be removed in the next release",
                      DeprecationWarning, stacklevel=2)
        return lookup(new)

    return __getattr__
