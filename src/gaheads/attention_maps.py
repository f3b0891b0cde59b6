"""Deprecated module name: ``gaheads.explanation`` holds ``explain``; this one goes in the next release."""

from . import explanation
from .deprecation import renamed

NAMES = ("ExplainError", "Explanation", "describe", "explain", "token_grid")
__getattr__ = renamed(__name__, {n: f"gaheads.explanation.{n}" for n in NAMES},
                      lambda new: getattr(explanation, new.rpartition(".")[2]))
