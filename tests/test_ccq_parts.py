"""CCQ / DoDNet parts: partial-label loss, networks at the planned and another patch size, class combination."""
from __future__ import annotations

import numpy as np
import pytest
import torch

ARCH = {"n_stages": 4, "features_per_stage": [8, 16, 32, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
        "n_conv_per_stage": [1, 1, 1, 1], "n_conv_per_stage_decoder": [1, 1, 1], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}}
PATCH = (16, 24, 32)


def test_loss_ignores_unannotated_classes():
    from autoorgan.losses.partial_sigmoid import partial_dice_bce
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    targets = (torch.rand(2, 3, 4, 5, 6) > 0.7).float()
    annotated = torch.tensor([[True, False, True], [False, True, True]])
    loss, _ = partial_dice_bce(logits, targets, annotated)
    loss.backward()
    g = logits.grad.abs().sum((2, 3, 4))
    assert (g[~annotated] == 0).all() and (g[annotated] > 0).all()
    # changing an unannotated class's prediction or target changes nothing
    other = logits.detach().clone()
    other[0, 1] = 50.0
    t2 = targets.clone()
    t2[1, 0] = 1 - t2[1, 0]
    assert partial_dice_bce(other, t2, annotated)[0].item() == pytest.approx(loss.item(), abs=1e-6)
    # nothing annotated: zero loss that still backpropagates
    z, _ = partial_dice_bce(logits, targets, torch.zeros(2, 3, dtype=torch.bool))
    assert z.item() == 0.0 and z.requires_grad


def test_perfect_prediction_has_small_loss():
    from autoorgan.losses.partial_sigmoid import partial_dice_bce
    targets = torch.zeros(1, 2, 6, 6, 6)
    targets[0, 0, 1:4, 1:4, 1:4] = 1
    targets[0, 1, 4:6, 4:6, 4:6] = 1
    good = (targets * 2 - 1) * 20
    bad = -good
    ann = torch.ones(1, 2, dtype=torch.bool)
    assert partial_dice_bce(good, targets, ann)[0] < 1e-3 < partial_dice_bce(bad, targets, ann)[0]


def _net(name: str, classes: int):
    from autoorgan.networks.ccq import CCQ, DoDNet
    from autoorgan.networks.unet import SigmoidUNet
    if name.startswith("ccq"):
        return CCQ(1, classes, ARCH, PATCH, num_queries=6, hidden_dim=16, num_heads=2,
                   bottleneck_skip=name == "ccq_bottleneck_skip")
    return DoDNet(1, classes, ARCH) if name == "dodnet" else SigmoidUNet(1, classes, ARCH)


@pytest.mark.parametrize("name", ["ccq", "ccq_bottleneck_skip", "dodnet", "masked_sigmoid"])
@pytest.mark.parametrize("shape", [PATCH, (16, 32, 16)])
def test_networks_run_at_planned_and_other_sizes(name, shape):
    torch.manual_seed(0)
    net = _net(name, 5)
    x = torch.randn(2, 1, *shape)
    out = net(x, torch.tensor([0, 3]))
    assert out.shape == (2, 2, *shape)
    full = net(x)
    assert full.shape == (2, 5, *shape)
    assert torch.allclose(full[:, [0, 3]], out, atol=1e-5)  # a class's map does not depend on the others asked
    assert not torch.allclose(full[:, 0], full[:, 1])        # classes are conditioned differently
    full.sum().backward()
    last_head = f"seg_layers.{len(ARCH['features_per_stage']) - 2}."   # the U-Net's deep-supervision heads are unused
    assert all(p.grad is not None for n, p in net.named_parameters()
               if "task_tokens" not in n and ("seg_layers" not in n or last_head in n))


