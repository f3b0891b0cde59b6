"""Gram layers: one backbone block per GA branch, all K branches in one batched pass.

A gram layer maps the contracted features of every branch, (B, K, d, H, W), to the same
shape (step 2 of the GA head). Each module here holds K independent blocks as stacked weights
and runs them without a Python loop over branches: depthwise convs become one grouped
conv over K*d channels, LayerNorms normalise over d with a (K, d) affine, linear layers
are batched matmuls with (K, in, out) weights. Parameter counts equal K separate blocks.
timm's blocks take one branch at a time, hence these batched versions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import register_notrace_module
from torch import nn

from ..backbones.cswin import LePEParams, check_cswin_dims, cross_shaped_attention
from ..heads.common import BranchLayerNorm, BranchLinear


def branch_drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth for K branches: drop a residual (B, K, ...) per sample and branch with
    probability ``rate`` and scale the kept ones by 1/(1-rate) — what K separate timm ``DropPath``
    modules do (each draws its own mask)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty(x.shape[:2] + (1,) * (x.ndim - 2)).bernoulli_(keep)
    return x * mask.div_(keep)


def branch_depthwise_conv(channels: int, num_branches: int, kernel_size: int, bias: bool = True) -> nn.Conv2d:
    """K depthwise convs of ``channels`` channels as one conv over K*channels channels (groups = K*channels)."""
    conv = nn.Conv2d(num_branches * channels, num_branches * channels, kernel_size, padding=kernel_size // 2,
                     groups=num_branches * channels, bias=bias)
    trunc_normal_(conv.weight, std=0.02)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


class BranchMlp(nn.Module):
    """K MLPs Linear(d -> r*d) -> GELU -> Linear(r*d -> d) on (B', K, d)."""

    def __init__(self, dim: int, num_branches: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = BranchLinear(dim, hidden, num_branches)
        self.fc2 = BranchLinear(hidden, dim, num_branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _maps_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, K, d, H, W) -> (B*H*W, K, d): the layout BranchLinear / BranchLayerNorm work on."""
    b, k, d, h, w = x.shape
    return x.permute(0, 3, 4, 1, 2).reshape(b * h * w, k, d)


def _tokens_to_maps(t: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """(B*H*W, K, d) -> (B, K, d, H, W)."""
    k, d = t.shape[1:]
    return t.view(b, h, w, k, d).permute(0, 3, 4, 1, 2)


class BranchConvNeXtBlock(nn.Module):
    """K ConvNeXt blocks at width d: 7x7 depthwise conv (bias), LayerNorm (eps 1e-6), MLP 4x GELU, layer scale.

    Input and output (B, K, d, H, W). Parameters per branch equal timm's ``ConvNeXtBlock(d)``.
    ``drop_path``: stochastic depth of the residual, per sample and branch (the GA-ConvNeXt release
    gives its gram layers the full drop-path rate).
    """

    def __init__(self, dim: int, num_branches: int, kernel_size: int = 7, mlp_ratio: float = 4.0,
                 ls_init_value: float = 1e-6, norm_eps: float = 1e-6, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dim, self.num_branches = dim, num_branches
        self.drop_path = drop_path
        self.conv_dw = branch_depthwise_conv(dim, num_branches, kernel_size)
        self.norm = BranchLayerNorm(dim, num_branches, eps=norm_eps)
        self.mlp = BranchMlp(dim, num_branches, mlp_ratio)
        self.gamma = nn.Parameter(torch.full((num_branches, dim), ls_init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k, d, h, w = x.shape
        y = self.conv_dw(x.reshape(b, k * d, h, w)).view(b, k, d, h, w)
        y = self.mlp(self.norm(_maps_to_tokens(y))) * self.gamma
        return x + branch_drop_path(_tokens_to_maps(y, b, h, w), self.drop_path, self.training)


class BranchBottleneck(nn.Module):
    """K ResNet bottleneck blocks at width d (GA-ResNet's gram layer), input and output (B, K, d, H, W).

    Per branch: 1x1 conv d -> m, BN, ReLU; 3x3 conv m -> m, BN, ReLU; 1x1 conv m -> d, BN; plus
    the identity; ReLU. With m = d this is timm's ``Bottleneck(d, d // 4, base_width=256)``
    (a wide bottleneck). The K branches are grouped convs over K*d channels (groups = K) and BNs
    over K*m channels (BN is per channel, so one BN over K*m channels is K BNs). The last BN's
    scale starts at 0 (timm ResNet's ``zero_init_last``): each block starts as the identity.
    ``drop_path``: stochastic depth of the residual branch, per sample and branch (GA-ResNet50 follows
    the released GA models' rule: the full drop-path rate).
    """

    def __init__(self, dim: int, num_branches: int, mid_dim: int | None = None, drop_path: float = 0.0) -> None:
        super().__init__()
        k, m = num_branches, mid_dim or dim
        self.dim, self.num_branches = dim, num_branches
        self.drop_path = drop_path
        self.conv1 = nn.Conv2d(k * dim, k * m, 1, groups=k, bias=False)
        self.bn1 = nn.BatchNorm2d(k * m)
        self.conv2 = nn.Conv2d(k * m, k * m, 3, padding=1, groups=k, bias=False)
        self.bn2 = nn.BatchNorm2d(k * m)
        self.conv3 = nn.Conv2d(k * m, k * dim, 1, groups=k, bias=False)
        self.bn3 = nn.BatchNorm2d(k * dim)
        for conv in (self.conv1, self.conv2, self.conv3):  # timm ResNet's init
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k, d, h, w = x.shape
        x = x.reshape(b, k * d, h, w)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = branch_drop_path(self.bn3(self.conv3(y)).view(b, k, d, h, w), self.drop_path, self.training)
        return F.relu(x.view(b, k, d, h, w) + y)


def layer_scale_names(model: nn.Module) -> set[str]:
    """Names of the gram layers' (K, d) layer-scale parameters: exempt from weight decay like timm's 1-D ones."""
    return {f"{name}.gamma" for name, m in model.named_modules() if isinstance(m, BranchConvNeXtBlock)}


@register_notrace_module  # stripe checks on the map size, as CSWinBlock: an FX leaf
class BranchCSWinBlock(LePEParams, nn.Module):
    """K CSWin blocks at width d: LN, cross-shaped window attention with LePE, LN, MLP 4x.

    Input and output (B, K, d, H, W). The attention folds the K branches into the batch of
    one attention call; each branch has its own qkv/proj weights (batched matmuls) and its own
    LePE depthwise convs (one grouped conv over K*channels). ``stripe`` >= the map size gives
    global attention (CSWin's last stage). Parameters per branch equal ``CSWinBlock(d, ...)``.
    ``drop_path``: stochastic depth of both residuals, per sample and branch (the GA-CSWin release
    gives its gram layers the full drop-path rate).
    """

    def __init__(self, dim: int, num_branches: int, num_heads: int, stripe: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, global_attn: bool = False, drop_path: float = 0.0) -> None:
        super().__init__()
        k = num_branches
        self.drop_path = drop_path
        self.num_heads, self.stripe, self.global_attn = num_heads, stripe, global_attn
        n_dirs = check_cswin_dims(dim, num_heads, global_attn)
        self.norm1 = BranchLayerNorm(dim, k)
        self.qkv = BranchLinear(dim, 3 * dim, k, bias=qkv_bias)
        self.lepe = nn.ModuleList(branch_depthwise_conv(dim // n_dirs, k, 3) for _ in range(n_dirs))
        self.proj = BranchLinear(dim, dim, k)
        self.norm2 = BranchLayerNorm(dim, k)
        self.mlp = BranchMlp(dim, k, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k, d, h, w = x.shape
        t = _maps_to_tokens(x)  # (BHW, K, d)
        qkv = self.qkv(self.norm1(t)).view(b, h, w, k, 3 * d).permute(0, 3, 1, 2, 4)  # (B, K, H, W, 3d)
        weights, biases = self.lepe_params()
        att = cross_shaped_attention(qkv, self.num_heads, self.stripe, weights, biases, self.global_attn)
        t = t + self._drop(self.proj(att.permute(0, 2, 3, 1, 4).reshape(b * h * w, k, d)), b)
        t = t + self._drop(self.mlp(self.norm2(t)), b)
        return _tokens_to_maps(t, b, h, w)

    def _drop(self, y: torch.Tensor, b: int) -> torch.Tensor:
        """Drop path of a (B·H·W, K, d) residual, one draw per sample and branch."""
        if self.drop_path == 0.0 or not self.training:
            return y
        keep = 1.0 - self.drop_path
        v = y.view(b, -1, y.shape[1], y.shape[2])  # (B, H·W, K, d)
        mask = v.new_empty([b, 1, v.shape[2], 1]).bernoulli_(keep).div_(keep)
        return (v * mask).view_as(y)
