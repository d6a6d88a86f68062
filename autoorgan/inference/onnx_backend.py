"""ONNX export of the networks of a model folder (``autoorgan_export_onnx``) and the onnxruntime backend of
``autoorgan_predict --backend onnx``.

Each fold's network is exported on its fixed input (organdetr: the plans' ``input_shape``; ccq, dodnet, masked_sigmoid:
the plans' ``patch_size``, all classes at once) with ``torch.onnx.export(dynamo=True)`` at opset 20 (3D
``GridSample`` for the deformable attention needs opset >= 20) to ``fold_F/network.onnx``, then run once in
onnxruntime beside PyTorch on the same random input; the largest absolute difference of every output is written to
``fold_F/network.onnx.json`` and the export fails (nothing written) when it exceeds :data:`TOLERANCE`.

:class:`OnnxNetwork` wraps an onnxruntime session as a ``torch.nn.Module`` with the PyTorch network's call signature
and outputs (organdetr: ``{"logits" [1, N, M + 1], "boxes" [1, N, 6]}``, and ``"iou" [1, N]`` with an IoU head;
segmentation: logits ``[1, K, *patch]``), so the predictor, its preprocessing and its mapping back are the same for
both backends. An ONNX file holds a graph and weights only; loading it runs no Python code.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import atomic_output, write_json_atomic

OPSET = 20
TOLERANCE = 1e-3   # max |onnxruntime - PyTorch| of any output on the export check (float32; seen: ~1e-5)
ONNX_NAME = "network.onnx"
BOX_OUTPUTS = ("logits", "boxes", "iou")  # organdetr's outputs in graph order ("iou" only with an IoU head)


class _Outputs(torch.nn.Module):
    """A network with plain tensor outputs (what ONNX graphs return)."""

    def __init__(self, net: torch.nn.Module, boxes: bool):
        super().__init__()
        self.net, self.boxes = net, boxes

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        return tuple(out[k] for k in BOX_OUTPUTS if k in out) if self.boxes else out


def input_shape(predictor) -> tuple[int, ...]:
    """``[1, C, n0, n1, n2]``: the one input shape a configuration's network is exported for."""
    cfg = predictor.cfg
    spatial = cfg["input_shape"] if predictor.output == "boxes" else cfg["patch_size"]
    return (1, predictor.num_channels, *[int(v) for v in spatial])


def export_onnx(predictor, progress: bool = True) -> list[dict]:
    """Export every network of a loaded predictor (its folds) next to its checkpoint; returns the check records."""
    import contextlib
    import io
    import warnings

    import onnxruntime as ort
    records = []
    shape = input_shape(predictor)
    for fold, net in zip(predictor.folds, predictor.networks, strict=True):
        target = Path(predictor.model_folder) / f"fold_{fold}" / ONNX_NAME
        wrapped = _Outputs(net.cpu().eval(), predictor.output == "boxes").eval()
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = wrapped(x)
        ref = ref if isinstance(ref, tuple) else (ref,)
        names = list(BOX_OUTPUTS[:len(ref)]) if predictor.output == "boxes" else ["logits"]
        with atomic_output(target) as tmp:
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    torch.onnx.export(wrapped, (x,), str(tmp), opset_version=OPSET, dynamo=True, external_data=False,
                                      input_names=["image"], output_names=names)
            except Exception as err:  # noqa: BLE001 - the exporter raises many kinds; report the operator
                text = str(err).strip().splitlines()
                raise UserError(f"the {predictor.section} network of fold {fold} cannot be exported to ONNX "
                                f"({type(err).__name__}: {text[0] if text else ''})") from None
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            outs = session.run(None, {"image": x.numpy()})
            diffs = [float(np.abs(o - r.numpy()).max()) for o, r in zip(outs, ref, strict=True)]
            if max(diffs) > TOLERANCE:
                raise UserError(f"the ONNX export of fold {fold} differs from PyTorch by {max(diffs):.2g} (> "
                                f"{TOLERANCE:g}); not written")
        record = {"fold": fold, "file": str(target), "input_shape": list(shape), "outputs": names, "opset": OPSET,
                  "max_abs_diff_vs_pytorch": dict(zip(names, diffs)), "torch_version": torch.__version__,
                  "onnxruntime_version": ort.__version__}
        write_json_atomic(record, target.with_name(ONNX_NAME + ".json"))
        records.append(record)
        if progress:
            print(f"fold {fold}: {target} (max |ONNX - PyTorch| {max(diffs):.1e})")
    return records


class OnnxNetwork(torch.nn.Module):
    """An exported network run by onnxruntime, called like the PyTorch network it replaces (``[1, C, *shape]`` in)."""

    def __init__(self, path: Path, boxes: bool, num_classes: int, device: torch.device):
        super().__init__()
        import onnxruntime as ort
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # noqa: BLE001 - damaged or foreign file
            raise UserError(f"cannot load {path} ({type(err).__name__}); export it again with "
                            "autoorgan_export_onnx") from None
        self.shape = tuple(self.session.get_inputs()[0].shape)
        self.boxes, self.num_classes = boxes, num_classes

    def forward(self, x: torch.Tensor, classes: torch.Tensor | None = None):
        if tuple(x.shape) != self.shape:
            raise UserError(f"the ONNX network takes {self.shape}, got {tuple(x.shape)}; export it again")
        outs = [torch.from_numpy(o) for o in self.session.run(None, {"image": x.detach().cpu().numpy()})]
        if self.boxes:
            return {k: v.to(x.device) for k, v in zip(BOX_OUTPUTS, outs)}
        logits = outs[0].to(x.device)
        if classes is not None:
            logits = logits[:, classes.reshape(-1).to(logits.device)]
        return logits


def onnx_networks(model_folder: Path, folds: list[str], boxes: bool, num_classes: int,
                  device: torch.device) -> list[OnnxNetwork]:
    """The exported networks of ``folds``; a one-line error naming the export command when one is missing."""
    nets = []
    for fold in folds:
        path = Path(model_folder) / f"fold_{fold}" / ONNX_NAME
        if not path.is_file():
            raise UserError(f"no {ONNX_NAME} for fold {fold} in {model_folder}; export it first with "
                            f"autoorgan_export_onnx -m {model_folder} -f {fold}")
        meta = path.with_name(ONNX_NAME + ".json")
        if meta.is_file() and json.loads(meta.read_text()).get("opset", OPSET) > OPSET:
            raise UserError(f"{path} needs a newer autoorgan (opset above {OPSET})")
        nets.append(OnnxNetwork(path, boxes, num_classes, device))
    return nets
