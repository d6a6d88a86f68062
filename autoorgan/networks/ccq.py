"""CCQ: Cross-Class Query network (paper: ../shared/papers/002_37e1da1a76202660.txt), and the shared U-Net parts.

Per image and class ``k`` (``[B, C_in, D, H, W]`` + class ids ``[K]`` -> logits ``[B, K, D, H, W]``, one binary
map per class):

* image encoder: the plans' nnU-Net encoder (dynamic-network-architectures ``PlainConvEncoder``) gives skips and
  the bottleneck ``F``; tokens ``F^T [B, N, C]`` (``N`` bottleneck voxels), ``F_sp = F^T + P`` with a learned
  positional embedding ``P`` (made for the planned patch's bottleneck grid, trilinearly resized for other inputs),
  ``F_enc = TSA(F_sp)`` (eq. 1);
* cross-class query generation: ``Q_enc = TSA([TEB_k; Q_sem])`` with ``N_q`` learned semantic concepts ``Q_sem``
  and a learned task/class token ``TEB_k``; the token's output is dropped, leaving ``[N_q, C]`` (eq. 2);
* single-class focused querying: ``Q_dec = TCA(Q_enc, [Q_enc; F_enc + P])`` (eq. 3);
* gated weighting: ``Q_w = sigmoid(FC([Q_dec; Q_enc; TEB_k])) * Q_dec`` (eq. 4), then a linear map from the ``N_q``
  query axis to the ``N`` bottleneck positions reshaped to ``Q_d [C, d, h, w]`` (resized like ``P``);
* CNN decoder with attentive skips ``S_a = sigmoid(Conv1x1([U; S])) * S + S`` added to the upsampled map ``U``
  (eq. 5), then the stage's convolutions; with the plans' ``ccq.bottleneck_skip`` the encoder's last map joins
  ``Q_d`` the same way (the paper's decoder input is ``Q_d`` alone);
* the class's logit map from DoDNet's **dynamic head** (:class:`DynamicHead`: three 1x1x1 convolutions whose
  weights a controller makes from the pooled bottleneck and the class's one-hot code). The paper builds CCQ on
  DoDNet as its baseline ("we choose [DoDNet] as our baseline" and add the modules above; the authors' code,
  Yang-007/CCQ ``network/main.py``, ends in the same task-conditioned head). Without it the class reaches the
  output only through the bottleneck, and the class conditioning learned far more slowly (docs/ccq.md); the plans'
  ``ccq.dynamic_head: false`` gives that static 1x1x1 head back (ablation).

Classes are batched: the encoder runs once, the class-conditioned part and the decoder run on ``B * K`` items. The
classes may be the same for every image (``[K]``, inference: all of them) or chosen per image (``[B, K]``, training
on a few annotated classes per patch, since every class costs one decoder pass).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from torch import nn


def torch_module_class(name: object, key: str) -> type[nn.Module] | None:
    """A ``torch.nn`` layer class named in the plans (``"torch.nn.modules.conv.Conv3d"``, ``"torch.nn.LeakyReLU"``).
    Plans are shared files: anything that is not a ``torch.nn`` module class (``os.system``, say) is refused, so
    reading plans never calls code they name."""
    if name is None:
        return None
    from pydoc import locate
    found = locate(name) if isinstance(name, str) and name.startswith("torch.nn.") else None
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        from autoorgan.utils.errors import UserError
        raise UserError(f"the plans name {name!r} as {key}; only torch.nn layer classes are allowed there (e.g. "
                        "torch.nn.modules.conv.Conv3d)")
    return found


def encoder_kwargs(arch_kwargs: dict) -> dict:
    """nnU-Net ``arch_kwargs`` (strings for classes) -> PlainConvEncoder keyword arguments."""
    kw = {k: arch_kwargs[k] for k in ("n_stages", "features_per_stage", "kernel_sizes", "strides",
                                      "n_conv_per_stage", "conv_bias", "norm_op_kwargs", "dropout_op_kwargs",
                                      "nonlin_kwargs") if k in arch_kwargs}
    for key in ("conv_op", "norm_op", "dropout_op", "nonlin"):
        kw[key] = torch_module_class(arch_kwargs.get(key), key)
    return kw


class UNetParts(nn.Module):
    """Encoder + (attentive or plain) decoder stages built from nnU-Net ``arch_kwargs``; shared by CCQ and DoDNet."""

    def __init__(self, input_channels: int, arch_kwargs: dict, attentive_skips: bool):
        super().__init__()
        kw = encoder_kwargs(arch_kwargs)
        self.encoder = PlainConvEncoder(input_channels, return_skips=True, **kw)
        feats = list(kw["features_per_stage"])
        strides = [np.broadcast_to(s, (3,)).tolist() for s in kw["strides"]]
        ks = kw["kernel_sizes"]
        common = dict(conv_bias=kw.get("conv_bias", True), norm_op=kw["norm_op"], norm_op_kwargs=kw["norm_op_kwargs"],
                      dropout_op=None, dropout_op_kwargs=None, nonlin=kw["nonlin"], nonlin_kwargs=kw["nonlin_kwargs"])
        n_dec = list(arch_kwargs.get("n_conv_per_stage_decoder", [2] * (len(feats) - 1)))
        self.up, self.gates, self.blocks = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for s in range(len(feats) - 1, 0, -1):  # decoder stage from encoder stage s to s-1
            self.up.append(nn.ConvTranspose3d(feats[s], feats[s - 1], strides[s], strides[s], bias=True))
            self.gates.append(nn.Conv3d(2 * feats[s - 1], feats[s - 1], 1) if attentive_skips else nn.Identity())
            self.blocks.append(StackedConvBlocks(n_dec[s - 1], nn.Conv3d, feats[s - 1], feats[s - 1], ks[s - 1], 1,
                                                 **common))
        self.attentive = attentive_skips
        self.features = feats
        self.total_stride = np.prod(np.asarray(strides), axis=0).astype(int).tolist()

    def decode(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Bottleneck map ``x [B', C_last, ...]`` and encoder skips (each ``[B', C_s, ...]``, finest first) ->
        full-resolution features ``[B', C_0, D, H, W]``."""
        for i, (up, gate, block) in enumerate(zip(self.up, self.gates, self.blocks, strict=True)):
            u = up(x)
            s = skips[-(i + 2)]
            if self.attentive:  # eq. 5
                s = torch.sigmoid(gate(torch.cat([u, s], 1))) * s + s
            x = block(u + s)
        return x


