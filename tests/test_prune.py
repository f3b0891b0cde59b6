"""timm's pruning API (``prune_intermediate_layers``) on one small model of each family.

What timm's ``test_prune_intermediate_layers_contract`` checks: pruned to any ``feature_info``
level, the model still gives that level's tap unchanged, ``forward_features`` ends at it, every
remaining parameter gets a gradient (nothing unused is left, as DDP needs), and pruning at the
last level without the head keeps the logits.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch

import gaheads
from gaheads.models.ga_timm import GAResNet

# (name, kwargs, input side): narrow / shallow configurations of the registered families
SMALL = {
    "cct_2_3x2_32": ({}, 32),
    "ga2_cct_2_3x2_32": ({}, 32),
    "at2_cct_2_3x2_32": ({}, 32),
    "ga_convnext_tiny_688": (dict(depths=(1, 1, 3, 1), dims=(16, 32, 64, 96), attn_dim=32, gram_dim=16,
                                  num_intermediates=1), 64),
    "ga_resnet18": (dict(model_name="resnet18", fifth_dim=64, num_intermediates=1, gram_dim=32, attn_dim=32), 64),
    "ga_vit_small": (dict(depth=3, img_size=32), 32),
    "cswin_tiny_224": (dict(depths=(1, 1, 2, 1)), 112),
    "ga_cswin_tiny_224": (dict(depths=(1, 1, 2, 1), num_intermediates=1, fifth_dim=64, gram_dim=64, attn_dim=32),
                          112),
    "ga2@resnet18": ({}, 64),
}


def timm_resnet_prunes_to_its_stem() -> bool:
    """Whether the installed timm's own ResNet, pruned to its stem level, ends its features there.

    Before timm 1.0.20 or so its stem max-pool stayed in ``forward_features``; pattern models hand
    pruning to the timm backbone, so they follow whichever behaviour timm has.
    """
    resnet = timm.create_model("resnet18", num_classes=0).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tap = resnet.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
        resnet.prune_intermediate_layers([0], prune_norm=True)
        return resnet.forward_features(x).shape == tap.shape


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs, _ = SMALL[name]
    if name == "ga_resnet18":  # GA-ResNet on a smaller trunk (only resnet50 is registered)
        return GAResNet(num_classes=7, **kwargs).eval()
    create = gaheads.create_model if "@" in name else timm.create_model
    return create(name, num_classes=7, **kwargs).eval()


def sample(name: str) -> torch.Tensor:
    side = SMALL[name][1]
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(SMALL))
def test_prune_keeps_taps_and_uses_every_parameter(name: str) -> None:
    model = build(name)
    x = sample(name)
    last = len(model.feature_info) - 1
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        kept = copy.deepcopy(model)
        assert kept.prune_intermediate_layers([last], prune_head=False) == [last]
        torch.testing.assert_close(kept(x), expected, rtol=0, atol=0)  # nothing after the last level went
        assert kept.num_classes == 7
    assert len(taps) == last + 1
    for i in range(last + 1):
        pruned = copy.deepcopy(model)
        take = pruned.prune_intermediate_layers([i], prune_norm=True)
        assert take == [i]
        assert pruned.num_classes == 0
        with torch.no_grad():
            tap = pruned.forward_intermediates(x, indices=take, intermediates_only=True)
            torch.testing.assert_close(tap[0], taps[i], rtol=0, atol=0)
            features = pruned.forward_features(x)
            torch.testing.assert_close(pruned(x), features, rtol=0, atol=0)  # no head: forward gives the features
            if features.ndim == 4:  # maps end at the tap (the plain CSWin's are channels-last)
                if features.shape != taps[i].shape:
                    features = features.permute(0, 3, 1, 2)
                stem_of_old_timm = "@" in name and i == 0 and not timm_resnet_prunes_to_its_stem()
                if (i < last or name.startswith("ga")) and not stem_of_old_timm:  # the GA neck goes with the head
                    torch.testing.assert_close(features, taps[i], rtol=0, atol=0)
                    assert pruned.num_features == features.shape[1] == model.feature_info[i]["num_chs"]
        pruned.train()
        tap = pruned.forward_intermediates(x, indices=take, intermediates_only=True)
        (tap[0].sum() + pruned.forward_features(x).sum()).backward()
        unused = [n for n, p in pruned.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, f"pruned to {i}: {unused}"
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_pruned_head_cannot_get_classes_back() -> None:
    model = build("ga2_cct_2_3x2_32")
    model.prune_intermediate_layers([1])
    assert len(model.backbone.blocks) == 1 and model.get_classifier() is model.head
    model.reset_classifier(0, "")  # what timm's feature wrappers call: allowed
    with pytest.raises(ValueError, match="prune_intermediate_layers"):
        model.reset_classifier(10)
