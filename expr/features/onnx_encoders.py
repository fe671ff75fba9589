"""The frozen encoders as ONNX models (``expr export RUN --format onnx``) and run by ONNX Runtime (``expr predict
--backend onnxruntime``): no torch module runs there.

An image encoder is exported from its batch of preprocessed pixels ``[B, 3, H, W]`` to its features ``[B, D]``;
its preprocessing (the family's own transform: resize, centre crop, scaling to [0, 1], normalisation) is described
in JSON (:func:`describe_transform`) and applied with PIL and numpy (:func:`preprocess`); the spec's test-time views
are taken as in torch. A speech encoder is exported from a standardised wave ``[1, N]`` to its hidden states ``[1,
frames, D]`` (the mean over the spec's layer range), and runs over a track in the same overlapping chunks as in torch
(:class:`~expr.features.encoding.AudioEncoder`).

What does not export cleanly is refused by name (:class:`OnnxExportError`): a preprocessing step other than those
above (the Hugging Face image processors), Whisper's log-mel front end, or a model whose exported outputs differ
from torch's by more than :data:`PARITY` on a random input.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from expr.features.encoding import AudioEncoder, EncoderError, ImageEncoder, conv_geometry
from expr.features.spec import EncoderSpec, parse_spec

OPSET = 17
PARITY = 1e-4
"""The largest difference to torch's outputs an exported model may show on a random input (the check at export)."""


class OnnxExportError(EncoderError):
    """A model that cannot be exported to ONNX; the message names the family or the part that blocks it."""


def describe_transform(transform, spec: EncoderSpec) -> list[dict[str, Any]]:
    """The steps of a torchvision ``Compose`` (open_clip's and timm's eval transforms) as JSON."""
    import torchvision.transforms as T

    steps = []
    for t in getattr(transform, "transforms", None) or []:
        name = type(t).__name__
        if isinstance(t, T.Resize):
            steps.append({"op": "resize", "size": t.size, "interpolation": t.interpolation.value,
                          "max_size": t.max_size})  # fmt: skip
        elif isinstance(t, T.CenterCrop):
            steps.append({"op": "center_crop", "size": list(t.size)})
        elif name in ("ToTensor", "MaybeToTensor"):
            steps.append({"op": "to_tensor"})
        elif isinstance(t, T.Normalize):
            steps.append({"op": "normalize", "mean": [float(m) for m in t.mean], "std": [float(s) for s in t.std]})
        elif getattr(t, "__name__", "") == "_convert_to_rgb" or (name == "MaybeConvertMode" and t.mode == "RGB"):
            steps.append({"op": "rgb"})
        else:
            raise OnnxExportError(f"encoder '{spec}': its preprocessing step {name or t!r} has no ONNX description")
    if not steps:
        raise OnnxExportError(f"encoder '{spec}' ({spec.family} family): its preprocessing is not a torchvision "
                              f"transform, so it has no ONNX description")  # fmt: skip
    return steps


def preprocess(image, steps: list[dict[str, Any]]) -> np.ndarray:
    """One PIL image through described ``steps`` -> [3, H, W] float32, as torchvision computes it."""
    from PIL import Image

    modes = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
    x = image
    for s in steps:
        op = s["op"]
        if op == "rgb":
            x = x.convert("RGB")
        elif op == "resize":
            w, h = x.size
            if isinstance(s["size"], int) or len(s["size"]) == 1:
                size = s["size"] if isinstance(s["size"], int) else s["size"][0]
                short, long = (w, h) if w <= h else (h, w)
                new_short, new_long = size, int(size * long / short)
                if s.get("max_size") and new_long > s["max_size"]:
                    new_short, new_long = int(s["max_size"] * new_short / new_long), s["max_size"]
                out = (new_short, new_long) if w <= h else (new_long, new_short)
            else:
                out = (s["size"][1], s["size"][0])
            x = x.resize(out, modes[s["interpolation"]]) if out != x.size else x
        elif op == "center_crop":
            th, tw = s["size"] if len(s["size"]) == 2 else s["size"] * 2
            w, h = x.size
            top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
            x = x.crop((left, top, left + tw, top + th))
        elif op == "to_tensor":
            x = np.asarray(x, np.float32).transpose(2, 0, 1) / 255.0
        elif op == "normalize":
            x = (x - np.float32(s["mean"])[:, None, None]) / np.float32(s["std"])[:, None, None]
    return np.ascontiguousarray(x, np.float32)


