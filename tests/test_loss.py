import math

import pytest
import torch
import torch.nn.functional as F
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from gaheads.loss import MultiBranchLoss, create_task_loss


def hand_loss(logits, target, lam):
    """Σ_k CE + λ Σ_k mean_{b,c} p̄ (log p̄ - log p_k), written out with plain Python sums."""
    b, k, n = logits.shape
    total_ce, total_kl = 0.0, 0.0
    for j in range(k):
        ce = 0.0
        for i in range(b):
            row = logits[i, j].tolist()
            lse = math.log(sum(math.exp(v) for v in row))
            ce += lse - row[target[i]]
        total_ce += ce / b
        kl = 0.0
        for i in range(b):
            mean = [sum(logits[i, kk, c].item() for kk in range(k)) / k for c in range(n)]
            lse_m = math.log(sum(math.exp(v) for v in mean))
            row = logits[i, j].tolist()
            lse = math.log(sum(math.exp(v) for v in row))
            for c in range(n):
                lp_bar = mean[c] - lse_m
                kl += math.exp(lp_bar) * (lp_bar - (row[c] - lse))
        total_kl += kl / (b * n)
    return total_ce + lam * total_kl, total_ce, total_kl


def test_loss_equals_hand_computed_value():
    logits = torch.tensor([[[2.0, 0.5, -1.0], [0.0, 1.0, 0.3]],
                           [[-0.5, 0.2, 1.5], [1.2, -0.7, 0.1]]])  # (B=2, K=2, n=3)
    target = torch.tensor([0, 2])
    loss, task, decor = MultiBranchLoss(torch.nn.CrossEntropyLoss(), lam=-0.8)(logits, target)
    want, want_task, want_kl = hand_loss(logits, target.tolist(), -0.8)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert task.item() == pytest.approx(want_task, rel=1e-6)
    assert decor.item() == pytest.approx(want_kl, rel=1e-5)
    # and pinned to the number itself
    assert loss.item() == pytest.approx(1.72973, abs=1e-5)


def test_single_branch_has_no_decorrelation():
    logits = torch.randn(4, 1, 7)
    target = torch.randint(0, 7, (4,))
    parts = MultiBranchLoss(lam=-0.8)(logits, target)
    assert parts.decorrelation.item() == 0.0
    torch.testing.assert_close(parts.loss, F.cross_entropy(logits[:, 0], target))


@pytest.mark.parametrize("task", [LabelSmoothingCrossEntropy(0.1), BinaryCrossEntropy(smoothing=0.1)])
def test_task_is_sum_of_branch_means(task):
    logits = torch.randn(5, 3, 6)
    target = torch.randint(0, 6, (5,))
    parts = MultiBranchLoss(task, lam=0.0)(logits, target)
    want = sum(task(logits[:, k], target) for k in range(3))
    torch.testing.assert_close(parts.task, want)


def test_soft_targets():
    logits = torch.randn(4, 2, 5)
    soft = torch.softmax(torch.randn(4, 5), -1)
    parts = MultiBranchLoss(SoftTargetCrossEntropy(), lam=-0.8)(logits, soft)
    want = sum(SoftTargetCrossEntropy()(logits[:, k], soft) for k in range(2))
    torch.testing.assert_close(parts.task, want)


def test_negative_lambda_pushes_branches_apart():
    torch.manual_seed(0)
    logits = torch.randn(8, 4, 10, requires_grad=True)
    target = torch.randint(0, 10, (8,))
    crit = MultiBranchLoss(torch.nn.CrossEntropyLoss(), lam=-0.8)
    before = crit(logits, target).decorrelation.item()
    # one step on the decorrelation part alone: λ·KL with λ < 0 is minimised by raising KL
    (crit.lam * crit(logits, target).decorrelation).backward()
    with torch.no_grad():
        stepped = logits - 1.0 * logits.grad
    after = crit(stepped, target).decorrelation.item()
    assert after > before
    # and λ > 0 pulls them together
    logits.grad = None
    crit_pos = MultiBranchLoss(torch.nn.CrossEntropyLoss(), lam=0.8)
    (crit_pos.lam * crit_pos(logits, target).decorrelation).backward()
    with torch.no_grad():
        assert crit_pos(logits - logits.grad, target).decorrelation.item() < before


def test_create_task_loss_matches_timm_choices():
    assert isinstance(create_task_loss(0.1), LabelSmoothingCrossEntropy)
    assert isinstance(create_task_loss(0.1, mixup=True), SoftTargetCrossEntropy)
    bce = create_task_loss(0.1, bce=True)
    assert isinstance(bce, BinaryCrossEntropy) and bce.smoothing == 0.1
    assert create_task_loss(0.1, mixup=True, bce=True).smoothing == 0.0
    assert isinstance(create_task_loss(0.0), torch.nn.CrossEntropyLoss)


@pytest.mark.parametrize("lam", [-0.8, -8.0, 0.5])
@pytest.mark.parametrize("task", [torch.nn.CrossEntropyLoss(), LabelSmoothingCrossEntropy(0.1)])
def test_decorrelation_weakens_branch_pull(lam, task):
    # The branch-specific part of the logit gradient (each branch's minus the branches' mean) is
    # exactly (1 + λ/C) times the task loss's own: the λ term scales the pull between branches
    # and does nothing else (docs/diversity.md).
    torch.manual_seed(0)
    b, k, n = 6, 4, 10
    base = torch.randn(b, k, n, dtype=torch.float64) * 3
    target = torch.randint(0, n, (b,))

    def branch_part(lam_: float) -> torch.Tensor:
        logits = base.clone().requires_grad_(True)
        MultiBranchLoss(task, lam=lam_)(logits, target).loss.backward()
        return logits.grad - logits.grad.mean(dim=1, keepdim=True)

    without = branch_part(0.0)
    assert without.abs().max() > 1e-3  # the branches do differ
    # the KL runs in float32, hence the float32-sized tolerance
    torch.testing.assert_close(branch_part(lam), (1 + lam / n) * without, rtol=1e-5, atol=1e-8)
