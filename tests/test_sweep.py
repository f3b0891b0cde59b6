"""gaheads sweep: heads x λ cells on mnist5k end to end on the CPU, table and figure, resumable."""

import csv
import json

import pytest

from gaheads.cli import main as gaheads_main
from gaheads.data import mnist5k
from gaheads.train import sweep

TINY = ["--epochs", "1", "-b", "4", "--workers", "0", "--no-progress"]


@pytest.fixture
def tiny_mnist5k(monkeypatch):
    """The real mnist5k digits, cut to the first 8 training and 4 held-out images (seconds per run)."""
    full = mnist5k.split_indices
    monkeypatch.setattr(mnist5k, "split_indices",
                        lambda labels, split: full(labels, split)[: 4 if split == "val" else 8])


def test_cells_and_names():
    assert [(c.model, c.heads, c.lam) for c in sweep.cells("mnist5k", "cct_2_3x2_32", "ga", [1, 4], [0.0, -0.8])] == [
        ("cct_2_3x2_32", 0, None), ("ga1_cct_2_3x2_32", 1, 0.0), ("ga1_cct_2_3x2_32", 1, -0.8),
        ("ga4_cct_2_3x2_32", 4, 0.0), ("ga4_cct_2_3x2_32", 4, -0.8)]
    assert sweep.head_model("resnet18", "seqattn", 2) == "seqattn2@resnet18"
    cell = sweep.Cell("mnist5k", "cct_2_3x2_32", "ga4_cct_2_3x2_32", 4, -0.8)
    assert str(cell.folder(sweep.Path("out"), 3)) == "out/mnist5k/ga4_cct_2_3x2_32/lam-0.8-seed3"


def test_summarise_gives_mean_and_sd_over_seeds():
    runs = [dict(setup="s", backbone="b", model="m", heads=2, GA_lam=-0.8, seed=s, status="ok", top1=t, top5=100.0,
                 params=10) for s, t in ((0, 50.0), (1, 60.0))]
    runs.append(dict(runs[0], seed=2, status="failed", top1=None, top5=None, params=None))
    (row,) = sweep.summarise(runs)
    assert (row["runs"], row["failed"], row["top1_mean"], row["top1_sd"]) == (2, 1, 55.0, pytest.approx(7.0710678))


def test_sweep_on_mnist5k_end_to_end(tmp_path, tiny_mnist5k, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "mnist5k", "--heads", "1", "2", "--GA_lam", "0", "-0.8", "--seeds", "3",
            "--output", str(out), *TINY]
    assert gaheads_main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    cells = [(c["model"], c["heads"], c["GA_lam"], c["runs"]) for c in data["cells"]]
    assert cells == [("cct_2_3x2_32", 0, None, 1), ("ga1_cct_2_3x2_32", 1, 0.0, 1), ("ga1_cct_2_3x2_32", 1, -0.8, 1),
                     ("ga2_cct_2_3x2_32", 2, 0.0, 1), ("ga2_cct_2_3x2_32", 2, -0.8, 1)]
    assert len(data["runs"]) == 5 and all(r["status"] == "ok" for r in data["runs"])
    for r in data["runs"]:  # each cell is a normal run folder, trained with its own λ and seed
        summary = json.loads((sweep.Path(r["folder"]) / "summary.json").read_text())
        assert (summary["seed"], summary["eval_samples"], summary["steps"]) == (r["seed"], 4, 2)
        assert summary["GA_lam"] == (r["GA_lam"] or 0.0) and summary["final_top1"] == r["top1"]
    ga2 = next(c for c in data["cells"] if c["model"] == "ga2_cct_2_3x2_32" and c["GA_lam"] == -0.8)
    (top,) = [r["top1"] for r in data["runs"] if r["model"] == "ga2_cct_2_3x2_32" and r["GA_lam"] == -0.8]
    assert (ga2["top1_mean"], ga2["top1_sd"]) == (top, 0.0)
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == [c[0] for c in cells] and table[4]["GA_lam"] == "-0.8"
    md = (out / "results.md").read_text().splitlines()
    assert md[0] == "| setup | backbone | model | heads | λ | runs | params | top-1 | top-5 |" and len(md) == 7
    assert md[2].startswith("| mnist5k | cct_2_3x2_32 | cct_2_3x2_32 | 0 | baseline | 1 |")
    png = (out / "sweep_mnist5k.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    capsys.readouterr()
    # again: every cell is kept, nothing retrained
    assert gaheads_main(argv) == 0
    assert capsys.readouterr().out.count("already holds this run, trained to the end; keeping it") == 5


def test_bad_arguments_are_refused_in_one_line(tmp_path, capsys):
    assert sweep.main(["cifar10", "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("gaheads sweep: unknown setup 'cifar10'")
    assert sweep.main(["mnist5k", "--heads", "0", "2", "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "gaheads sweep: --heads must be >= 1, got 0\n"
