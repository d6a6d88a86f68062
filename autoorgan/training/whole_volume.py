"""Whole-volume training data for Organ-DETR: preprocessed case -> fixed network input with label map and boxes.

Every case is brought to the planned ``input_shape`` as at inference (:func:`autoorgan.preprocessing.fit.fit_to_input`,
at a random pad offset in training). Two recipes (``recipe``):

* ``default``: one scale factor for every axis (also at inference), scale augmentation inside the fit (a random zoom
  of 0.85-1.15, as far as the case still fits) and no rotation, so the **box targets are exact**: the original label
  map's boxes, carried continuously through crop and resampling at preprocessing (``boxes_exact``) and through the
  fit here (:class:`~autoorgan.boxes.frames.FitTransform`), never quantised to the coarse grid and never lost when an
  organ is too thin to survive resampling. Intensity augmentation by batchgeneratorsv2 (noise, brightness, contrast,
  gamma). Cases are drawn class-balanced: an organ first (uniformly), then a case that annotates and holds it, so
  organs annotated in few cases (OpenKBP's Esophagus, Larynx) are seen as often as the others.
* ``paper``: the earlier recipe, kept to reproduce the paper's set-up: each axis squeezed on its own, batchgeneratorsv2
  rotation +-15 deg and scaling, boxes computed afterwards from the augmented (resampled) label map, cases uniformly.

No mirroring by default (organ labels are lateralised). Each item is a pure function of ``(seed, sample index)``, so a
resumed run sees exactly the data the uninterrupted run would have seen, whatever the number of loader workers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from autoorgan.boxes import boxes_from_label_map, voxel_to_normalized
from autoorgan.preprocessing.fit import fit_to_input


def label_lookup(label_values: list[int]) -> np.ndarray:
    """Lookup table: dataset label value -> class index (0 background, k = k-th foreground label in ascending
    value order, i.e. organ class ``k - 1``)."""
    lut = np.zeros(max(label_values, default=0) + 1, np.int64)
    for k, v in enumerate(sorted(label_values), start=1):
        lut[v] = k
    return lut


RECIPES = ("default", "paper")
ZOOM = (0.85, 1.15)


def training_transforms(input_shape: tuple[int, ...], mirror_axes: tuple[int, ...] = (), spatial: bool = True):
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    angle = np.deg2rad(15)
    transforms = [
        SpatialTransform(tuple(input_shape), patch_center_dist_from_border=0, random_crop=False, p_rotation=0.2,
                         rotation=(-angle, angle), p_scaling=0.2, scaling=(0.85, 1.15),
                         p_synchronize_scaling_across_axes=1, mode_seg="nearest")] if spatial else []
    transforms += [
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.05), p_per_channel=1, synchronize_channels=True),
                        apply_probability=0.1),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.8, 1.2)),
                                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.15),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.8, 1.2)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1), apply_probability=0.15),
        RandomTransform(GammaTransform(gamma=BGContrast((0.8, 1.25)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.2),
    ]
    if mirror_axes:
        transforms.append(MirrorTransform(allowed_axes=tuple(mirror_axes)))
    return ComposeTransforms(transforms)


class WholeVolumeCases:
    """Preprocessed cases of one fold part, served as fixed-shape network inputs.

    ``item(identifier, seed, augment)`` -> dict with ``image [C, *input_shape]`` float32, ``labels [*input_shape]``
    int64 class indices, ``boxes [K, 6]`` normalized boxes of the annotated organs present after augmentation,
    ``classes [K]`` 0-based organ classes, ``annotated [M]`` bool, ``fit`` (``FitTransform``) and
    ``case_id``.
    """

    def __init__(self, folder: Path, identifiers: list[str], input_shape: tuple[int, ...], label_values: list[int],
                 mirror_axes: tuple[int, ...] = (), recipe: str = "default"):
        from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
        self.folder, self.identifiers = Path(folder), list(identifiers)
        self.dataset = nnUNetDatasetBlosc2(str(folder), self.identifiers)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.label_values = sorted(label_values)
        self.lut = label_lookup(self.label_values)
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}")
        self.recipe = recipe
        self.transforms = training_transforms(self.input_shape, mirror_axes, spatial=recipe == "paper")

    @property
    def num_classes(self) -> int:
        return len(self.label_values)

    def load(self, identifier: str) -> tuple[np.ndarray, np.ndarray, dict]:
        data, seg, _, props = self.dataset.load_case(identifier)
        return np.asarray(data), np.asarray(seg), props

    def item(self, identifier: str, seed: int | None = None, augment: bool = False) -> dict:
        data, seg, props = self.load(identifier)
        seg = np.clip(seg[0].astype(np.int64), 0, len(self.lut) - 1)
        labels = torch.from_numpy(self.lut[seg])
        image = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        annotated = props["autoorgan"]["annotated_labels"]
        ann = torch.tensor([v in annotated for v in self.label_values], dtype=torch.bool)
        rng = np.random.default_rng(seed) if (augment and seed is not None) else None
        exact = self.recipe == "default"
        zoom = float(rng.uniform(*ZOOM)) if (rng is not None and exact) else 1.0
        image, labels, fit = fit_to_input(image, labels, self.input_shape, rng, isotropic=exact, zoom=zoom)
        if augment:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed or 0))
                state = np.random.get_state()
                np.random.seed(int(seed or 0) % 2 ** 32)
                try:
                    out = self.transforms(image=image, segmentation=labels[None].to(torch.int16))
                finally:
                    np.random.set_state(state)
            image, labels = out["image"], out["segmentation"][0].long()
        if exact:  # the original boxes, carried through crop, resampling and the fit without quantisation
            boxes = {self.label_values.index(int(v)) + 1: fit.box_to_input(np.asarray(b, np.float64)[None])[0]
                     for v, b in props["autoorgan"]["boxes_exact"].items() if int(v) in annotated}
            limit = np.tile(np.asarray(self.input_shape, np.float64), 2)
            boxes = {c: np.clip(b, 0, limit) for c, b in boxes.items()}
        else:
            boxes = boxes_from_label_map(labels.numpy(), labels=[k + 1 for k in range(self.num_classes) if ann[k]])
        classes = sorted(boxes)
        norm = voxel_to_normalized(np.asarray([boxes[c] for c in classes], np.float64).reshape(-1, 6),
                                   self.input_shape)
        return {"image": image.float().contiguous(), "labels": labels.long(),
                "boxes": torch.as_tensor(norm, dtype=torch.float32),
                "classes": torch.as_tensor([c - 1 for c in classes], dtype=torch.int64), "annotated": ann,
                "fit": fit, "case_id": identifier}

    def properties(self, identifier: str) -> dict:
        """The ``autoorgan`` part of a case's preprocessed properties (boxes, annotated labels), without its image."""
        import pickle
        with open(self.folder / f"{identifier}.pkl", "rb") as fh:
            return pickle.load(fh)["autoorgan"]

    def organ_cases(self) -> dict[int, list[str]]:
        """``{organ class (0-based): cases that annotate and hold it}``, for class-balanced sampling."""
        out: dict[int, list[str]] = {}
        for ident in self.identifiers:
            ao = self.properties(ident)
            for v in ao.get("boxes_exact", ao["boxes"]):
                if int(v) in ao["annotated_labels"]:
                    out.setdefault(self.label_values.index(int(v)), []).append(ident)
        return out