@pytest.mark.parametrize("bottleneck_skip", [False, True])
def test_ccq_bottleneck_skip_brings_the_image_layout_into_the_decoder(bottleneck_skip):
    """The paper's decoder input Q_d has one spatial layout for every image (the learned N_q -> N map); with
    ``bottleneck_skip`` the encoder's last map joins it (eq. 5), so the deepest decoder input follows the image.
    With the query-to-grid map zeroed, Q_d is constant over space: only the skip can make it vary."""
    torch.manual_seed(0)
    net = _net("ccq_bottleneck_skip" if bottleneck_skip else "ccq", 3)
    with torch.no_grad():
        net.to_grid.weight.zero_()
        net.to_grid.bias.zero_()
    seen = []
    decode = net.unet.decode
    net.unet.decode = lambda x, skips: seen.append(x) or decode(x, skips)
    net(torch.randn(1, 1, *PATCH), torch.tensor([1]))
    spatial_std = float(seen[0].detach().flatten(2).std(-1).max())
    assert (spatial_std > 1e-3) if bottleneck_skip else (spatial_std < 1e-6)


def test_ccq_class_token_steers_queries_when_residual_stream_grows():
    """Regression: on OpenKBP the transformers' (pre-norm) residual streams grew to ~1e3 and the class token's share
    of the gated queries (eq. 4) fell to ~0, so every class map came out the same. Grow them by hand: the gated
    queries must still differ by class (relative spread ~0.13 with output norms, ~0.0005 without)."""
    from autoorgan.networks.ccq import CCQ
    torch.manual_seed(0)
    net = CCQ(1, 5, ARCH, PATCH, num_queries=6, hidden_dim=16, num_heads=2).eval()
    seen = {}
    net.to_grid.register_forward_hook(lambda m, inp, out: seen.__setitem__("q_w", inp[0].detach()))  # [K, c, N_q]
    with torch.no_grad():
        for enc in (net.image_tsa, net.query_tsa):
            for layer in enc.layers:
                layer.linear2.weight.mul_(1000)
                layer.linear2.bias.add_(torch.randn_like(layer.linear2.bias) * 1000)
        net.concepts.mul_(1000)
        net(torch.randn(1, 1, *PATCH))
    q_w = seen["q_w"]
    assert float(q_w.std(0).mean() / q_w.std()) > 0.05


def test_ccq_attentive_skip_is_eq5():
    """S_a = sigmoid(Conv([U; S])) * S + S: with the gate's weights zeroed, S_a = 1.5 S."""
    from autoorgan.networks.ccq import UNetParts
    parts = UNetParts(1, ARCH, attentive_skips=True)
    with torch.no_grad():
        for g in parts.gates:
            g.weight.zero_()
            g.bias.zero_()
    skips = parts.encoder(torch.randn(1, 1, *PATCH))
    x = skips[-1]
    for i, (up, block) in enumerate(zip(parts.up, parts.blocks)):
        u = up(x)
        expected = u + 1.5 * skips[-(i + 2)]   # input of the last decoder block, computed by hand
        x = block(expected)
    seen = {}
    parts.blocks[-1].register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    parts.decode(skips[-1], skips)
    assert torch.allclose(seen["x"], expected, atol=1e-5)


def test_combine_classes_into_one_label_map():
    from autoorgan.inference.segment import combine_classes
    probs = torch.zeros(3, 2, 2, 1)
    probs[0, 0, 0] = 0.9
    probs[1, 0, 0] = 0.7      # lower than class 0 -> label of class 0
    probs[1, 0, 1] = 0.6
    probs[2, 1, 0] = 0.4      # below the threshold -> background
    probs[2, 1, 1] = 0.8
    out = combine_classes(probs, [1, 4, 9])
    assert out[..., 0].tolist() == [[1, 4], [0, 9]]
    assert combine_classes(probs, [1, 4, 9], threshold=0.75)[..., 0].tolist() == [[1, 0], [0, 9]]
    assert out.dtype == np.uint8


