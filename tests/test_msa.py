"""MSA encoder: windows, cross-scale flow through the cross-attention, spatial and batch correspondence."""
import pytest
import torch

from autoorgan.networks.msa import MSAEncoder, covering_windows, window_merge, window_partition


def _maps(b=2, c=16):
    g = torch.Generator().manual_seed(0)
    # coarsest first: strides 16, 8, 4 of a 64 x 32 x 48 input (asymmetric)
    return [torch.randn(b, c, 4, 2, 3, generator=g), torch.randn(b, c, 8, 4, 6, generator=g),
            torch.randn(b, c, 16, 8, 12, generator=g)]


def _encoder(**kw):
    torch.manual_seed(0)
    enc = MSAEncoder(16, 3, heads=4, patch_size=2, depth=kw.pop("depth", 2), dropout=0.0)
    return enc.eval()


def _run_with_change(enc, level, scale=3.0):
    """Outputs for the maps and for the maps with random noise added to ``level`` (not a constant: LayerNorm
    removes that)."""
    maps = _maps()
    with torch.no_grad():
        base = enc(maps)
        changed = [m.clone() for m in maps]
        changed[level] += scale * torch.randn_like(changed[level])
        return base, enc(changed)


def test_window_partition_roundtrip_with_padding():
    x = torch.randn(2, 3, 5, 6, 7)
    w, grid = window_partition(x, 2)
    assert grid == (3, 3, 4) and w.shape == (2, 3, 3, 4, 8, 3)
    assert torch.equal(window_merge(w, 2, (5, 6, 7)), x)
    # window (0, 0, 0), token 0 is voxel (0, 0, 0); token 1 is voxel (0, 0, 1) (last axis fastest)
    assert torch.equal(w[:, 0, 0, 0, 1], x[:, :, 0, 0, 1])


def test_covering_windows_maps_each_fine_window_to_the_coarse_window_over_it():
    coarse = torch.arange(2 * 3 * 4).float().reshape(1, 2, 3, 4, 1, 1)
    out = covering_windows(coarse, (4, 6, 8), (2, 2, 2))
    assert out.shape == (1, 4, 6, 8, 1, 1)
    assert out[0, 3, 5, 7, 0, 0] == coarse[0, 1, 2, 3, 0, 0]
    assert out[0, 2, 1, 4, 0, 0] == coarse[0, 1, 0, 2, 0, 0]


def test_output_keeps_shapes():
    enc = _encoder()
    maps = _maps()
    assert [o.shape for o in enc(maps)] == [m.shape for m in maps]


def test_higher_level_change_reaches_lower_levels_only_where_it_lies_and_only_in_its_batch_item():
    enc = _encoder()
    maps = _maps()
    with torch.no_grad():
        base = enc(maps)
        changed = [m.clone() for m in maps]
        # change the top level (stride 16) inside its window (0, 0, 0) = voxels [0:2, 0:2, 0:2], batch item 0
        changed[0][0, :, 0:2, 0:2, 0:2] += 3 * torch.randn(16, 2, 2, 2)  # not constant: LayerNorm removes that
        out = enc(changed)
    for lvl, factor in ((1, 2), (2, 4)):
        diff = (out[lvl] - base[lvl]).abs().amax(1)  # [B, n0, n1, n2]
        span = 2 * factor  # the top window covers 2 * factor voxels of this level per axis
        assert diff[0, :span, :span, :span].min() > 1e-4, f"level {lvl} did not see the higher-level change"
        outside = diff[0].clone()
        outside[:span, :span, :span] = 0
        assert outside.max() < 1e-6, f"level {lvl} changed outside the region under the changed window"
        assert diff[1].max() < 1e-6, "another batch item changed"


def test_flow_goes_through_the_cross_attention():
    enc = _encoder()
    with torch.no_grad():
        for block in enc.blocks:
            for layer in block:
                for attn in layer.cross_attn:
                    attn.attn.out_proj.weight.zero_()
    base, out = _run_with_change(enc, 0)
    assert torch.allclose(out[1], base[1]) and torch.allclose(out[2], base[2])


def test_lower_level_change_does_not_reach_higher_levels():
    base, out = _run_with_change(_encoder(), 2)
    assert torch.allclose(out[0], base[0]) and torch.allclose(out[1], base[1])
    assert not torch.allclose(out[2], base[2])


@pytest.mark.parametrize("depth", [1, 2])
def test_top_level_has_no_cross_attention(depth):
    enc = _encoder(depth=depth)
    assert len(enc.blocks) == depth
    for block in enc.blocks:
        assert [len(layer.cross_attn) for layer in block] == [0, 1, 2]
