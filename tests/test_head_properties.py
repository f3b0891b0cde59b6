"""Property tests of the heads and the gram vector's numerical range (item 3).

Hypothesis draws the width C, the map size H x W, the branch count K, the class count, the
batch (1 runs in eval mode: train-mode BN needs two values per channel), the memory format
and the head's own sizes. For every draw the logits are finite with shape (B, K, classes),
channels-last input gives what contiguous input gives, and the ensemble prediction of a
MultiBranchModel equals the mean of the K per-branch heads run one by one (tests/reference_heads).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_heads import randomize, reference_of

from gaheads.heads import create_head
from gaheads.models.base import MultiBranchModel

KINDS = ["ga", "seqattn", "seqpool", "sg", "at"]


class FeatureMap(torch.nn.Module):
    """A stand-in backbone whose features are its input, so the head sees exactly the drawn map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # MultiBranchModel calls its backbone for the features
        return x


@st.composite
def head_configs(draw):
    kind = draw(st.sampled_from(KINDS))
    dim = draw(st.sampled_from([32, 64, 96]))  # e = C/4 must split over 8 attention heads
    kwargs: dict = {}
    if kind in ("ga", "sg"):
        d = draw(st.sampled_from([15, 16]))  # d(d+1)/2 = 120, 136: both split into 8 embedding groups
        kwargs.update(gram_dim=d, contraction_groups=1 if d == 15 else draw(st.sampled_from([1, 2, 4])))
    if kind in ("ga", "seqattn", "at"):
        kwargs.update(attn_dim=dim // 4, mlp_groups=draw(st.sampled_from([1, 2, 4])))
    return kind, dim, kwargs


@settings(max_examples=15, deadline=None, derandomize=True)
@given(config=head_configs(), h=st.integers(1, 6), w=st.integers(1, 6), k=st.integers(1, 4),
       classes=st.integers(1, 12), batch=st.integers(1, 4), channels_last=st.booleans(), train=st.booleans())
def test_head_properties(config, h, w, k, classes, batch, channels_last, train):
    kind, dim, kwargs = config
    torch.manual_seed(0)
    model = MultiBranchModel(FeatureMap(), create_head(kind, dim, classes, k, **kwargs))
    randomize(model.head)
    model.train(train and batch > 1)
    x = torch.randn(batch, dim, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        branches = model(x, return_branches=True)
        ensemble = model(x)
        reference = reference_of(model.head)[0](x.contiguous())
        other_layout = model(x.contiguous(memory_format=torch.contiguous_format if channels_last
                                          else torch.channels_last))
    assert branches.shape == (batch, k, classes)
    assert ensemble.shape == (batch, classes)
    assert torch.isfinite(branches).all()
    torch.testing.assert_close(ensemble, branches.mean(dim=1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ensemble, reference.mean(dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other_layout, ensemble, atol=1e-5, rtol=1e-5)


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("kind", ["ga", "sg"])
@pytest.mark.parametrize("scale", [0.0, 1e4])
@pytest.mark.parametrize("precision", list(AUTOCAST))
@pytest.mark.parametrize("train", [True, False])
def test_gram_vector_finite_for_extreme_activations(kind, scale, precision, train):
    """All-zero maps and 1e4-scale activations: a finite float32 gram vector (unit norm, or 0 for a zero map)
    and finite logits and gradients, in float32 and under bf16 / fp16 autocast."""
    kwargs = dict(gram_dim=16, contraction_groups=4) | (dict(attn_dim=8) if kind == "ga" else {})
    head = create_head(kind, 32, 5, 2, **kwargs).train(train)
    x = (torch.randn(3, 32, 6, 6) * scale).requires_grad_()
    dtype = AUTOCAST[precision]
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        tokens = x.flatten(2).transpose(1, 2)
        gram = head.query.gram(tokens, (6, 6))
        out = head(x)
    assert gram.dtype == torch.float32 and torch.isfinite(gram).all()
    # a zero map contracts to zero (zero-init biases; train BN of a constant is zero): the gram
    # vector is then exactly zero, not NaN; otherwise it has unit norm
    expected = torch.full((3, 2), 0.0 if scale == 0.0 else 1.0)
    torch.testing.assert_close(gram.norm(dim=-1), expected, atol=1e-3, rtol=0)
    assert torch.isfinite(out).all()
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