def session(path: Path, device: str = "cpu"):
    """An ONNX Runtime session of ``path``: on the CPU, or (``device`` cuda) with every provider the installed
    package offers."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    providers = ort.get_available_providers() if str(device).startswith("cuda") else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


def export_module(module: torch.nn.Module, args: tuple, path: Path, names: list[str], outputs: list[str],
                  dynamic: dict[str, dict[int, str]], what: str) -> float:  # fmt: skip
    """``module`` (in eval mode) to ``path``; returns the largest difference of ONNX Runtime's outputs to torch's on
    ``args``, refused above :data:`PARITY`."""
    module = module.eval()
    with torch.no_grad():
        want = module(*args)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # its fused attention op has no ONNX form; the math is the same
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes it treats as constants, for developers
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(module, args, str(path), input_names=names, output_names=outputs, dynamic_axes=dynamic,
                              opset_version=OPSET, **legacy)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the exporter fails in many ways on ops it cannot express
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise OnnxExportError(f"{what} does not export to ONNX ({type(e).__name__}: {first})") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    module.eval()  # the exporter restores the training flags it found; keep the reference in eval mode
    got = session(path).run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})
    diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))
    if not diff <= PARITY:
        raise OnnxExportError(f"{what} exports to ONNX, but ONNX Runtime differs from torch by {diff:.2g} (more than "
                              f"{PARITY:g})")  # fmt: skip
    return diff


class _Images(torch.nn.Module):
    def __init__(self, encoder: ImageEncoder):
        super().__init__()
        self.model, self.fn = encoder.model, encoder.forward

    def forward(self, pixels):
        return self.fn(pixels).float()


class _Speech(torch.nn.Module):
    def __init__(self, encoder: AudioEncoder):
        super().__init__()
        self.model, self.layers = encoder.model, encoder.layers

    def forward(self, wave):
        out = self.model(wave, output_hidden_states=self.layers is not None)
        if self.layers is None:
            return out.last_hidden_state
        first, last = self.layers
        return torch.stack([out.hidden_states[i] for i in range(first, last + 1)]).mean(0)


def export_image_encoder(encoder: ImageEncoder, path: Path) -> dict[str, Any]:
    """The encoder (on the CPU, float32) to ``path``; returns its JSON entry (spec, dim, preprocessing, parity)."""
    steps = describe_transform(getattr(encoder, "transform", None), encoder.spec)
    from PIL import Image

    pixels = torch.from_numpy(np.stack([preprocess(Image.new("RGB", (60, 40), c), steps) for c in ("red", "teal")]))
    pixels = pixels + 0.1 * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
    diff = export_module(_Images(encoder), (pixels,), path, ["pixels"], ["features"], {"pixels": {0: "batch"},
                         "features": {0: "batch"}}, f"image encoder '{encoder.spec}'")  # fmt: skip
    return {"file": path.name, "spec": str(encoder.spec), "dim": encoder.dim, "preprocess": steps, "parity": diff,
            "inputs": {"pixels": ["batch", 3, *pixels.shape[2:]]},
            "outputs": {"features": ["batch", encoder.dim]}}  # fmt: skip


def export_audio_encoder(encoder: AudioEncoder, path: Path) -> dict[str, Any]:
    """The speech encoder (on the CPU, float32) to ``path``; returns its JSON entry."""
    if encoder.mel is not None:
        raise OnnxExportError(f"encoder '{encoder.spec}': Whisper's log-mel front end runs outside the model and has "
                              f"no ONNX description")  # fmt: skip
    wave = torch.randn(1, 8000, generator=torch.Generator().manual_seed(0))
    diff = export_module(_Speech(encoder), (wave,), path, ["wave"], ["hidden"], {"wave": {1: "samples"},
                         "hidden": {1: "frames"}}, f"audio encoder '{encoder.spec}'")  # fmt: skip
    config = encoder.model.config
    return {"file": path.name, "spec": str(encoder.spec), "dim": encoder.dim, "parity": diff,
            "normalize": encoder.normalize, "conv": [[int(k), int(s)] for k, s in zip(config.conv_kernel,
            config.conv_stride, strict=True)], "inputs": {"wave": [1, "samples"]},
            "outputs": {"hidden": [1, "frames", encoder.dim]}}  # fmt: skip


def export_detector(folder: Path) -> dict[str, Any] | None:
    """MTCNN's three networks (``mtcnn_pnet.onnx`` over any frame size, ``mtcnn_rnet.onnx`` and ``mtcnn_onet.onnx``
    over 24 and 48 px patches) into ``folder``; returns their JSON entry, or None without MTCNN's weights (then
    ``expr predict`` falls back to OpenCV's Haar cascade, which runs no torch)."""
    from expr.features.mtcnn import MTCNN, MTCNNError

    try:
        nets = MTCNN().nets
    except MTCNNError:
        return None
    entry, g = {}, torch.Generator().manual_seed(0)
    for name, net, size in zip(("pnet", "rnet", "onet"), nets, (None, 24, 48), strict=True):
        x = torch.rand(2, 3, size or 37, size or 53, generator=g) * 2 - 1
        spatial = {0: "batch", 2: "height", 3: "width"} if size is None else {0: "batch"}
        dynamic = {"x": spatial, **{h: spatial for h in net.heads}}
        path = folder / f"mtcnn_{name}.onnx"
        diff = export_module(net, (x,), path, ["x"], list(net.heads), dynamic, f"MTCNN's {name}")
        entry[name] = {"file": path.name, "parity": diff, "outputs": list(net.heads)}
    return entry


