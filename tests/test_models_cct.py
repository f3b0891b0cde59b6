import pytest
import timm
import torch

import gaheads
from gaheads.flops import count_macs
from gaheads.loss import MultiBranchLoss

# at 100 classes: ours = the research code's count minus its unused Linear(256 -> 100)
EXACT_PARAMS = {
    "cct_7_3x1_32": 3_783_269,
    "ga1_cct_7_3x1_32": 4_183_332,
    "ga8_cct_7_3x1_32": 7_165_472,
    "seqattn1_cct_7_3x1_32": 4_114_021,
    "seqattn8_cct_7_3x1_32": 6_610_984,
    # AT with the released token-axis query (Linear(256 -> 128): 32,896): research count 6,667,524 for at8
    "at1_cct_7_3x1_32": 4_146_660,
    "at8_cct_7_3x1_32": 6_641_824,
    "sg8_cct_7_3x1_32": 4_519_456,  # research count 4,545,156
}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,count", EXACT_PARAMS.items())
def test_exact_param_counts(name, count):
    assert n_params(timm.create_model(name, num_classes=100)) == count


def test_per_branch_counts():
    base = n_params(timm.create_model("cct_7_3x1_32"))
    for k in (1, 2, 4, 8):
        assert n_params(timm.create_model(f"ga{k}_cct_7_3x1_32")) == base - 25_957 + k * 426_020
        assert n_params(timm.create_model(f"seqattn{k}_cct_7_3x1_32")) == base - 25_957 + k * 356_709
        # AT: one shared token-axis query, then per branch SeqAttention's block and classifier without its SeqPool
        assert n_params(timm.create_model(f"at{k}_cct_7_3x1_32")) == base - 25_957 + 32_896 + k * 356_452


# measured equal under torch 2.6.0 / timm 1.0.16 (constraints/floor.txt) and torch 2.14.1 / timm 1.0.31
# (constraints/lock.txt): count_macs counts attention under the math backend, so no kernel choice shows
@pytest.mark.parametrize("name,gmacs", [("cct_7_3x1_32", 1.182), ("ga8_cct_7_3x1_32", 1.265),
                                        ("seqattn8_cct_7_3x1_32", 1.253)])
def test_gmacs_within_one_percent(name, gmacs):
    macs = count_macs(timm.create_model(name), (3, 32, 32)) / 1e9
    assert abs(macs - gmacs) / gmacs < 0.01


def test_registry_has_every_variant():
    names = gaheads.list_models("*cct*")
    for arch in ("cct_2_3x2_32", "cct_4_3x2_32", "cct_7_3x1_32"):
        assert arch in names
        for kind in ("ga", "seqattn", "sg", "at"):
            for k in (1, 2, 4, 8):
                assert f"{kind}{k}_{arch}" in names
    assert len(names) == 51


def test_pretrained_cfg_and_constructor_args():
    m = timm.create_model("seqattn2_cct_2_3x2_32", num_classes=10, img_size=64)
    assert m.pretrained_cfg["input_size"] == (3, 32, 32)
    assert m.pretrained_cfg["crop_pct"] == 1.0 and m.pretrained_cfg["interpolation"] == "bicubic"
    assert m.pretrained_cfg["mean"] == (0.5071, 0.4867, 0.4408)
    assert m.gaheads_config == {"name": "seqattn2_cct_2_3x2_32", "kwargs": {"num_classes": 10, "img_size": 64}}
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match="img_size"):
        m(torch.randn(2, 3, 32, 32))


def test_forward_contract():
    m = timm.create_model("ga4_cct_2_3x2_32", num_classes=7).eval()
    x = torch.randn(3, 3, 32, 32)
    feats = m.forward_features(x)
    assert feats.shape == (3, 64, 128)
    branches = m.forward_heads(x)
    assert branches.shape == (3, 4, 7)
    torch.testing.assert_close(m(x), branches.mean(1))
    torch.testing.assert_close(m(x, return_branches=True), branches)
    torch.testing.assert_close(m.forward_head(feats), branches.mean(1))
    assert m.forward_head(feats, pre_logits=True).shape == (3, 128)
    assert m.num_branches == 4 and m.num_classes == 7
    m.reset_classifier(0)
    assert m(x).shape == (3, 128)


def test_no_weight_decay_names_exist():
    m = timm.create_model("ga2_cct_2_3x2_32")
    names = m.no_weight_decay()
    params = dict(m.named_parameters())
    assert "backbone.pos_embed" in names and "head.block.gamma1" in names and "head.block.norm1.weight" in names
    assert names <= params.keys()


@pytest.mark.parametrize("name", gaheads.list_models("*cct*"))
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    m = timm.create_model(name, num_classes=10).train()
    # batch 4: with 2 samples a training-mode BatchNorm outputs only ±1 and passes no gradient back
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([1, 3, 0, 9])
    logits = m(x, return_branches=True)
    assert torch.isfinite(logits).all()
    MultiBranchLoss(lam=-0.8)(logits, y).loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing}"
    assert all(p.grad.abs().sum() > 0 for p in m.parameters())