def test_label_maps_come_from_resampled_probabilities():
    """The predictor's label map on the scan's grid is the combination of the probabilities resampled there (nnU-Net's
    export), computed one class at a time; resampling the coarse label map instead gives other boundaries."""
    from functools import partial

    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    from autoorgan.inference.segment import combine_classes, combine_resampled
    g = torch.Generator().manual_seed(0)
    coarse = torch.nn.functional.avg_pool3d(torch.rand(3, 8, 9, 6, generator=g)[None], 3, 1, 1)[0]  # smooth maps
    probs = (coarse - coarse.amin()) / (coarse.amax() - coarse.amin())
    shape, coarse_sp, fine_sp = [19, 20, 13], [2.0, 2.0, 2.0], [0.85, 0.9, 0.95]
    resample = partial(resample_data_or_seg_to_shape, new_shape=shape, current_spacing=coarse_sp,
                       new_spacing=fine_sp, is_seg=False, order=1, order_z=0, force_separate_z=None)
    got = combine_resampled(probs, [2, 5, 7], 0.5, resample)
    want = combine_classes(resample(probs.numpy()), [2, 5, 7], 0.5)
    assert got.shape == tuple(shape) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got)) == {0, 2, 5, 7}
    labels = combine_classes(probs, [2, 5, 7], 0.5)[None]
    from_labels = resample_data_or_seg_to_shape(labels, shape, coarse_sp, fine_sp, is_seg=True, order=1, order_z=0,
                                                force_separate_z=None)[0]
    assert (from_labels != got).mean() > 0.01    # the two routes differ, so the check above can tell them apart


@pytest.mark.parametrize("name", ["ccq", "dodnet", "masked_sigmoid"])
def test_per_image_classes_match_shared_classes(name):
    """Training asks each image for its own classes ([B, K]); every (image, class) map must equal the one the
    network gives when that image is asked for that class alone."""
    torch.manual_seed(0)
    net = _net(name, 4).eval()
    x = torch.randn(2, 1, *PATCH)
    classes = torch.tensor([[3, 0], [1, 1]])
    with torch.no_grad():
        out = net(x, classes)
        assert out.shape == (2, 2, *PATCH)
        for b in range(2):
            for j in range(2):
                alone = net(x[b:b + 1], classes[b, j:j + 1])[0, 0]
                assert torch.allclose(out[b, j], alone, atol=1e-4)
    with pytest.raises(ValueError):
        net(x, torch.zeros(3, 2, dtype=torch.long))


def test_choose_classes_trains_annotated_classes_only():
    from autoorgan.training.patches import binary_targets, choose_classes
    values = [1, 2, 3, 4, 5]
    rng = np.random.default_rng(0)
    for _ in range(200):
        idx, ann = choose_classes(values, {2, 4, 5}, present={0, 4, 5}, k=2, rng=rng, prefer=None)
        chosen = [values[i] for i in idx]
        assert all(ann) and len(set(chosen)) == 2 and set(chosen) <= {2, 4, 5}
        assert chosen[0] in {4, 5}            # one class present in the patch comes first
    # the class the patch was centred on is the present one chosen
    assert all(values[choose_classes(values, {2, 4, 5}, {4, 5}, 2, rng, prefer=5)[0][0]] == 5 for _ in range(20))
    # nothing present: annotated classes still trained (as "absent")
    idx, ann = choose_classes(values, {1, 3}, set(), 2, rng)
    assert sorted(values[i] for i in idx) == [1, 3] and all(ann)
    # fewer annotated classes than k: the rest is filled with unannotated classes the loss ignores
    idx, ann = choose_classes(values, {3}, {3}, 3, rng)
    assert [values[i] for i in idx][0] == 3 and ann == [True, False, False] and len(set(idx)) == 3
    # per-patch label values -> per-patch binary targets
    seg = torch.tensor([[[[1, 2], [3, 0]]], [[[2, 2], [0, 3]]]])          # [2, 1, 2, 2]
    t = binary_targets(seg, torch.tensor([[3, 1], [2, 5]]))
    assert t.shape == (2, 2, 2, 2)
    assert t[0, 0].tolist() == [[0, 0], [1, 0]] and t[0, 1].tolist() == [[1, 0], [0, 0]]
    assert t[1, 0].tolist() == [[1, 1], [0, 0]] and t[1, 1].sum() == 0


