import torch

from gaheads.metrics import BranchAccuracy


def test_branch_accuracy_counts():
    # 2 samples, 2 branches, 6 classes; targets 0 and 1
    logits = torch.full((2, 2, 6), -5.0)
    logits[0, 0, 0] = 3.0  # branch 0 right on sample 0
    logits[0, 1, 2] = 1.0  # branch 1 wrong on sample 0 (ensemble still picks 0)
    logits[1, 0, 1] = 2.0
    logits[1, 1, 1] = 2.0  # both right on sample 1
    m = BranchAccuracy(2)
    m.update(logits, torch.tensor([0, 1]))
    r = m.compute()
    assert r["top1"] == 100.0
    assert r["branch_top1"] == [100.0, 50.0]
    assert r["branch_top5"] == [100.0, 100.0]
    assert r["agreement"] == 50.0
    assert m.samples == 2


def test_soft_targets_and_single_branch():
    m = BranchAccuracy(1)
    m.update(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([[0.0, 1.0], [0.3, 0.7]]))
    assert m.compute()["top1"] == 50.0
