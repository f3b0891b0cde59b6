"""`gaheads models`: the shipped table matches built models, lists every registered name, and needs no build;
pattern models (<head><K>@<timm model>) get their backbone's own data config."""

from __future__ import annotations

import json

import pytest

from gaheads.cli import main as gaheads_main
from gaheads.cli.models import PATTERN_HEADS
from gaheads.heads import HEADS
from gaheads.models.factory import UnknownModelError
from gaheads.models.ga_timm import model_pretrained_cfg
from gaheads.models.registry import list_models
from gaheads.train.build import data_config
from gaheads.train.config import parse_args
from gaheads.zoo_table import load_table, measure, select


def test_every_registered_model_has_a_row_and_nothing_else_does():
    assert [r["model"] for r in load_table()] == list_models()


@pytest.mark.parametrize("name", ["cct_2_3x2_32", "seqattn4_cct_2_3x2_32", "ga2_cct_2_3x2_32", "sg1_cct_4_3x2_32"])
def test_table_rows_equal_freshly_built_models(name):
    row = next(r for r in load_table() if r["model"] == name)
    assert measure(name) == row


def test_known_rows_hold_the_published_counts():
    rows = {r["model"]: r for r in load_table()}
    assert rows["ga_convnext_tiny"]["params"] == 47_821_324 and rows["ga_convnext_tiny"]["branches"] == 5
    assert rows["ga_convnext_tiny"]["input_size"] == [3, 224, 224]
    assert rows["cct_7_3x1_32"]["params"] == 3_783_269 and rows["cct_7_3x1_32"]["head"] == "seqpool"
    assert (rows["seqattn8_cct_7_3x1_32"]["head"], rows["seqattn8_cct_7_3x1_32"]["branches"]) == ("seqattn", 8)


def test_select_takes_a_glob_or_a_substring():
    rows = load_table()
    assert [r["model"] for r in select(rows, "ga?_cct_2*")] == ["ga1_cct_2_3x2_32", "ga2_cct_2_3x2_32",
                                                                  "ga4_cct_2_3x2_32", "ga8_cct_2_3x2_32"]
    assert [r["model"] for r in select(rows, "convnext_base")] == ["ga_convnext_base", "ga_convnext_base_1024",
                                                                     "ga_convnext_base_976"]


def test_gaheads_models_prints_the_table_and_how_to_name_a_pattern(capsys):
    assert gaheads_main(["models", "seqattn4_cct_2*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["model", "head", "branches", "params", "GMACs", "input", "classes"]
    row = next(r for r in load_table() if r["model"] == "seqattn4_cct_2_3x2_32")
    assert out[2].split() == ["seqattn4_cct_2_3x2_32", "seqattn", "4", f"{row['params']:,}", str(row["gmacs"]),
                              "3x32x32", str(row["num_classes"])]
    assert out[-1].startswith("1 model(s). Any timm model with K branches of a head: <head><K>@<timm model>")
    assert gaheads_main(["models", "nothing_like_this"]) == 1
    assert capsys.readouterr().err.startswith("gaheads models: no registered model matches 'nothing_like_this'")


def test_info_without_a_model_lists_the_models(capsys):
    assert gaheads_main(["info", "--json"]) == 0
    captured = capsys.readouterr()
    assert [r["model"] for r in json.loads(captured.out)] == list_models()
    assert captured.err.startswith("gaheads info: no MODEL named; the registered models follow")


def test_the_pattern_heads_named_in_the_help_are_the_registered_heads():
    assert sorted(PATTERN_HEADS) == sorted(HEADS)


def test_pattern_models_train_with_the_backbones_data_config():
    assert model_pretrained_cfg("ga2@vit_tiny_patch16_384")["input_size"] == (3, 384, 384)
    args = parse_args(["--dataset", "mnist5k", "--model", "ga2@vit_tiny_patch16_384"])
    cfg = data_config(args)  # no model is built to find it
    assert (cfg["input_size"], cfg["mean"], cfg["std"], cfg["crop_pct"]) == ([3, 384, 384], [0.5, 0.5, 0.5],
                                                                             [0.5, 0.5, 0.5], 1.0)
    args = parse_args(["--dataset", "mnist5k", "--model", "ga5@resnet18", "--img-size", "64"])
    cfg = data_config(args)
    assert cfg["input_size"] == [3, 64, 64] and cfg["mean"] == [0.485, 0.456, 0.406] and cfg["crop_pct"] == 0.95
    with pytest.raises(UnknownModelError, match=r"^unknown timm model 'resnet1' in 'ga5@resnet1'; did you mean "):
        model_pretrained_cfg("ga5@resnet1")