def collate(items: list[dict]) -> dict:
    return {"image": torch.stack([i["image"] for i in items]), "labels": torch.stack([i["labels"] for i in items]),
            "targets": [{"labels": i["classes"], "boxes": i["boxes"], "annotated": i["annotated"]} for i in items],
            "fit": [i["fit"] for i in items], "case_id": [i["case_id"] for i in items]}


class SampleStream(torch.utils.data.Dataset):
    """Map-style dataset over the ``num_samples`` global sample indices of a run: sample ``g`` is a case chosen by
    ``(seed, g)`` (class-balanced with the default recipe: an organ uniformly, then one of its cases; uniformly with
    the paper's) augmented with a seed drawn from ``(seed, g)``, so any part of a run can be reproduced."""

    def __init__(self, cases: WholeVolumeCases, seed: int, num_samples: int):
        self.cases, self.seed, self.num_samples = cases, int(seed), int(num_samples)
        self.by_organ = cases.organ_cases() if cases.recipe == "default" else {}

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, g: int) -> dict:
        rng = np.random.default_rng([self.seed, g])
        if self.by_organ:
            organ = sorted(self.by_organ)[int(rng.integers(len(self.by_organ)))]
            ident = self.by_organ[organ][int(rng.integers(len(self.by_organ[organ])))]
        else:
            ident = self.cases.identifiers[int(rng.integers(len(self.cases.identifiers)))]
        return self.cases.item(ident, seed=int(rng.integers(2 ** 31)), augment=True)
