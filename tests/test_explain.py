"""explain: per-branch class-attention maps are proper distributions, the PNG is written, GA adds gram similarity."""

from __future__ import annotations

import numpy as np
import torch
from model_fixtures import make_checkpoint
from PIL import Image

import gaheads
from gaheads.checkpoint import data_config
from gaheads.cli import explain as explain_cli
from gaheads.explanation import describe
from gaheads.inference import eval_transform, load_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def digit_image(path) -> str:
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(path)
    return str(path)


def test_seqattn_attention_is_a_distribution_and_png_is_written(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "last.pth")
    model = gaheads.load(ckpt)
    result = gaheads.explain(model, digit_image(tmp_path / "d.png"), tmp_path / "out.png")
    k, heads, n_tokens = result.attention.shape
    assert (k, n_tokens) == (4, 1 + 8 * 8) and result.grid == (8, 8)  # CCT-2/3x2 at 32x32: 8x8 tokens
    assert (result.attention >= 0).all()
    assert torch.allclose(result.attention.sum(-1), torch.ones(k, heads), atol=1e-5)
    # the drawn map is the spatial part (column 0 is the query itself), averaged over heads
    assert torch.allclose(result.token_attention, result.attention[:, :, 1:].mean(1))
    assert result.maps.shape == (4, 32, 32) and result.gram_similarity is None
    assert (tmp_path / "out.png").read_bytes()[:8] == PNG_MAGIC
    assert [b["class"] for b in describe(result)["branches"]] == [c for c, _ in result.branch_top]


def test_ga_head_adds_gram_similarity_and_cli_writes_png(tmp_path, capsys):
    ckpt, model = make_checkpoint(tmp_path / "last.pth", name="ga4_cct_2_3x2_32")
    image = digit_image(tmp_path / "d.png")
    result = gaheads.explain(gaheads.load(ckpt), image)
    sim = result.gram_similarity
    assert sim.shape == (4, 4) and torch.allclose(sim, sim.T, atol=1e-6)
    assert torch.allclose(sim.diagonal(), torch.ones(4), atol=1e-5)
    assert (result.attention >= 0).all() and torch.allclose(result.attention.sum(-1), torch.ones(4, 8), atol=1e-5)
    # each branch's title class is that branch's own argmax
    x = eval_transform(data_config(model))(load_image(image))
    with torch.no_grad():
        branch_idx = model(x[None], return_branches=True)[0].argmax(-1).tolist()
    assert [c for c, _ in result.branch_top] == [str(i) for i in branch_idx]

    out = tmp_path / "cli.png"
    assert explain_cli.main(["--checkpoint", str(ckpt), image, "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC and "branch 3:" in capsys.readouterr().out
    assert explain_cli.main(["--checkpoint", str(ckpt), str(tmp_path / "none.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gaheads explain: ") and "none.png" in err and err.count("\n") == 1


def test_explain_figure_has_a_colour_bar_and_says_what_self_means(tmp_path):
    torch.manual_seed(0)
    model = gaheads.create_model("seqattn2_cct_2_3x2_32", num_classes=10).eval()
    result = gaheads.explain(model, digit_image(tmp_path / "d.png"))
    fig = result.figure()
    note = fig._supxlabel.get_text()
    assert note.splitlines()[0].startswith("maps: each branch's attention over the image tokens")
    assert '"self N%": the share of its attention the branch\'s query token keeps on itself' in note
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "attention / the map's peak" in labels  # the maps' shared colour bar
    assert fig._suptitle.get_text() == "seqattn head, 2 branches — class attention maps"


def test_diversity_plot_one_branch_and_a_readable_scale(tmp_path):
    from gaheads.diversity import BranchDiversity, colour_range, plot_diversity

    div = BranchDiversity(1)
    div.update(torch.randn(6, 1, 5, generator=torch.Generator().manual_seed(0)))
    report = div.compute()
    assert report["mean_agreement"] is None and report["mean_correlation"] is None  # no pairs: no "nan"
    plot_diversity({**report, "branch_top1": [80.0], "top1": 80.0}, str(tmp_path / "one.png"), title="one")
    assert (tmp_path / "one.png").read_bytes()[:8] == PNG_MAGIC
    # 0.9964 vs 0.9977 sit in one narrow band of a >= 0.05 wide scale, not at its two ends
    lo, hi = colour_range(torch.tensor([0.9964, 0.9977]), "correlation")
    assert (round(lo, 5), round(hi, 5)) == (0.95, 1.0)
    assert colour_range(torch.tensor([20.0, 90.0]), "agreement") == (20.0, 90.0)
    assert colour_range(torch.tensor([99.0, 99.5]), "agreement") == (90.0, 100.0)
