"""The defaults that reproduce the research releases, and the options that keep our earlier choices."""

import math

import pytest
import timm
import torch
from torch import nn

from gaheads.backbones.cct import PassThroughAttention
from gaheads.heads.seq import TokenAxisQuery
from gaheads.models.gram_layers import BranchBottleneck, BranchConvNeXtBlock, BranchCSWinBlock, branch_drop_path


def test_cct_layernorms_use_eps_1e5():
    m = timm.create_model("ga2_cct_2_3x2_32")
    eps = {mod.eps for mod in m.backbone.modules() if isinstance(mod, nn.LayerNorm)}
    assert eps == {1e-5}
    assert timm.create_model("cct_2_3x2_32", norm_eps=1e-6).backbone.blocks[0].norm1.eps == 1e-6


# (layer, fan_in = in_channels / groups of the release's Conv2d) on ga8_cct_7_3x1_32
CONV_LAYERS = [("query.contract", 32), ("query.embed", 260), ("block.fc1", 128), ("block.fc2", 512)]


def test_release_head_init_is_pytorchs_default_conv_init():
    torch.manual_seed(0)
    head = timm.create_model("ga8_cct_7_3x1_32").head
    for name, fan_in in CONV_LAYERS:
        layer = head.get_submodule(name)
        bound = 1 / math.sqrt(fan_in)
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
        # U(-b, b) has std b/√3: 0.102, 0.036, 0.051, 0.026
        assert float(layer.weight.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.03)
        assert float(layer.bias.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.15)
    # the releases' Linear layers keep trunc-normal 0.02 and zero bias
    assert float(head.block.q.detach().std()) == pytest.approx(0.02, rel=0.05)
    assert float(head.classifier.weight.detach().std()) == pytest.approx(0.02, rel=0.05)
    assert not head.classifier.bias.any() and not head.block.proj.bias.any()


def test_trunc_normal_head_init_option():
    torch.manual_seed(0)
    head = timm.create_model("ga8_cct_7_3x1_32", head_init="trunc_normal").head
    for name, _ in CONV_LAYERS:
        assert float(head.get_submodule(name).weight.detach().std()) == pytest.approx(0.02, rel=0.05)
        assert not head.get_submodule(name).bias.any()
    with pytest.raises(ValueError, match=r"^head_init must be one of \['release', 'trunc_normal'\], got 'x'$"):
        timm.create_model("ga1_cct_2_3x2_32", head_init="x")


def test_at_query_is_a_linear_over_the_token_axis_then_a_mean():
    torch.manual_seed(0)
    q = TokenAxisQuery(256)
    with torch.no_grad():
        q.fc.weight.normal_()
        q.fc.bias.normal_()
    x = torch.randn(3, 256, 64, dtype=torch.float64)
    q = q.double()
    # as released: Linear(N -> 128) on the tokens transposed to (B, C, N), then the mean of the 128 outputs
    reference = nn.functional.linear(x.transpose(1, 2), q.fc.weight, q.fc.bias).mean(-1)
    torch.testing.assert_close(q(x)[:, 0], reference, rtol=1e-12, atol=1e-12)
    assert sum(p.numel() for p in q.parameters()) == 32_896
    with pytest.raises(ValueError, match="built for 256 tokens, got 64"):
        q(torch.randn(1, 64, 64, dtype=torch.float64))


def test_at_default_is_the_released_query_and_softmax_is_an_option():
    released = timm.create_model("at2_cct_7_3x1_32", num_classes=100)
    softmax = timm.create_model("at2_cct_7_3x1_32", num_classes=100, query="softmax")
    released_keys, softmax_keys = released.state_dict().keys(), softmax.state_dict().keys()
    assert "head.token_query.fc.weight" in released_keys and "head.pooling.score.weight" not in released_keys
    assert "head.pooling.score.weight" in softmax_keys and "head.token_query.fc.weight" not in softmax_keys
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(released) - n(softmax) == 32_896 - 257  # the token-axis Linear replaces a Linear(256 -> 1)
    x = torch.randn(2, 3, 32, 32)
    assert released(x).shape == softmax(x).shape == (2, 100)


def test_sg_identity_attention_option_reproduces_the_released_encoder():
    torch.manual_seed(0)
    m = timm.create_model("sg2_cct_2_3x2_32", encoder_attention="identity").eval()
    block = m.backbone.blocks[0]
    assert isinstance(block.attn, PassThroughAttention)
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        x1 = x + block.norm1(x)  # the attention hands back its input, the residual adds it
        torch.testing.assert_close(block(x), x1 + block.mlp(block.norm2(x1)))
    # its parameters are the same (release checkpoints fill them) but the default keeps real attention
    assert sum(p.numel() for p in m.parameters()) == sum(
        p.numel() for p in timm.create_model("sg2_cct_2_3x2_32").parameters())
    assert type(timm.create_model("sg2_cct_2_3x2_32").backbone.blocks[0].attn).__name__ == "Attention"
    with pytest.raises(ValueError, match=r"^encoder_attention must be one of \['identity', 'softmax'\], got 'none'$"):
        timm.create_model("sg2_cct_2_3x2_32", encoder_attention="none")


def test_branch_drop_path_drops_whole_branches_per_sample():
    torch.manual_seed(0)
    y = torch.ones(64, 4, 3, 5, 5)
    out = branch_drop_path(y, 0.25, training=True)
    per_branch = out.flatten(2)
    kept = per_branch > 0
    torch.testing.assert_close(per_branch[kept], torch.full_like(per_branch[kept], 1 / 0.75))
    assert (per_branch == per_branch[..., :1]).all()  # one draw per (sample, branch)
    assert 0.6 < float((per_branch[..., 0] > 0).float().mean()) < 0.9
    assert torch.equal(branch_drop_path(y, 0.25, training=False), y)


def test_gram_layers_get_the_full_drop_path_rate():
    with torch.device("meta"):
        convnext = timm.create_model("ga_convnext_tiny", drop_path_rate=0.2)
        cswin = timm.create_model("ga_cswin_tiny_224", drop_path_rate=0.3)
        resnet = timm.create_model("ga_resnet50", drop_path_rate=0.1)
    assert isinstance(convnext.head.query.gram_layer, BranchConvNeXtBlock)
    assert convnext.head.query.gram_layer.drop_path == 0.2
    assert isinstance(cswin.head.query.gram_layer, BranchCSWinBlock) and cswin.head.query.gram_layer.drop_path == 0.3
    assert isinstance(resnet.head.query.gram_layer, BranchBottleneck) and resnet.head.query.gram_layer.drop_path == 0.1


@pytest.mark.parametrize("layer", [BranchConvNeXtBlock(8, 3, drop_path=0.5), BranchBottleneck(8, 3, drop_path=0.5),
                                   BranchCSWinBlock(8, 3, num_heads=2, stripe=2, drop_path=0.5)])
def test_gram_layer_drop_path_in_training_only(layer):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 4, 4)
    if isinstance(layer, BranchBottleneck):
        nn.init.ones_(layer.bn3.weight)  # zero-initialised: the residual branch would add nothing to drop
    layer.eval()
    with torch.no_grad():
        deterministic = layer(x)
        torch.testing.assert_close(layer(x), deterministic)
        layer.train()
        torch.manual_seed(1)
        a = layer(x)
        torch.manual_seed(2)
        b = layer(x)
    assert not torch.equal(a, b)  # different masks, different outputs
    assert a.shape == x.shape