def test_masked_sigmoid_unannotated_class_gets_no_gradient():
    """The masked-sigmoid U-Net with the partial loss: a class no case of the batch annotates leaves its output
    channel untouched (zero gradient on its 1x1x1 weights), the annotated ones learn."""
    from autoorgan.losses.partial_sigmoid import partial_dice_bce
    from autoorgan.networks.unet import SigmoidUNet
    torch.manual_seed(0)
    net = SigmoidUNet(1, 3, ARCH)
    x = torch.randn(2, 1, *PATCH)
    targets = (torch.rand(2, 3, *PATCH) > 0.8).float()
    annotated = torch.tensor([[True, False, True], [True, False, False]])
    loss, _ = partial_dice_bce(net(x), targets, annotated)
    loss.backward()
    head = net.unet.decoder.seg_layers[-1].weight.grad.flatten(1).abs().sum(1)   # [3]
    assert head[1] == 0 and head[0] > 0 and head[2] > 0


def test_masked_sigmoid_deep_supervision_ignores_unannotated_classes_at_every_stage():
    """--deep_supervision: every decoder stage but the lowest is trained (nnU-Net's weights 1/2^i, lowest 0, sum 1)
    against downsampled targets, and an unannotated class gets no gradient at any stage."""
    from autoorgan.losses.partial_sigmoid import deep_supervised, deep_supervision_weights, partial_dice_bce
    from autoorgan.networks.unet import SigmoidUNet
    w = deep_supervision_weights(4)
    assert w[3] == 0 and sum(w) == pytest.approx(1) and w[0] == pytest.approx(2 * w[1]) == pytest.approx(4 * w[2])
    torch.manual_seed(0)
    net = SigmoidUNet(1, 3, ARCH)
    x = torch.randn(2, 1, *PATCH)
    targets = (torch.rand(2, 3, *PATCH) > 0.8).float()
    annotated = torch.tensor([[True, False, True], [True, False, False]])
    outs = net(x, deep=True)
    assert len(outs) == len(net.unet.decoder.seg_layers) >= 2 and outs[0].shape[2:] == tuple(PATCH)
    loss, parts = deep_supervised(partial_dice_bce, outs, targets, annotated)
    loss.backward()
    layers = net.unet.decoder.seg_layers          # lowest resolution first
    for i, layer in enumerate(layers):
        grad = layer.weight.grad
        g = torch.zeros(3) if grad is None else grad.flatten(1).abs().sum(1)   # [3]
        assert g[1] == 0, i
        if i == 0:      # the lowest stage is not supervised
            assert g.sum() == 0
        else:
            assert g[0] > 0 and g[2] > 0, i
    with torch.no_grad():
        single, _ = deep_supervised(partial_dice_bce, [net(x)], targets, annotated)
        assert float(single) == pytest.approx(float(partial_dice_bce(net(x), targets, annotated)[0]))


@pytest.mark.parametrize("name", ["ccq", "dodnet", "masked_sigmoid"])
def test_channels_last_layout_gives_the_same_outputs_and_gradients(name):
    """Training and the sliding window run these networks channels-last (``conv_memory_format``): outputs and
    gradients must equal the default layout's."""
    from autoorgan.utils.device import conv_memory_format
    layout = conv_memory_format(torch.device("cpu"))
    assert layout == torch.channels_last_3d
    torch.manual_seed(0)
    net = _net(name, 3)
    twin = _net(name, 3)
    twin.load_state_dict(net.state_dict())
    twin.to(memory_format=layout)
    assert any(p.dim() == 5 and p.is_contiguous(memory_format=layout) and not p.is_contiguous()
               for p in twin.parameters())
    x = torch.randn(2, 1, *PATCH)
    classes = torch.tensor([[2, 0], [1, 2]])
    out, out_cl = net(x, classes), twin(x.to(memory_format=layout), classes)
    assert torch.allclose(out, out_cl, atol=1e-4)
    out.square().mean().backward()
    out_cl.square().mean().backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    scale = max(float(g.abs().max()) for g in grads.values())
    for n, p in twin.named_parameters():   # summation order differs between layouts: equal to 1 % of the largest
        if p.grad is not None:             # gradient (conv biases before instance norm get only rounding noise)
            assert torch.allclose(p.grad, grads[n], rtol=1e-2, atol=1e-2 * scale), n
