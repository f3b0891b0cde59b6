"""Renamed public names still work for one release, and say what they are called now."""

from __future__ import annotations

import importlib

import pytest

RENAMED = [
    ("gaheads", "MultiHeadLoss", "gaheads.loss", "MultiBranchLoss"),
    ("gaheads", "MultiHeadModel", "gaheads.models.base", "MultiBranchModel"),
    ("gaheads.loss", "MultiHeadLoss", "gaheads.loss", "MultiBranchLoss"),
    ("gaheads.models", "MultiHeadModel", "gaheads.models.base", "MultiBranchModel"),
    ("gaheads.models", "GAHeadsModel", "gaheads.models.ga_timm", "TimmBackboneModel"),
    ("gaheads.attention_maps", "explain", "gaheads.explanation", "explain"),
    ("gaheads.attention_maps", "Explanation", "gaheads.explanation", "Explanation"),
]


@pytest.mark.parametrize("module,old,home,new", RENAMED)
def test_an_old_name_warns_and_is_the_new_object(module, old, home, new):
    with pytest.warns(DeprecationWarning, match=f"{old} is renamed .*{new}"):
        value = getattr(importlib.import_module(module), old)
    assert value is getattr(importlib.import_module(home), new)


def test_an_unknown_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        _ = importlib.import_module("gaheads.models").NoSuchThing
