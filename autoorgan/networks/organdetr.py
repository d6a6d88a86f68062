"""Organ-DETR (backbone -> MSA encoder -> segmentation heads + deformable decoder -> class/box heads), built from the
``architecture.arch_kwargs`` of the ``organdetr`` plans (``query_anchors``: ``[M, 6]`` prior boxes of the organs in
the input, normalized; where the queries' reference boxes start, see :mod:`autoorgan.networks.decoder`).

``forward(x [B, C_in, n0, n1, n2])`` returns a dict:

* ``logits [B, N, M + 1]``: class scores of the last decoder layer, index ``M`` = no-object;
* ``boxes [B, N, 6]``: normalized ``[c0, c1, c2, s0, s1, s2]`` boxes (autoorgan.boxes convention, relative to the
  network input shape);
* ``iou [B, N]`` (with ``iou_head``): logits of each query's predicted IoU with the organ it is matched to (last
  layer); inference ranks by class probability x sigmoid(iou);
* ``aux``: list of ``{"logits", "boxes"}`` of the earlier decoder layers (auxiliary losses);
* ``seg``: per MSA level (coarsest first) segmentation logits ``[B, M + 1, n0_l, n1_l, n2_l]`` (channel 0 =
  background, channel ``k`` = organ class ``k - 1``); used only by the training loss.
"""
from __future__ import annotations

import torch
from torch import nn

from autoorgan.networks.backbone import FPNBackbone
from autoorgan.networks.decoder import DeformableDecoder
from autoorgan.networks.msa import MSAEncoder


class OrganDETR(nn.Module):
    def __init__(self, input_channels: int, num_classes: int, num_queries: int, backbone: str = "fpn",
                 backbone_widths: tuple[int, ...] = (16, 32, 64, 128, 256),
                 backbone_strides: tuple[int, ...] = (1, 2, 2, 2, 2), msa_levels: int = 3, msa_patch_size: int = 2,
                 msa_depth: int = 2, msa_dropout: float = 0.3, hidden_dim: int = 64, num_heads: int = 16,
                 decoder_layers: int = 3, decoder_points: int = 4, decoder_dropout: float = 0.1,
                 query_anchors: list | None = None, iou_head: bool = False):
        super().__init__()
        self.num_classes, self.num_queries = num_classes, num_queries
        self.backbone = FPNBackbone(input_channels, list(backbone_widths), list(backbone_strides), hidden_dim,
                                    msa_levels, backbone)
        self.encoder = MSAEncoder(hidden_dim, msa_levels, num_heads, msa_patch_size, msa_depth, msa_dropout)
        self.seg_heads = nn.ModuleList(nn.Conv3d(hidden_dim, num_classes + 1, 1) for _ in range(msa_levels))
        self.decoder = DeformableDecoder(hidden_dim, num_heads, msa_levels, decoder_points, decoder_layers,
                                         num_queries, decoder_dropout, anchors=query_anchors)
        self.class_heads = nn.ModuleList(nn.Linear(hidden_dim, num_classes + 1) for _ in range(decoder_layers))
        self.iou_head = nn.Linear(hidden_dim, 1) if iou_head else None

    @classmethod
    def from_plans(cls, configuration: dict, input_channels: int, num_classes: int) -> OrganDETR:
        kw = dict(configuration["architecture"]["arch_kwargs"])
        if int(kw.get("num_classes", num_classes)) != num_classes:
            raise ValueError(f"the plans' organdetr network has {kw['num_classes']} organ classes but the dataset "
                             f"{num_classes}")
        kw["num_classes"] = num_classes
        return cls(input_channels, **kw)

    def forward(self, x: torch.Tensor) -> dict:
        maps = self.encoder(self.backbone(x))
        seg = [head(m) for head, m in zip(self.seg_heads, maps, strict=True)]
        hs, boxes = self.decoder(maps)
        outs = [{"logits": head(h), "boxes": bx} for head, h, bx in zip(self.class_heads, hs, boxes, strict=True)]
        if self.iou_head is not None:
            outs[-1]["iou"] = self.iou_head(hs[-1]).squeeze(-1)                     # [B, N] logits
        return {**outs[-1], "aux": outs[:-1], "seg": seg}
