"""CSWin backbone and GA-CSWin: sizes against the papers, batched CSWin gram layer, forward/backward."""

import pytest
import timm
import torch
from zoo_checks import forward_backward, meta_params, meta_shapes, within

from gaheads.backbones.cswin import CSWinBlock, DeepStem
from gaheads.flops import count_macs
from gaheads.models.cswin import GACSWin
from gaheads.models.gram_layers import BranchCSWinBlock

PAPER = {  # params (M), GFLOPs at 224 (= GMACs)
    "cswin_tiny_224": (23.0, 4.3),
    "cswin_small_224": (35.0, 6.9),
    "ga_cswin_tiny_224": (42.0, 6.1),
    "ga_cswin_small_224": (54.3, 8.7),
}
SEED = {"ga_CSWin_64_12211_tiny_224": "ga_cswin_tiny_224", "ga_CSWin_64_24322_small_224": "ga_cswin_small_224"}


@pytest.mark.parametrize("name", list(PAPER) + list(SEED))
def test_params_within_3pct_of_paper(name):
    params = meta_params(name)
    assert within(params / 1e6, PAPER[SEED.get(name, name)][0], 0.03), params


@pytest.mark.parametrize("seed", list(SEED))
def test_seed_names_are_the_same_architecture(seed):
    assert meta_shapes(seed, num_classes=10) == meta_shapes(SEED[seed], num_classes=10)
    with torch.device("meta"):
        model = timm.create_model(seed, num_classes=10)
    assert model.num_branches == 5 and model.num_classes == 10


# measured equal under torch 2.6.0 / timm 1.0.16 (constraints/floor.txt) and torch 2.14.1 / timm 1.0.31
# (constraints/lock.txt): count_macs counts attention under the math backend, so no kernel choice shows
def test_cswin_tiny_gmacs_and_forward_backward_at_224():
    model = timm.create_model("cswin_tiny_224")
    gmacs = count_macs(model, (3, 224, 224)) / 1e9
    assert within(gmacs, 4.3, 0.03), gmacs
    assert forward_backward(model, 224).shape == (2, 1000)


# GA-CSWin is built by its seed name: both names of each model get a forward/backward
@pytest.mark.parametrize("name", ["cswin_small_224", "ga_CSWin_64_12211_tiny_224",
                                  pytest.param("ga_CSWin_64_24322_small_224", marks=pytest.mark.slow)])
def test_gmacs_within_3pct_and_forward_backward(name):
    model = timm.create_model(name)
    gmacs = count_macs(model, (3, 224, 224)) / 1e9
    assert within(gmacs, PAPER[SEED.get(name, name)][1], 0.03), gmacs
    out = forward_backward(model, 32)
    assert out.shape == ((2, 5, 1000) if name in SEED else (2, 1000))


def test_ga_cswin_structure():
    with torch.device("meta"):
        model = timm.create_model("ga_cswin_tiny_224")
    assert model.backbone.trunk.intermediates == [7, 14]  # a = 2 of stage 2's 21 blocks
    assert isinstance(model.backbone.trunk.stem, DeepStem)
    gram = model.head.query.gram_layer
    assert isinstance(gram, BranchCSWinBlock) and model.head.num_branches == 5
    with torch.device("meta"):
        one_block = sum(p.numel() for p in CSWinBlock(192, 6, 7).parameters())
    assert sum(p.numel() for p in gram.parameters()) == 5 * one_block


def test_ga_cswin_pyramid_feeds_the_fifth_stage():
    model = GACSWin(depths=(1, 1, 3, 1), num_intermediates=2, fifth_dim=64, gram_dim=32, gram_heads=2, attn_dim=16,
                    num_classes=3)
    maps = model.backbone.trunk.forward_pyramid(torch.randn(1, 3, 64, 64))
    # stage0, stage1, stage 2 after blocks 1 and 2, stage2, stage3
    assert [(m.shape[1], m.shape[-1]) for m in maps] == [(64, 16), (128, 8), (256, 4), (256, 4), (256, 4), (512, 2)]
    assert model.backbone.proj.in_channels == 64 + 128 + 3 * 256 + 512
    assert forward_backward(model, 64).shape == (2, 5, 3)


def test_stripe_must_divide_the_map():
    model = timm.create_model("cswin_tiny_224", num_classes=0)
    with pytest.raises(ValueError, match="not divisible by stripe width 2"):
        model(torch.randn(1, 3, 40, 40))  # stage 1 map is 5x5


def _copy_cswin_blocks(blocks: list[CSWinBlock], layer: BranchCSWinBlock) -> None:
    """Randomise K plain blocks and copy their weights into the batched layer."""
    with torch.no_grad():
        for b in blocks:
            for p in b.parameters():
                p.normal_(0, 0.2)
        for name in ("norm1", "norm2"):
            getattr(layer, name).weight.copy_(torch.stack([getattr(b, name).weight for b in blocks]))
            getattr(layer, name).bias.copy_(torch.stack([getattr(b, name).bias for b in blocks]))
        for name in ("qkv", "proj", "mlp.fc1", "mlp.fc2"):
            ours, theirs = layer.get_submodule(name), [b.get_submodule(name) for b in blocks]
            ours.weight.copy_(torch.stack([t.weight for t in theirs])[:, None])
            ours.bias.copy_(torch.stack([t.bias for t in theirs]))
        for i, conv in enumerate(layer.lepe):
            conv.weight.copy_(torch.cat([b.lepe[i].weight for b in blocks]))
            conv.bias.copy_(torch.cat([b.lepe[i].bias for b in blocks]))


@pytest.mark.parametrize("global_attn", [False, True])
def test_batched_cswin_gram_layer_equals_separate_blocks(global_attn):
    k, d, heads = 3, 32, 4
    blocks = [CSWinBlock(d, heads, stripe=2, global_attn=global_attn) for _ in range(k)]
    layer = BranchCSWinBlock(d, k, heads, stripe=2, global_attn=global_attn)
    _copy_cswin_blocks(blocks, layer)
    assert sum(p.numel() for p in layer.parameters()) == sum(p.numel() for b in blocks for p in b.parameters())
    x = torch.randn(2, k, d, 4, 6)
    expected = torch.stack([b(x[:, i].permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for i, b in enumerate(blocks)], 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)
