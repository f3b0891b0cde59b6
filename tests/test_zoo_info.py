"""``gaheads info --paper``: the GA paper's Table 3 and baselines next to our counts."""

import json

import timm

from gaheads.cli import main
from gaheads.cli.info import select_paper_rows
from gaheads.models.zoo import BASELINE_ROWS, GA_ROWS


def test_paper_table_covers_every_published_row():
    published = {r.published: (r.paper_params_m, r.paper_gflops) for r in GA_ROWS}
    assert published["GA-ConvNeXt-T"] == (48.7, 6.3) and published["GA-CSWin-S"] == (54.3, 8.7)
    assert {"GA-ConvNeXt-S", "GA-ConvNeXt-B", "GA-ResNet50", "GA-ViT-S", "GA-ViT-M", "GA-CSWin-T"} <= set(published)
    for row in GA_ROWS + BASELINE_ROWS:
        assert timm.is_model(row.model), row.model
        if row.release_alias:
            assert timm.is_model(row.release_alias)


def test_paper_json_rows_side_by_side(capsys):
    assert main(["info", "--paper", "ga_resnet50", "resnet50", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    ga, base = rows["ga_resnet50"], rows["resnet50"]
    assert ga["group"] == "GA" and ga["published"] == "GA-ResNet50" and ga["compared_to"] == "paper"
    assert (ga["paper_params_m"], ga["paper_gflops"]) == (41.3, 5.2)
    assert abs(ga["params_diff_pct"]) < 3 and abs(ga["gmacs_diff_pct"]) < 3
    assert base["group"] == "baseline" and base["compared_to"] == "ref"
    assert base["params"] == base["ref_params"] == 25_557_032 and abs(base["gmacs"] - 4.089) < 0.001


def test_paper_table_text(capsys):
    assert main(["info", "--paper", "resnet50"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3  # header, rule, one row
    assert "paper GFLOPs" in out[0] and "RSB-ResNet50" in out[2] and "25,557,032" in out[2] and "+0.00%" in out[2]


def test_rows_selected_by_name_or_release_alias():
    assert len(select_paper_rows()) == len(GA_ROWS) + len(BASELINE_ROWS)
    picked = select_paper_rows(["ga_CSWin_64_12211_tiny_224", "ga_convnext_base", "convnext_base"])
    assert [(g, r.model) for g, r in picked] == [("GA", "ga_convnext_base_976"), ("GA", "ga_cswin_tiny_224"),
                                                 ("baseline", "convnext_base")]


def test_paper_errors(capsys):
    assert main(["info", "--paper", "ga_convnext_huge"]) == 2
    assert "no published row for ga_convnext_huge" in capsys.readouterr().err
    assert main(["info", "--paper", "resnet50", "--num-classes", "10"]) == 2
    capsys.readouterr()
    assert main(["info"]) == 0  # no model named: the list of models, as `gaheads models` prints it
    assert "ga_convnext_tiny" in capsys.readouterr().out
