import pytest
import torch

from gaheads.heads import GramAttentionHead, create_head, gram_vector, to_tokens
from gaheads.heads.common import gram_triangle_index

KINDS = ["ga", "seqattn", "seqpool", "sg", "at"]


def small_kwargs(kind, dim):
    return {"ga": dict(gram_dim=16, contraction_groups=4, attn_dim=dim // 4),
            "sg": dict(gram_dim=16, contraction_groups=4),
            "seqattn": dict(attn_dim=dim // 4), "at": dict(attn_dim=dim // 4), "seqpool": {}}[kind]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 64, 7, 7), (3, 64, 5, 9), (2, 64, 1, 1), (2, 49, 64), (1, 10, 64)])
@pytest.mark.parametrize("k", [1, 3])
def test_head_shapes_any_spatial_size(kind, shape, k):
    head = create_head(kind, 64, num_classes=11, num_branches=k, **small_kwargs(kind, 64)).eval()
    out = head(torch.randn(*shape))
    assert out.shape == (shape[0], k, 11)
    assert torch.isfinite(out).all()
    emb = head(torch.randn(*shape), pre_logits=True)
    assert emb.shape == (shape[0], k, 64)


@pytest.mark.parametrize("kind", KINDS)
def test_head_channels_last_equals_contiguous(kind):
    head = create_head(kind, 32, num_classes=5, num_branches=2, **small_kwargs(kind, 32)).eval()
    x = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(head(x), head(x.contiguous(memory_format=torch.channels_last)))


def test_map_and_tokens_agree():
    head = GramAttentionHead(32, 5, 2, gram_dim=16, contraction_groups=4, attn_dim=8).eval()
    x = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(head(x), head(x.flatten(2).transpose(1, 2)))


def test_to_tokens_rejects_bad_rank():
    with pytest.raises(ValueError, match="feature map"):
        to_tokens(torch.randn(3, 4))


def test_gram_vector_matches_definition():
    d, h, w = 5, 3, 4
    xc = torch.randn(2, 3, d, h * w, dtype=torch.float64)
    idx = gram_triangle_index(d)
    assert idx.tolist()[: d] == [0, 1, 2, 3, 4] and len(idx) == d * (d + 1) // 2
    got = gram_vector(xc.float(), h, idx)
    for b in range(2):
        for k in range(3):
            z = xc[b, k] / h
            g = z @ z.T / (h * w)
            vec = torch.stack([g[i, j] for i in range(d) for j in range(i, d)])
            torch.testing.assert_close(got[b, k].double(), vec / vec.norm(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [0.0, 1.0, 1e4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gram_is_float32_and_finite_under_autocast(scale, dtype):
    head = GramAttentionHead(32, 5, 2, gram_dim=16, contraction_groups=4, attn_dim=8).eval()
    x = torch.randn(2, 32, 6, 6) * scale
    with torch.autocast("cpu", dtype=dtype):
        tokens, hw = to_tokens(x.to(dtype))
        g = head.query.gram(tokens, hw)
        out = head(x.to(dtype))
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
    assert torch.isfinite(out).all()


def test_tri_index_is_buffer_not_state():
    head = GramAttentionHead(32, 5, 1, gram_dim=16, contraction_groups=4, attn_dim=8)
    assert "query.tri_index" in dict(head.named_buffers())
    assert "query.tri_index" not in head.state_dict()


def test_attention_weights_sum_to_one():
    head = create_head("seqattn", 32, 5, 3, attn_dim=8).eval()
    logits, attn = head.forward_with_attention(torch.randn(2, 32, 4, 4))
    assert logits.shape == (2, 3, 5) and attn.shape == (2, 3, 8, 17)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 8))


def test_reset_classifier_and_zero_classes():
    head = create_head("ga", 32, 5, 2, gram_dim=16, contraction_groups=4, attn_dim=8).eval()
    head.reset_classifier(0)
    assert head(torch.randn(1, 32, 3, 3)).shape == (1, 2, 32)
    assert not any("classifier" in n for n, _ in head.named_parameters())


def test_unknown_head():
    with pytest.raises(ValueError, match="unknown head"):
        create_head("nope", 8, 2)
