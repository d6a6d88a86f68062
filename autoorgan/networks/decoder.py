"""3D Deformable-DETR decoder in pure PyTorch (sampling via ``grid_sample``, see autoorgan.networks.deformable).

Queries: ``N`` learned content embeddings plus ``N`` learned position embeddings. Every query carries a reference
box ``[c0, c1, c2, s0, s1, s2]`` (normalized, array axis order, autoorgan.boxes convention) made from its position
embedding; with ``anchors`` (the plans' ``query_anchors``, one prior box per organ class, ``[M, 6]``) query ``i``'s
reference box is ``sigmoid(logit(anchor[i mod M]) + ref_head(pos_i))`` with a small initial ``ref_head``, so every
organ starts with ``N / M`` queries near where it usually lies; without, the reference box is
``sigmoid(ref_head(pos_i))`` from a wide random init (Deformable DETR). Per layer: self-attention among queries,
multi-scale deformable cross-attention (each head samples ``P`` points per level at ``centre + offset / P * size / 2``
around the reference box), FFN (post-norm as in Deformable DETR). With box refinement each layer's box head
predicts a correction of the reference box in inverse-sigmoid space, and the corrected (detached) box is the next
layer's reference.

``forward(values)`` (per level ``[B, C, ...]``) returns per layer ``hs [B, N, C]`` and ``boxes [B, N, 6]``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from autoorgan.networks.deformable import ms_deform_attn_sample


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


class MLP(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int, layers: int):
        super().__init__()
        dims = [dim_in] + [hidden] * (layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def _sampling_directions(heads: int) -> torch.Tensor:
    """``[heads, 3]`` unit directions spread over the sphere (initial sampling pattern of the heads)."""
    golden = math.pi * (3 - math.sqrt(5))
    i = torch.arange(heads, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / heads
    r = torch.sqrt(1 - z * z)
    return torch.stack([z, r * torch.cos(golden * i), r * torch.sin(golden * i)], -1).float()


class MSDeformAttn3D(nn.Module):
    """Multi-scale deformable attention: ``query [B, Q, C]``, ``ref_boxes [B, Q, 6]``, ``values`` per level
    ``[B, C, n0, n1, n2]`` -> ``[B, Q, C]``."""

    def __init__(self, dim: int, heads: int, levels: int, points: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden_dim {dim} must be divisible by num_heads {heads}")
        self.h, self.L, self.P = heads, levels, points
        self.offsets = nn.Linear(dim, heads * levels * points * 3)
        self.weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.offsets.weight)
        grid = _sampling_directions(heads)[:, None, None, :].repeat(1, levels, points, 1)
        grid = grid * torch.arange(1, points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)

    def forward(self, query: torch.Tensor, ref_boxes: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
        b, q, c = query.shape
        off = self.offsets(query).view(b, q, self.h, self.L, self.P, 3)
        w = self.weights(query).view(b, q, self.h, self.L * self.P).softmax(-1).view(b, q, self.h, self.L, self.P)
        centre = ref_boxes[:, :, None, None, None, :3]
        size = ref_boxes[:, :, None, None, None, 3:]
        loc = centre + off / self.P * size * 0.5
        vals = []
        for v in values:
            shape = v.shape[2:]
            v = self.value_proj(v.flatten(2).transpose(1, 2))  # [B, n, C]
            vals.append(v.transpose(1, 2).reshape(b, self.h, c // self.h, *shape))
        return self.out_proj(ms_deform_attn_sample(vals, loc, w))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, levels: int, points: int, dropout: float, ffn_dim: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = MSDeformAttn3D(dim, heads, levels, points)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, tgt, pos, ref_boxes, values):
        q = tgt + pos
        tgt = self.norm1(tgt + self.drop(self.self_attn(q, q, tgt, need_weights=False)[0]))
        tgt = self.norm2(tgt + self.drop(self.cross_attn(tgt + pos, ref_boxes, values)))
        return self.norm3(tgt + self.drop(self.ffn(tgt)))


class DeformableDecoder(nn.Module):
    """Stack of decoder layers with per-layer box heads (iterative box refinement)."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, layers: int, num_queries: int,
                 dropout: float = 0.1, ffn_dim: int | None = None, anchors: list | None = None):
        super().__init__()
        self.query_embed = nn.Embedding(num_queries, 2 * dim)
        self.ref_head = nn.Linear(dim, 6)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, levels, points, dropout, ffn_dim or 4 * dim)
                                    for _ in range(layers))
        self.box_heads = nn.ModuleList(MLP(dim, dim, 6, 3) for _ in range(layers))
        for head in self.box_heads:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        nn.init.zeros_(self.ref_head.bias)
        if anchors is None:
            self.anchor_logits = None
            nn.init.uniform_(self.ref_head.weight, -0.5, 0.5)
            with torch.no_grad():
                self.ref_head.bias[3:] = inverse_sigmoid(torch.tensor(0.2))
        else:
            prior = torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 6)              # [M, 6]
            index = torch.arange(num_queries) % prior.shape[0]
            self.register_buffer("anchor_logits", inverse_sigmoid(prior[index]))          # [N, 6]
            # pos ~ N(0, 1): ref_head(pos) has std ~0.1 (logit) per coordinate, so the queries of one organ spread
            # a little around its prior instead of all starting on the same box
            bound = 0.1 * math.sqrt(3 / dim)
            nn.init.uniform_(self.ref_head.weight, -bound, bound)

    def forward(self, values: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``values`` per level ``[B, C, ...]`` -> (per layer ``hs [B, N, C]``, per layer ``boxes [B, N, 6]``)."""
        b = values[0].shape[0]
        pos, tgt = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1).chunk(2, dim=-1)
        ref = self.ref_head(pos)                                                           # [B, N, 6] logits
        ref = (ref if self.anchor_logits is None else ref + self.anchor_logits).sigmoid()
        hs, boxes = [], []
        for layer, box_head in zip(self.layers, self.box_heads, strict=True):
            tgt = layer(tgt, pos, ref, values)
            box = (inverse_sigmoid(ref) + box_head(tgt)).sigmoid()
            hs.append(tgt)
            boxes.append(box)
            ref = box.detach()
        return hs, boxes
