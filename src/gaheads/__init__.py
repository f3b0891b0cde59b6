"""gaheads: Gramian Attention and SeqAttention multi-branch heads for timm image classifiers.

``import gaheads`` registers every model with timm: ``timm.create_model('ga8_cct_7_3x1_32')``.

The one exception is the ``gaheads`` command itself (and ``python -m gaheads``): there the
package loads nothing up front, so ``gaheads --help`` answers without importing torch; each
subcommand imports what it uses, and the names below still load on first use.
"""

import importlib
import os
import sys

# public name -> the submodule that defines it
_EXPORTS = {
    "LossParts": "loss", "MultiBranchLoss": "loss", "create_task_loss": "loss",
    "MultiBranchModel": "models", "create_model": "models", "list_models": "models",
    "explain": "explanation", "load": "checkpoint", "save_weights": "checkpoint",
    "create_head": "heads", "predict": "inference",
}

__all__ = ["LossParts", "MultiBranchLoss", "MultiBranchModel", "create_head", "create_model", "create_task_loss",
           "explain", "list_models", "load", "models", "predict", "save_weights", "__version__"]


def _installed_version() -> str:
    """The installed distribution's version (pyproject's), "0+unknown" when gaheads runs from a bare source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gaheads")
    except PackageNotFoundError:
        return "0+unknown"


# old public names, kept for one release with a DeprecationWarning
_RENAMED = {"MultiHeadLoss": "MultiBranchLoss", "MultiHeadModel": "MultiBranchModel"}


def __getattr__(name: str):
    if name in _RENAMED:
        import warnings

        warnings.warn(f"gaheads.{name} is renamed {_RENAMED[name]}; the old name will be removed in the next release",
                      DeprecationWarning, stacklevel=2)
        return __getattr__(_RENAMED[name])
    if name == "__version__":  # read from the package metadata on first use: importing gaheads stays light
        globals()[name] = _installed_version()
        return globals()[name]
    if name == "models":
        return importlib.import_module(".models", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _started_as_command() -> bool:
    """Whether this interpreter runs the ``gaheads`` console script or ``python -m gaheads``."""
    argv = iter(list(getattr(sys, "orig_argv", []))[1:])
    for arg in argv:  # the interpreter's own options, then -m MODULE or a script
        if arg == "-m":
            return next(argv, None) == "gaheads"
        if arg in ("-X", "-W", "-Q"):
            next(argv, None)
        elif not arg.startswith("-"):
            break
    main_file = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    return os.path.basename(main_file).removesuffix(".exe") == "gaheads"


if not _started_as_command():
    from . import models  # noqa: E402  (registers every model with timm)
    from .checkpoint import load, save_weights  # noqa: E402
    from .explanation import explain  # noqa: E402
    from .heads import create_head  # noqa: E402
    from .inference import predict  # noqa: E402
    from .loss import LossParts, MultiBranchLoss, create_task_loss  # noqa: E402
    from .models import MultiBranchModel, create_model, list_models  # noqa: E402
