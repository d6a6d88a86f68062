"""nnU-Net's default image resampling with bounded memory (same result, computed slab by slab).

nnU-Net's ``resample_data_or_seg_to_shape`` converts the whole case to float64 and runs scikit-image's spline
``resize`` on it: for a 512 x 512 x 600 CT that is several GB. Spline interpolation on a grid is separable (the
B-spline prefilter runs along one axis at a time and the interpolation kernel is a tensor product), so the same
numbers come out of two passes:

1. slabs along one axis ``a``: resample the other two axes (``a`` kept at its size, where spline interpolation at
   the knots returns the input unchanged);
2. the reduced volume: resample axis ``a`` (with ``order_z`` along it when nnU-Net would treat ``a`` as the
   anisotropic axis, otherwise with ``order``).

Both passes call nnU-Net's own ``resample_data_or_seg``; only the split is ours. ``tests/test_predict.py`` checks
equality with the single call. The split is used only when no axis is upsampled (then every sample point lies inside
the grid; with upsampling, points beyond the outer voxel centres are extrapolated slightly differently by the two
routes) -- the large scans this is for are always downsampled. Other resampling functions named in the plans, and
upsampling, are computed by one call of the plans' function.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

SLAB_VOXELS = 8_000_000  # input voxels per slab (float64 working copy ~64 MB)


def resample_image(data: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                   new_spacing: Sequence[float], fn_name: str, fn_kwargs: dict, fn) -> np.ndarray:
    """``data [C, n0, n1, n2]`` -> ``[C, *new_shape]`` float32, as the plans' data resampling function ``fn``
    (``fn_name`` / ``fn_kwargs`` from the plans) would compute it."""
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis, resample_data_or_seg
    new_shape = [int(s) for s in new_shape]
    if fn_name != "resample_data_or_seg_to_shape" or list(data.shape[1:]) == new_shape or \
            any(n > o for n, o in zip(new_shape, data.shape[1:])):
        return np.asarray(fn(data, new_shape, current_spacing, new_spacing), dtype=np.float32)
    kw = dict(fn_kwargs)
    order, order_z = int(kw.get("order", 3)), int(kw.get("order_z", 0))
    sep, axis = determine_do_sep_z_and_axis(kw.get("force_separate_z", False), current_spacing, new_spacing,
                                            kw.get("separate_z_anisotropy_threshold", 3))
    a = int(axis) if sep else 0
    old = list(data.shape[1:])
    mid_shape = list(new_shape)
    mid_shape[a] = old[a]
    per_slice = int(np.prod([old[i] for i in range(3) if i != a]))
    step = max(1, SLAB_VOXELS // max(per_slice, 1))
    mid = np.empty((data.shape[0], *mid_shape), np.float32)
    for start in range(0, old[a], step):
        sl = [slice(None)] * 4
        sl[a + 1] = slice(start, min(start + step, old[a]))
        slab = data[tuple(sl)]
        shape = list(mid_shape)
        shape[a] = slab.shape[a + 1]
        mid[tuple(sl)] = resample_data_or_seg(slab, shape, False, a, order, sep, order_z=order_z)
    if old[a] == new_shape[a]:
        return mid
    # pass 2: only axis a changes
    out = resample_data_or_seg(mid, new_shape, False, a, order, sep, order_z=order_z)
    return np.asarray(out, dtype=np.float32)