def _resize_grid(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[B, C, d, h, w]`` to another grid size (trilinear); unchanged when equal."""
    if tuple(t.shape[2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode="trilinear", align_corners=False)


class DynamicHead(nn.Module):
    """DoDNet's task-conditioned head: per (image, class) a controller turns ``[pooled image features; one-hot
    class]`` into the weights and biases of three 1x1x1 convolutions (``HEAD`` channels, ReLU between), which are
    applied to that item's ``HEAD[0]``-channel feature map.

    ``forward(feat [B*K, HEAD[0], ...], pooled [B, C_pool], classes [B, K]) -> logits [B*K, 1, ...]``.
    """

    HEAD = (8, 8, 1)

    def __init__(self, pooled_channels: int, num_classes: int):
        super().__init__()
        sizes, cin = [], self.HEAD[0]
        for cout in self.HEAD:
            sizes += [cin * cout, cout]
            cin = cout
        self.param_sizes = sizes
        self.controller = nn.Linear(pooled_channels + num_classes, sum(sizes))
        self.num_classes = num_classes

    def forward(self, feat: torch.Tensor, pooled: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        b, k = classes.shape
        onehot = F.one_hot(classes, self.num_classes).to(pooled.dtype)             # [B, K, M]
        code = torch.cat([pooled[:, None].expand(-1, k, -1), onehot], -1)         # [B, K, C_pool + M]
        chunks = torch.split(self.controller(code.reshape(b * k, -1)), self.param_sizes, 1)
        h, cin = feat, self.HEAD[0]
        for i, cout in enumerate(self.HEAD):
            w = chunks[2 * i].reshape(b * k, cout, cin)                            # [B*K, out, in]
            bias = chunks[2 * i + 1].reshape(b * k, cout, 1, 1, 1)
            h = torch.einsum("noc,nc...->no...", w, h) + bias                       # [B*K, out, ...]
            if i < len(self.HEAD) - 1:
                h = F.relu(h)
            cin = cout
        return h


class CCQ(nn.Module):
    """Cross-Class Query network; ``forward(x [B, C_in, D, H, W], classes [K] long) -> logits [B, K, D, H, W]``."""

    def __init__(self, input_channels: int, num_classes: int, arch_kwargs: dict, patch_size: Sequence[int],
                 num_queries: int = 32, hidden_dim: int | None = None, num_heads: int = 8, depth: int = 1,
                 dynamic_head: bool = True, bottleneck_skip: bool = False):
        super().__init__()
        self.unet = UNetParts(input_channels, arch_kwargs, attentive_skips=True)
        c_last = self.unet.features[-1]
        self.grid = [int(p) // int(s) for p, s in zip(patch_size, self.unet.total_stride, strict=True)]
        n_tokens = int(np.prod(self.grid))
        c = int(hidden_dim or c_last)
        self.proj_in = nn.Conv3d(c_last, c, 1)
        self.pos = nn.Parameter(torch.randn(1, c, *self.grid) * 0.02)                 # P
        layer = nn.TransformerEncoderLayer(c, num_heads, 4 * c, dropout=0.0, batch_first=True, norm_first=True)
        # pre-norm layers leave their residual stream unnormalised: a final LayerNorm keeps each transformer's output
        # at unit scale. Without it the class-independent part grew to ~1e3 in OpenKBP training and drowned the class
        # token (every class map came out the same).
        self.image_tsa = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(c),
                                               enable_nested_tensor=False)                       # eq. 1
        self.concepts = nn.Parameter(torch.randn(num_queries, c) * 0.02)               # Q_sem
        self.task_tokens = nn.Embedding(num_classes, c)                                # TEB_k
        qlayer = nn.TransformerEncoderLayer(c, num_heads, 4 * c, dropout=0.0, batch_first=True, norm_first=True)
        self.query_tsa = nn.TransformerEncoder(qlayer, depth, norm=nn.LayerNorm(c),
                                               enable_nested_tensor=False)                       # eq. 2
        self.tca = nn.MultiheadAttention(c, num_heads, batch_first=True)                # eq. 3
        self.tca_norm_q, self.tca_norm_kv, self.tca_norm_out = nn.LayerNorm(c), nn.LayerNorm(c), nn.LayerNorm(c)
        self.gate = nn.Linear(3 * c, c)                                                 # eq. 4
        self.to_grid = nn.Linear(num_queries, n_tokens)                                 # N_q -> N positions
        self.proj_out = nn.Conv3d(c, c_last, 1)
        if dynamic_head:
            self.pre_head = nn.Conv3d(self.unet.features[0], DynamicHead.HEAD[0], 1)
            self.head = DynamicHead(c_last, num_classes)
        else:  # ablation: one static 1x1x1 head for every class
            self.head = nn.Conv3d(self.unet.features[0], 1, 1)
        self.dynamic_head = dynamic_head
        # eq. 5 also at the bottleneck: the encoder's last map joins Q_d through an attentive skip, as every other
        # encoder stage joins the decoder. Without it the decoder's deepest input is Q_d alone, whose spatial layout
        # (the learned N_q -> N map) is the same for every image (docs/ccq.md)
        self.bottleneck_gate = nn.Conv3d(2 * c_last, c_last, 1) if bottleneck_skip else None
        self.num_classes, self.num_queries = num_classes, num_queries

    @classmethod
    def from_plans(cls, configuration: dict, input_channels: int, num_classes: int) -> CCQ:
        ccq = configuration.get("ccq", {})
        return cls(input_channels, num_classes, configuration["architecture"]["arch_kwargs"],
                   configuration["patch_size"], num_queries=int(ccq.get("num_class_queries", 32)),
                   hidden_dim=ccq.get("hidden_dim"), num_heads=int(ccq.get("num_heads", 8)),
                   depth=int(ccq.get("transformer_depth", 1)), dynamic_head=bool(ccq.get("dynamic_head", True)),
                   bottleneck_skip=bool(ccq.get("bottleneck_skip", False)))

    def forward(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, C_in, D, H, W]``; ``classes`` (indices into the dataset's labels) ``[K]`` for every image, or
        ``[B, K]`` per image (training on a few classes per patch), default all -> logits ``[B, K, D, H, W]``."""
        classes = _classes_per_image(classes, x.shape[0], self.num_classes, x.device)
        skips = self.unet.encoder(x)
        feat = self.proj_in(skips[-1])                                   # [B, c, d, h, w]
        b, c, *grid = feat.shape
        pos = _resize_grid(self.pos, grid).flatten(2).transpose(1, 2)    # [1, N, c]
        tokens = feat.flatten(2).transpose(1, 2)                         # F^T [B, N, c]
        f_enc = self.image_tsa(tokens + pos)                             # eq. 1
        k = classes.shape[1]
        teb = self.task_tokens(classes).reshape(b * k, 1, c)             # [B*K, 1, c]
        q_in = torch.cat([teb, self.concepts[None].expand(b * k, -1, -1)], 1)  # [B*K, 1 + N_q, c]
        q = self.query_tsa(q_in)[:, 1:]                                  # eq. 2 -> Q_enc [B*K, N_q, c]
        # per (image, class): queries attend to [Q_enc; F_enc + P]
        kv_img = (f_enc + pos)[:, None].expand(-1, k, -1, -1).reshape(b * k, -1, c)
        kv = self.tca_norm_kv(torch.cat([q, kv_img], 1))
        q_dec = self.tca_norm_out(q + self.tca(self.tca_norm_q(q), kv, kv, need_weights=False)[0])  # eq. 3
        teb_bk = teb.expand(-1, self.num_queries, -1)
        q_w = torch.sigmoid(self.gate(torch.cat([q_dec, q, teb_bk], -1))) * q_dec  # eq. 4
        q_d = self.to_grid(q_w.transpose(1, 2)).reshape(b * k, c, *self.grid)
        q_d = self.proj_out(_resize_grid(q_d, grid))                     # [B*K, C_last, d, h, w]
        skips_bk = [s[:, None].expand(-1, k, *s.shape[1:]).reshape(b * k, *s.shape[1:]) for s in skips]
        if self.bottleneck_gate is not None:                             # eq. 5 with U = Q_d, S = F
            s = skips_bk[-1]
            q_d = q_d + torch.sigmoid(self.bottleneck_gate(torch.cat([q_d, s], 1))) * s + s
        dec = self.unet.decode(q_d, skips_bk)                            # [B*K, C_0, D, H, W]
        if self.dynamic_head:
            out = self.head(self.pre_head(dec), skips[-1].mean((2, 3, 4)), classes)   # [B*K, 1, D, H, W]
        else:
            out = self.head(dec)
        return out.reshape(b, k, *out.shape[2:])


