"""CNN backbones of Organ-DETR: a U-Net/FPN-style encoder with a top-down pathway, or a 3D ResNet-50/101.

Both are built from dynamic-network-architectures' encoders (``PlainConvEncoder``, ``ResidualEncoder`` with
``BottleneckD`` blocks); we add only the FPN top-down pathway. Output: the ``out_levels`` coarsest maps, projected
to ``hidden_dim`` channels, **coarsest first** (the paper's level 1 is the highest level), each
``[B, hidden_dim, n0 / s, n1 / s, n2 / s]`` for the stage strides ``s``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual import BottleneckD
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from torch import nn

RESNET_BLOCKS = {"resnet50": [1, 3, 4, 6, 3], "resnet101": [1, 3, 4, 23, 3]}
BACKBONES = ("fpn", *RESNET_BLOCKS)


def _encoder(kind: str, in_channels: int, widths: list[int], strides: list[int]) -> nn.Module:
    common = dict(conv_op=nn.Conv3d, kernel_sizes=3, strides=strides, conv_bias=True, norm_op=nn.InstanceNorm3d,
                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                  nonlin_kwargs={"inplace": True}, return_skips=True)
    if kind == "fpn":
        return PlainConvEncoder(in_channels, len(widths), widths, n_conv_per_stage=2, **common)
    if kind in RESNET_BLOCKS:
        # BottleneckD: features_per_stage counts channels after the 4x expansion, as in ResNet
        return ResidualEncoder(in_channels, len(widths), [4 * w for w in widths], block=BottleneckD,
                               n_blocks_per_stage=RESNET_BLOCKS[kind], bottleneck_channels=widths, **common)
    raise ValueError(f"unknown backbone {kind!r}; choose one of {', '.join(BACKBONES)}")


class FPNBackbone(nn.Module):
    """Encoder + FPN top-down pathway. ``forward(x [B, C, n0, n1, n2])`` -> list of ``out_levels`` maps
    ``[B, hidden_dim, ...]``, coarsest first."""

    def __init__(self, in_channels: int, widths: list[int], strides: list[int], hidden_dim: int, out_levels: int = 3,
                 kind: str = "fpn"):
        super().__init__()
        if not 1 <= out_levels <= len(widths):
            raise ValueError(f"out_levels {out_levels} must be in [1, {len(widths)}]")
        self.encoder = _encoder(kind, in_channels, list(widths), list(strides))
        channels = [4 * w for w in widths] if kind in RESNET_BLOCKS else list(widths)
        self.out_levels = out_levels
        self.lateral = nn.ModuleList(nn.Conv3d(c, hidden_dim, 1) for c in channels[-out_levels:])
        self.smooth = nn.ModuleList(nn.Conv3d(hidden_dim, hidden_dim, 3, padding=1) for _ in range(out_levels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = self.encoder(x)[-self.out_levels:]
        outs: list[torch.Tensor] = []
        top = None
        for i in reversed(range(self.out_levels)):  # coarsest first
            lat = self.lateral[i](skips[i])
            top = lat if top is None else lat + F.interpolate(top, size=lat.shape[2:], mode="nearest")
            outs.append(self.smooth[i](top))
        return outs
