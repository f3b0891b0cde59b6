"""Optional dependencies: one-line errors that name the pip extra providing a missing package."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingExtraError(ImportError):
    """A feature needs a package from one of gaheads' extras (``gaheads[demo]``, ``gaheads[export]``)."""


def missing_extra(package: str, extra: str, feature: str) -> MissingExtraError:
    return MissingExtraError(f"{feature} needs the package {package!r}, which is not installed: "
                             f"pip install 'gaheads[{extra}]'")


def require(package: str, extra: str, feature: str) -> ModuleType:
    """Import ``package`` or raise MissingExtraError naming the extra to install."""
    if importlib.util.find_spec(package) is None:
        raise missing_extra(package, extra, feature)
    return importlib.import_module(package)
