"""MultiScale Attention (MSA) encoder of Organ-DETR (paper section 3, eq. 1-4), implemented as the paper describes.

Input: ``L_h`` feature maps ``[B, C, n0_l, n1_l, n2_l]``, **coarsest (highest) level first**; output: maps of the
same shapes. Each map is split into non-overlapping ``p x p x p`` voxel windows (zero-padded up to a multiple of
``p``). Per block (``depth`` blocks) and per level ``l``, in order from the highest level down:

1. windowed self-attention among the ``p^3`` voxel tokens of each window, then an FFN;
2. for every higher level ``m = 1 .. l-1`` in turn (eq. 4, recursive): cross-attention with queries from the
   current tokens ``X_{m-1}`` and keys/values from level ``m`` (eq. 3), then an FFN. The keys/values of a level-``l``
   window are the tokens of the level-``m`` window that covers the same place in the volume (same batch item), so
   each window sees a coarser, wider neighbourhood of the level above. The highest level has no cross-attention.

Levels are processed top-down, so level ``l`` attends to the *updated* tokens of the levels above it in the same
block. Pre-norm residual sublayers; attention without bias (paper); learned in-window position and level
embeddings added to queries and keys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def window_partition(x: torch.Tensor, p: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``[B, C, n0, n1, n2]`` -> (``[B, W0, W1, W2, p^3, C]`` windows, window grid ``(W0, W1, W2)``), zero-padding
    each axis up to a multiple of ``p``."""
    b, c, *n = x.shape
    pad = [(-s) % p for s in n]
    if any(pad):
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
    w = [(s + q) // p for s, q in zip(n, pad)]
    x = x.reshape(b, c, w[0], p, w[1], p, w[2], p).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, w[0], w[1], w[2], p ** 3, c), tuple(w)


def window_merge(windows: torch.Tensor, p: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B, W0, W1, W2, p^3, C]`` -> ``[B, C, *shape]`` (padding cut)."""
    b, w0, w1, w2, _, c = windows.shape
    x = windows.reshape(b, w0, w1, w2, p, p, p, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    x = x.reshape(b, c, w0 * p, w1 * p, w2 * p)
    return x[:, :, :shape[0], :shape[1], :shape[2]]


def covering_windows(windows: torch.Tensor, grid_fine: tuple[int, int, int], factor: tuple[int, int, int]
                     ) -> torch.Tensor:
    """For every window of a finer level, the window of a coarser level that covers the same place.

    ``windows [B, V0, V1, V2, T, C]`` of the coarse level; ``factor`` = fine / coarse resolution per axis. Returns
    ``[B, W0, W1, W2, T, C]`` on the fine window grid ``grid_fine``."""
    idx = [torch.clamp(torch.arange(g, device=windows.device) // f, max=v - 1)
           for g, f, v in zip(grid_fine, factor, windows.shape[1:4])]
    return windows[:, idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]]


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class WindowAttention(nn.Module):
    """Multi-head attention ``[W, T, C]`` queries against ``[W, S, C]`` keys/values (one window per row), pre-norm,
    residual. Used for both self- (``kv is None``) and cross-attention."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, bias=False, batch_first=True)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, kv: torch.Tensor | None = None,
                kv_pos: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm_q(x)
        if kv is None:
            k = v = q
            kv_pos = pos
        else:
            k = v = self.norm_kv(kv)
        out, _ = self.attn(q + pos, k + kv_pos, v, need_weights=False)
        return x + self.drop(out)


class MSALevelBlock(nn.Module):
    """One block for level ``l`` (0-based index from the top): self-attention + FFN, then ``l`` cross-attentions
    (to levels ``0 .. l-1``), each + FFN."""

    def __init__(self, level: int, dim: int, heads: int, dropout: float, mlp_ratio: int = 4):
        super().__init__()
        self.self_attn, self.self_ffn = WindowAttention(dim, heads, dropout), FFN(dim, mlp_ratio * dim, dropout)
        self.cross_attn = nn.ModuleList(WindowAttention(dim, heads, dropout) for _ in range(level))
        self.cross_ffn = nn.ModuleList(FFN(dim, mlp_ratio * dim, dropout) for _ in range(level))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, higher: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> torch.Tensor:
        """``x [W, T, C]`` windows of this level; ``higher``: per higher level (top first) its covering windows
        ``[W, T, C]`` and their position embedding."""
        x = self.self_ffn(self.self_attn(x, pos))
        for attn, ffn, (kv, kv_pos) in zip(self.cross_attn, self.cross_ffn, higher, strict=True):
            x = ffn(attn(x, pos, kv, kv_pos))
        return x


class MSAEncoder(nn.Module):
    """``forward(maps)``: list of ``[B, C, n0_l, n1_l, n2_l]`` (coarsest first) -> list of the same shapes."""

    def __init__(self, dim: int, num_levels: int, heads: int, patch_size: int = 2, depth: int = 2,
                 dropout: float = 0.3):
        super().__init__()
        self.p, self.num_levels = patch_size, num_levels
        self.pos = nn.Parameter(torch.zeros(patch_size ** 3, dim))
        self.level_embed = nn.Parameter(torch.zeros(num_levels, dim))
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.level_embed, std=0.02)
        self.blocks = nn.ModuleList(
            nn.ModuleList(MSALevelBlock(lvl, dim, heads, dropout) for lvl in range(num_levels)) for _ in range(depth))

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(maps) != self.num_levels:
            raise ValueError(f"MSA expects {self.num_levels} levels, got {len(maps)}")
        shapes = [m.shape[2:] for m in maps]
        parts = [window_partition(m, self.p) for m in maps]
        wins = [w for w, _ in parts]
        grids = [g for _, g in parts]
        b = maps[0].shape[0]
        block: nn.ModuleList
        for block in self.blocks:  # type: ignore[assignment]
            new: list[torch.Tensor] = []
            for lvl, layer in enumerate(block):
                pos = self.pos + self.level_embed[lvl]
                higher = []
                for m in range(lvl):
                    factor = tuple(max(1, round(fs / cs)) for fs, cs in zip(shapes[lvl], shapes[m], strict=True))
                    kv = covering_windows(new[m], grids[lvl], factor).reshape(-1, self.p ** 3, new[m].shape[-1])
                    higher.append((kv, self.pos + self.level_embed[m]))
                x = layer(wins[lvl].reshape(-1, self.p ** 3, wins[lvl].shape[-1]), pos, higher)
                new.append(x.reshape(b, *grids[lvl], self.p ** 3, -1))
            wins = new
        return [window_merge(w, self.p, s) for w, s in zip(wins, shapes, strict=True)]
