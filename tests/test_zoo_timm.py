"""GA-ResNet50, GA-ViT-S/M and K-branch heads on any timm backbone (``<head><K>@<model>``)."""

import pytest
import safetensors.torch
import timm
import torch
from zoo_checks import forward_backward, meta_params, within

import gaheads
from gaheads.checkpoint import build_model, model_config
from gaheads.flops import count_macs
from gaheads.models import GAResNet, TimmBackboneModel
from gaheads.models.factory import UnknownModelError

PAPER = {"ga_resnet50": (41.3, 5.2), "ga_vit_small": (27.7, 4.3), "ga_vit_medium": (60.5, 9.6)}


@pytest.mark.parametrize("name", list(PAPER))
def test_params_within_3pct_of_paper(name):
    params = meta_params(name)
    assert within(params / 1e6, PAPER[name][0], 0.03), params


# measured equal under torch 2.6.0 / timm 1.0.16 (constraints/floor.txt) and torch 2.14.1 / timm 1.0.31
# (constraints/lock.txt): count_macs counts attention under the math backend, so no kernel choice shows
@pytest.mark.parametrize("name, size", [("ga_resnet50", 224), ("ga_vit_small", 224),
                                        pytest.param("ga_vit_medium", 32, marks=pytest.mark.slow)])
def test_gmacs_within_3pct_and_forward_backward(name, size):
    model = timm.create_model(name)
    gmacs = count_macs(model, (3, 224, 224)) / 1e9
    assert within(gmacs, PAPER[name][1], 0.03), gmacs
    assert model.num_branches == 5
    if size != 224:  # ViT's positional embedding fixes the input size
        model = timm.create_model(name, img_size=size)
    assert forward_backward(model, size).shape == (2, 5, 1000)


def test_ga_resnet50_aggregates_all_four_stages():
    with torch.device("meta"):
        model = timm.create_model("ga_resnet50")
    assert model.backbone.fifth.conv1.in_channels == 256 + 512 + 1024 + 2048  # a = 0
    assert model.backbone.fifth.shortcut[0].bias is None  # the BN after it would cancel it
    assert model.head.query.gram_dim == 192 and model.head.block.attn_dim == 192 and model.num_features == 512


def test_ga_vit_drops_the_class_token():
    model = timm.create_model("ga_vit_small", num_classes=10, img_size=64)
    assert model.backbone.num_prefix_tokens == 1
    assert {"backbone.model.pos_embed", "backbone.model.cls_token"} <= model.no_weight_decay()
    assert model.forward_features(torch.randn(2, 3, 64, 64)).shape == (2, 16, 384)


