import json

from gaheads.cli import main


# measured equal under torch 2.6.0 / timm 1.0.16 (constraints/floor.txt) and torch 2.14.1 / timm 1.0.31
# (constraints/lock.txt): count_macs counts attention under the math backend, so no kernel choice shows
def test_info_json_prints_exact_counts(capsys):
    assert main(["info", "cct_7_3x1_32", "ga1_cct_7_3x1_32", "ga8_cct_7_3x1_32", "seqattn1_cct_7_3x1_32",
                 "seqattn8_cct_7_3x1_32", "--num-classes", "100", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["cct_7_3x1_32"]["params"] == 3_783_269
    assert rows["ga1_cct_7_3x1_32"]["params"] == 4_183_332
    assert rows["ga8_cct_7_3x1_32"]["params"] == 7_165_472
    assert rows["seqattn1_cct_7_3x1_32"]["params"] == 4_114_021
    assert rows["seqattn8_cct_7_3x1_32"]["params"] == 6_610_984
    assert rows["ga8_cct_7_3x1_32"]["branches"] == 8
    assert rows["ga8_cct_7_3x1_32"]["backbone_params"] + rows["ga8_cct_7_3x1_32"]["head_params"] == 7_165_472
    assert abs(rows["cct_7_3x1_32"]["gmacs"] - 1.182) / 1.182 < 0.01
    assert rows["cct_7_3x1_32"]["input_size"] == [3, 32, 32]


def test_info_table_and_overrides(capsys):
    assert main(["info", "seqattn4_cct_2_3x2_32", "--num-classes", "10", "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "seqattn4_cct_2_3x2_32" in out and "3x64x64" in out and "GMACs" in out


def test_info_unknown_model_suggests(capsys):
    assert main(["info", "ga8_cct_7_3x1"]) == 2
    assert "did you mean ga8_cct_7_3x1_32" in capsys.readouterr().err


def test_usage(capsys):
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "info" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
