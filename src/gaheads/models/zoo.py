"""The published sizes the model zoo reproduces: the GA paper's Table 3 and its baselines.

"paper" = the figure printed in the paper (params in millions, GFLOPs = GMACs at 224);
"ref" = the research code, measured with torch's FLOP counter. ``gaheads info
--paper`` prints these side by side with our own counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PublishedRow:
    model: str  # our registered name (or timm's, for a baseline)
    published: str  # the row's name in the paper
    paper_params_m: float | None = None
    paper_gflops: float | None = None
    ref_params: int | None = None
    ref_gmacs: float | None = None
    release_alias: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


GA_ROWS: tuple[PublishedRow, ...] = (
    PublishedRow("ga_convnext_tiny_688", "GA-ConvNeXt-T", 48.7, 6.3, 47_821_324, 5.454, "ga_convnext_tiny"),
    PublishedRow("ga_convnext_tiny_768", "GA-ConvNeXt-T, D=768 (release only)", None, None, 54_354_584, 5.754),
    PublishedRow("ga_convnext_small_688", "GA-ConvNeXt-S", 70.4, 10.5, 70_116_364, 9.812, "ga_convnext_small"),
    PublishedRow("ga_convnext_small_768", "GA-ConvNeXt-S, D=768 (release only)", None, None, 76_726_424, 10.127),
    PublishedRow("ga_convnext_base_976", "GA-ConvNeXt-B", 124.3, 19.0, 123_688_396, 17.333, "ga_convnext_base"),
    PublishedRow("ga_convnext_base_1024", "GA-ConvNeXt-B, D=1024 (release only)", None, None, 128_839_176, 17.590),
    PublishedRow("ga_resnet50", "GA-ResNet50", 41.3, 5.2),
    PublishedRow("ga_vit_small", "GA-ViT-S", 27.7, 4.3),
    PublishedRow("ga_vit_medium", "GA-ViT-M", 60.5, 9.6),
    PublishedRow("ga_cswin_tiny_224", "GA-CSWin-T", 42.0, 6.1, release_alias="ga_CSWin_64_12211_tiny_224"),
    PublishedRow("ga_cswin_small_224", "GA-CSWin-S", 54.3, 8.7, release_alias="ga_CSWin_64_24322_small_224"),
)

BASELINE_ROWS: tuple[PublishedRow, ...] = (
    PublishedRow("convnext_tiny", "ConvNeXt-T", ref_params=28_589_128, ref_gmacs=4.456),
    PublishedRow("convnext_small", "ConvNeXt-S", ref_params=50_223_688, ref_gmacs=8.684),
    PublishedRow("convnext_base", "ConvNeXt-B", ref_params=88_591_464, ref_gmacs=15.355),
    PublishedRow("resnet50", "RSB-ResNet50", 25.6, 4.1, 25_557_032, 4.089),
    PublishedRow("vit_small_patch16_224", "ViT-S", 22.1, 4.2, 22_050_664, 4.599),
    PublishedRow("vit_base_patch16_224", "ViT-B", 86.6, 16.9),
    PublishedRow("cswin_tiny_224", "CSWin-T (CSWin paper)", 23.0, 4.3),
    PublishedRow("cswin_small_224", "CSWin-S (CSWin paper)", 35.0, 6.9),
)
