"""The masked-sigmoid baseline (MultiTalent-style): nnU-Net's plain U-Net with one sigmoid output per class.

``forward(x [B, C_in, D, H, W], classes [K] or [B, K] or None) -> logits [B, K, D, H, W]``: the network always
computes every class (one 1x1x1 output channel each, the decoder is shared), ``classes`` only picks channels, so the
interface matches :class:`autoorgan.networks.ccq.CCQ`. ``deep=True`` (training with deep supervision, as nnU-Net)
returns the logits of every decoder stage, full resolution first: ``[[B, K, D, H, W], [B, K, D/2, H/2, W/2], ...]``
(the per-stage output layers exist either way, so checkpoints do not depend on it). Partial labels are handled by
the loss alone (:func:`autoorgan.losses.partial_sigmoid.partial_dice_bce`: an organ a case does not annotate gets no
gradient), which is what a practitioner would try first with nnU-Net's architecture.
"""
from __future__ import annotations

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from autoorgan.networks.ccq import _classes_per_image, encoder_kwargs


class SigmoidUNet(nn.Module):
    def __init__(self, input_channels: int, num_classes: int, arch_kwargs: dict):
        super().__init__()
        kw = encoder_kwargs(arch_kwargs)  # nnU-Net's arch_kwargs, layer classes through the torch.nn allow-list
        n_dec = list(arch_kwargs.get("n_conv_per_stage_decoder", [2] * (len(kw["features_per_stage"]) - 1)))
        self.unet = PlainConvUNet(input_channels, num_classes=num_classes, n_conv_per_stage_decoder=n_dec,
                                  deep_supervision=False, **kw)
        self.num_classes = num_classes

    @classmethod
    def from_plans(cls, configuration: dict, input_channels: int, num_classes: int) -> SigmoidUNet:
        return cls(input_channels, num_classes, configuration["architecture"]["arch_kwargs"])

    def forward(self, x: torch.Tensor, classes: torch.Tensor | None = None, deep: bool = False
                ) -> torch.Tensor | list[torch.Tensor]:
        self.unet.decoder.deep_supervision = deep
        try:
            out = self.unet(x)                                   # [B, M, D, H, W] or a list of them (deep)
        finally:
            self.unet.decoder.deep_supervision = False
        outs = out if deep else [out]
        if classes is not None:
            idx = _classes_per_image(classes, x.shape[0], self.num_classes, x.device)   # [B, K]
            outs = [torch.gather(o, 1, idx.view(*idx.shape, 1, 1, 1).expand(-1, -1, *o.shape[2:])) for o in outs]
        return outs if deep else outs[0]