class OnnxNet:
    """One of MTCNN's networks under ONNX Runtime, called as the torch network is (a tensor in, its heads out)."""

    def __init__(self, path: Path, device: str = "cpu"):
        self.session = session(path, device)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.session.run(None, {"x": x.float().contiguous().cpu().numpy()})
        return [torch.from_numpy(o).to(x.device) for o in out]


class OnnxImageEncoder(ImageEncoder):
    """:class:`~expr.features.encoding.ImageEncoder` (its batches and views) on an exported model."""

    def __init__(self, folder: Path, entry: dict[str, Any], batch_size: int = 64, device: str = "cpu"):
        self.spec, self.dim, self.steps = parse_spec(entry["spec"]), int(entry["dim"]), entry["preprocess"]
        self.session, self.batch_size = session(folder / entry["file"], device), batch_size

    def _run(self, images) -> torch.Tensor:
        pixels = np.stack([preprocess(im, self.steps) for im in images])
        return torch.from_numpy(self.session.run(None, {"pixels": pixels})[0])


class OnnxAudioEncoder(AudioEncoder):
    """:class:`~expr.features.encoding.AudioEncoder` (its chunks and context) on an exported model."""

    def __init__(self, folder: Path, entry: dict[str, Any], chunk_seconds: float = 30.0, context_seconds: float = 2.0,
                 device: str = "cpu"):  # fmt: skip
        self.spec, self.dim, self.mel = parse_spec(entry["spec"]), int(entry["dim"]), None
        self.normalize, self.layers = bool(entry["normalize"]), None  # the layer range is inside the exported model
        self.conv = entry["conv"]
        kernels, strides = zip(*self.conv, strict=True)
        self.stride, self.receptive = conv_geometry(SimpleNamespace(conv_kernel=kernels, conv_stride=strides))
        self._chunking(chunk_seconds, context_seconds)
        self.session = session(folder / entry["file"], device)

    def num_frames(self, num_samples: int) -> int:
        n = num_samples
        for kernel, step in self.conv:
            n = (n - kernel) // step + 1 if n >= kernel else 0
        return max(n, 0)

    def _hidden(self, wave: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"wave": np.ascontiguousarray(wave[None], np.float32)})[0][0])


def onnx_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "onnx.json"
    if not path.is_file():
        raise EncoderError(f"{folder}: no onnx.json: export the run with `expr export RUN --format onnx --out DIR`")
    return json.loads(path.read_text())
