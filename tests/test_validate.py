"""validate: ensemble and per-branch accuracy equal a direct computation; --diversity writes heatmap + JSON."""

from __future__ import annotations

import json

import numpy as np
import torch
from data_fixtures import make_imagefolder
from model_fixtures import make_checkpoint

import gaheads
from gaheads.cli import validate as validate_cli
from gaheads.data import create_dataset, create_transform
from gaheads.diversity import BranchDiversity

CLASSES = ["ant", "bee", "cat"]


def direct_accuracy(model, root) -> tuple[float, list[float]]:
    ds = create_dataset("imagefolder", root, "val", transform=create_transform(model.data_config, is_training=False))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor(ds.targets)
    with torch.no_grad():
        logits = model(x, return_branches=True)
    top1 = float((logits.mean(1).argmax(-1) == y).double().mean() * 100)
    return top1, ((logits.argmax(-1) == y[:, None]).double().mean(0) * 100).tolist()


def test_validate_imagefolder_per_branch_and_diversity(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "data", classes=CLASSES, per_class=5)
    ckpt, _ = make_checkpoint(tmp_path / "run" / "best.pth", class_names=CLASSES)
    assert validate_cli.main(["--checkpoint", str(ckpt), str(root), "-b", "4"]) == 0
    text = capsys.readouterr().out
    assert "15 images, 4 branches" in text and all(f"branch {i}" in text for i in range(4))

    assert validate_cli.main(["--checkpoint", str(ckpt), str(root), "-b", "4", "--json", "--diversity",
                              "--output", str(tmp_path / "div")]) == 0
    report = json.loads(capsys.readouterr().out)
    top1, branch_top1 = direct_accuracy(gaheads.load(ckpt), root)
    assert report["samples"] == 15 and abs(report["top1"] - top1) < 1e-9
    assert np.allclose(report["branch_top1"], branch_top1)
    corr, agree = np.array(report["correlation"]), np.array(report["agreement_matrix"])
    assert corr.shape == (4, 4) and np.allclose(corr, corr.T) and np.allclose(np.diag(corr), 1)
    assert np.allclose(np.diag(agree), 100)
    log_corr = np.array(report["logprob_correlation"])
    assert log_corr.shape == (4, 4) and np.allclose(np.diag(log_corr), 1)
    assert abs(report["mean_logprob_correlation"] - log_corr[~np.eye(4, dtype=bool)].mean()) < 1e-12
    assert (tmp_path / "div" / "diversity.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "div" / "diversity.json").read_text())["correlation"] == report["correlation"]


def test_branch_diversity_matches_numpy_and_ignores_batching():
    logits = torch.randn(37, 3, 6) * 2
    logits[:, 1] = logits[:, 0] * 0.5 + torch.randn(37, 6)  # branch 1 follows branch 0 more than branch 2 does
    whole, parts = BranchDiversity(3), BranchDiversity(3)
    whole.update(logits)
    for chunk in logits.split(5):
        parts.update(chunk)
    p = logits.double().softmax(-1).permute(1, 0, 2).reshape(3, -1).numpy()
    assert np.allclose(whole.correlation().numpy(), np.corrcoef(p), atol=1e-10)
    assert np.allclose(whole.correlation(log=True).numpy(), np.corrcoef(np.log(p)), atol=1e-10)
    assert np.allclose(parts.correlation(log=True).numpy(), whole.correlation(log=True).numpy(), atol=1e-10)
    assert np.allclose(parts.correlation().numpy(), whole.correlation().numpy(), atol=1e-10)
    pred = logits.argmax(-1)
    assert abs(float(whole.agreement()[0, 1]) - float((pred[:, 0] == pred[:, 1]).double().mean() * 100)) < 1e-9
    assert whole.correlation()[0, 1] > whole.correlation()[0, 2]


def test_validate_errors_are_one_line(tmp_path, capsys):
    ckpt, _ = make_checkpoint(tmp_path / "last.pth", class_names=CLASSES)
    assert validate_cli.main(["--checkpoint", str(ckpt), str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gaheads validate: ") and err.count("\n") == 1
    root = make_imagefolder(tmp_path / "two", classes=("a", "b"), per_class=1)
    assert validate_cli.main(["--checkpoint", str(ckpt), str(root)]) == 2
    assert "2 classes but the model predicts 3" in capsys.readouterr().err