def test_pattern_model_forward_shape_and_rebuild():
    model = gaheads.create_model("ga3@resnet18", num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    assert forward_backward(model, 64).shape == (2, 3, 10)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    assert model.gaheads_config == {"name": "ga3@resnet18", "kwargs": {"num_classes": 10}}
    rebuilt = build_model(model_config(model))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert model.pretrained_cfg["classifier"] == "head.classifier" and model.pretrained_cfg["num_classes"] == 10


@pytest.mark.parametrize("pattern", ["seqattn4@efficientnet_b0", "sg2@resnet18", "at2@resnet18", "seqpool3@resnet18",
                                     "gram2@resnet18"])
def test_every_head_kind_on_a_timm_backbone(pattern):
    model = gaheads.create_model(pattern, num_classes=7)
    k = int(pattern.split("@")[0].lstrip("abcdefghijklmnopqrstuvwxyz"))
    assert forward_backward(model, 32).shape == (2, k, 7)


def test_channels_last_backbone_features_are_made_channels_first():
    # a narrow Swin (timm outputs NHWC); its last map is 7x7 at 224
    model = gaheads.create_model("at2@swin_tiny_patch4_window7_224", num_classes=5, embed_dim=16,
                                 depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    assert model.backbone.channels_last
    assert model.forward_features(torch.randn(2, 3, 224, 224)).shape == (2, 128, 7, 7)
    assert forward_backward(model, 224).shape == (2, 2, 5)


def test_vit_register_and_class_tokens_are_dropped():
    model = gaheads.create_model("ga2@vit_tiny_patch16_224", num_classes=5, img_size=32, depth=1, reg_tokens=4)
    assert model.backbone.num_prefix_tokens == 5
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 4, 192)
    assert forward_backward(model, 32).shape == (2, 2, 5)


def test_backbone_checkpoint_reports_missing_and_unexpected_keys(tmp_path):
    donor = timm.create_model("resnet18")  # with its fc classifier
    path = tmp_path / "resnet18.pth"
    torch.save(donor.state_dict(), path)
    with pytest.warns(UserWarning, match="2 unexpected keys"):
        model = gaheads.create_model("ga2@resnet18", num_classes=4, backbone_checkpoint=str(path))
    assert model.backbone_load_result.missing_keys == []
    assert sorted(model.backbone_load_result.unexpected_keys) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(model.backbone.model.conv1.weight, donor.conv1.weight)
    assert "backbone_checkpoint" not in model.gaheads_config["kwargs"]

    state = {k: v for k, v in donor.state_dict().items() if not k.startswith(("fc.", "layer4.1.bn2"))}
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state, "epoch": 3}, wrapped)
    with pytest.warns(UserWarning, match="missing keys"):
        result = TimmBackboneModel("resnet18", "seqpool", 2, 4, backbone_checkpoint=wrapped).backbone_load_result
    assert sorted(result.missing_keys) == ["layer4.1.bn2.bias", "layer4.1.bn2.running_mean",
                                           "layer4.1.bn2.running_var", "layer4.1.bn2.weight"]
    assert result.unexpected_keys == []

    st = tmp_path / "resnet18.safetensors"
    full = {k: v for k, v in donor.state_dict().items() if not k.startswith("fc.")}
    safetensors.torch.save_file(full, st)
    model = TimmBackboneModel("resnet18", "ga", 2, 4, backbone_checkpoint=st)
    assert model.backbone_load_result.missing_keys == [] and model.backbone_load_result.unexpected_keys == []

    assert model.gaheads_config == {"name": "ga2@resnet18", "kwargs": {"num_classes": 4}}
    # GA-ResNet's multi-scale trunk is a timm ResNet: the same checkpoints load into it
    with pytest.warns(UserWarning, match="unexpected keys"):
        ga_resnet = GAResNet("resnet18", fifth_dim=64, gram_dim=16, attn_dim=16, num_classes=4,
                             backbone_checkpoint=path)
    assert ga_resnet.backbone_load_result.missing_keys == []
    torch.testing.assert_close(ga_resnet.backbone.trunk.layer1[0].conv1.weight, donor.layer1[0].conv1.weight)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        TimmBackboneModel("resnet18", backbone_checkpoint=tmp_path / "nope.pth")


@pytest.mark.parametrize("name, message", [
    ("ga5@resnet1888", "unknown timm model 'resnet1888'.*did you mean resnet18"),
    ("foo5@resnet18", "unknown head 'foo'"),
    ("ga@resnet18", "bad model pattern"),
    ("ga0@resnet18", "branch count must be >= 1"),
])
def test_bad_patterns_raise_one_line_errors(name, message):
    with pytest.raises(UnknownModelError, match=message):
        gaheads.create_model(name)


@pytest.mark.parametrize("shortcut_bias", [True, False])
def test_levelwise_fifth_stage_equals_the_concatenation(shortcut_bias):
    """SEBottleneck.forward_pyramid (GA-ResNet50's neck) == forward(aggregate(...)): outputs and gradients."""
    from gaheads.models.multiscale import SEBottleneck, aggregate

    torch.manual_seed(0)
    shapes = [(8, 16), (16, 8), (32, 4), (32, 4), (64, 2)]  # larger, larger, same, same, smaller than 4x4
    feats = [torch.randn(3, c, s, s, requires_grad=True) for c, s in shapes]
    block = SEBottleneck(sum(c for c, _ in shapes), 64, shortcut_bias=shortcut_bias).train()
    for bn in (m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
        torch.nn.init.normal_(bn.bias)
    ref = block(aggregate(feats, (4, 4)))
    ref_grads = torch.autograd.grad(ref.square().sum(), [*feats, *block.parameters()])
    out = block.forward_pyramid(feats, (4, 4))
    grads = torch.autograd.grad(out.square().sum(), [*feats, *block.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    names = [f"feature {i}" for i in range(len(feats))] + [n for n, _ in block.named_parameters()]
    for name, g, r in zip(names, grads, ref_grads):
        if name == "shortcut.0.bias":  # the BN after it cancels it: its true gradient is 0, both are rounding
            assert g.abs().max() < 1e-3 and r.abs().max() < 1e-3
            continue
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()), msg=name)



@pytest.mark.parametrize("size, target", [((56, 56), (14, 14)), ((28, 20), (14, 10)), ((15, 15), (7, 7))])
def test_pool_to_equals_adaptive_pooling(size, target):
    """The box-filter shortcut (sizes that divide) and the fallback both equal adaptive average pooling."""
    from gaheads.models.multiscale import pool_to

    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(pool_to(x, target), torch.nn.functional.adaptive_avg_pool2d(x, target))