def _classes_per_image(classes: torch.Tensor | None, b: int, num_classes: int, device) -> torch.Tensor:
    """``None`` (all), ``[K]`` or ``[B, K]`` class indices -> ``[B, K]`` long on ``device``."""
    if classes is None:
        classes = torch.arange(num_classes, device=device)
    classes = torch.as_tensor(classes, device=device).long()
    if classes.ndim == 1:
        classes = classes[None].expand(b, -1)
    if classes.ndim != 2 or classes.shape[0] != b:
        raise ValueError(f"classes must be [K] or [B, K] with B = {b}, got {tuple(classes.shape)}")
    return classes


class DoDNet(nn.Module):
    """DoDNet-style baseline: the same encoder and a plain U-Net decoder shared by all classes, then the
    :class:`DynamicHead` conditioned on the pooled bottleneck features and the class's one-hot task code.
    ``forward`` as :class:`CCQ`."""

    def __init__(self, input_channels: int, num_classes: int, arch_kwargs: dict):
        super().__init__()
        self.unet = UNetParts(input_channels, arch_kwargs, attentive_skips=False)
        c0, c_last = self.unet.features[0], self.unet.features[-1]
        self.pre_head = nn.Conv3d(c0, DynamicHead.HEAD[0], 1)
        self.head = DynamicHead(c_last, num_classes)
        self.num_classes = num_classes

    @classmethod
    def from_plans(cls, configuration: dict, input_channels: int, num_classes: int) -> DoDNet:
        return cls(input_channels, num_classes, configuration["architecture"]["arch_kwargs"])

    def forward(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        classes = _classes_per_image(classes, x.shape[0], self.num_classes, x.device)   # [B, K]
        skips = self.unet.encoder(x)
        feat = self.pre_head(self.unet.decode(skips[-1], skips))         # [B, 8, D, H, W]
        b, k = classes.shape
        feat = feat[:, None].expand(-1, k, *feat.shape[1:]).reshape(b * k, *feat.shape[1:])
        out = self.head(feat, skips[-1].mean((2, 3, 4)), classes)        # [B*K, 1, D, H, W]
        return out.reshape(b, k, *out.shape[2:])
