"""MTCNN (Zhang et al. 2016): a three-stage CNN face detector with five landmarks (eyes, nose, mouth corners), for
``expr predict``. Inference only, on one image or a batch of frames, pure torch (no compiled ops).

The networks and the stage logic follow facenet-pytorch's port (MIT License, Copyright (c) 2019 Timothy Esler), whose
wheel ships the trained weights as plain state dicts (``facenet_pytorch/data/{p,r,o}net.pt``): they are read from the
installed package (a dependency of expr, pinned to 2.5.3; the package itself is never imported), weights only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.functional import interpolate

WEIGHTS_PACKAGE = "facenet_pytorch"


class MTCNNError(RuntimeError):
    """The detector's weights are not installed."""


def weights_dir() -> Path:
    """The installed facenet-pytorch's ``data/`` folder (found without importing the package)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" if spec else None
    if folder is None or not all((folder / f"{n}.pt").is_file() for n in ("pnet", "rnet", "onet")):
        raise MTCNNError(
            "the MTCNN face detector's weights come with facenet-pytorch, which is not installed: "
            "`pip install facenet-pytorch==2.5.3` (or `./launch.sh install`), or use --detector haar"
        )
    return folder


class _Net(nn.Module):
    """A sequence of named layers (the names are the state dicts' keys), then named output heads: box offsets,
    (landmarks,) face probability (the last head, through a softmax)."""

    def __init__(self, body: list[tuple[str, nn.Module]], heads: dict[str, nn.Module], flatten_at: str | None):
        super().__init__()
        self.order = [name for name, _ in body]
        for name, layer in body:
            self.add_module(name, layer)
        self.heads = list(heads)
        for name, layer in heads.items():
            self.add_module(name, layer)
        self.flatten_at = flatten_at

    def forward(self, x):
        for name in self.order:
            if name == self.flatten_at:  # the original's (width, height) flattening order
                x = x.permute(0, 3, 2, 1).flatten(1)  # (not reshape(len(x), -1): ONNX would fix the batch)
            x = getattr(self, name)(x)
        out = [getattr(self, name)(x) for name in self.heads]
        return [*out[:-1], out[-1].softmax(1)]


def pnet() -> _Net:
    return _Net(
        [("conv1", nn.Conv2d(3, 10, 3)), ("prelu1", nn.PReLU(10)), ("pool1", nn.MaxPool2d(2, 2, ceil_mode=True)),
         ("conv2", nn.Conv2d(10, 16, 3)), ("prelu2", nn.PReLU(16)), ("conv3", nn.Conv2d(16, 32, 3)),
         ("prelu3", nn.PReLU(32))],
        {"conv4_2": nn.Conv2d(32, 4, 1), "conv4_1": nn.Conv2d(32, 2, 1)},
        None,
    )  # fmt: skip


def rnet() -> _Net:
    return _Net(
        [("conv1", nn.Conv2d(3, 28, 3)), ("prelu1", nn.PReLU(28)), ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
         ("conv2", nn.Conv2d(28, 48, 3)), ("prelu2", nn.PReLU(48)), ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
         ("conv3", nn.Conv2d(48, 64, 2)), ("prelu3", nn.PReLU(64)), ("dense4", nn.Linear(576, 128)),
         ("prelu4", nn.PReLU(128))],
        {"dense5_2": nn.Linear(128, 4), "dense5_1": nn.Linear(128, 2)},
        "dense4",
    )  # fmt: skip


def onet() -> _Net:
    return _Net(
        [("conv1", nn.Conv2d(3, 32, 3)), ("prelu1", nn.PReLU(32)), ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
         ("conv2", nn.Conv2d(32, 64, 3)), ("prelu2", nn.PReLU(64)), ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
         ("conv3", nn.Conv2d(64, 64, 3)), ("prelu3", nn.PReLU(64)), ("pool3", nn.MaxPool2d(2, 2, ceil_mode=True)),
         ("conv4", nn.Conv2d(64, 128, 2)), ("prelu4", nn.PReLU(128)), ("dense5", nn.Linear(1152, 256)),
         ("prelu5", nn.PReLU(256))],
        {"dense6_2": nn.Linear(256, 4), "dense6_3": nn.Linear(256, 10), "dense6_1": nn.Linear(256, 2)},
        "dense5",
    )  # fmt: skip


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, mode: str = "union") -> torch.Tensor:
    """Indices of the boxes [N, 4] (x1, y1, x2, y2, inclusive pixels) kept by greedy non-maximum suppression, best
    first; ``mode`` ``union`` (IoU) or ``min`` (overlap / the smaller area)."""
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = scores.argsort(descending=True), []
    while order.numel():
        i, rest = order[0], order[1:]
        keep.append(i)
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest]) + 1).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest]) + 1).clamp(min=0)
        inter = w * h
        overlap = inter / (torch.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.int64)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes widened to squares around their centres."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    out = boxes.clone()
    out[:, 0] = boxes[:, 0] + w / 2 - side / 2
    out[:, 1] = boxes[:, 1] + h / 2 - side / 2
    out[:, 2:4] = out[:, :2] + side[:, None]
    return out


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    out = boxes.clone()
    out[:, :4] = boxes[:, :4] + offsets * torch.cat([w, h, w, h], 1)
    return out


def _patches(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The pixels of boxes (rows: image index, x1, y1, x2, y2; clipped to the image, 1-based like the original) of
    ``images`` [B, 3, H, W], resized to size x size."""
    _, _, H, W = images.shape
    out = []
    for b, x1, y1, x2, y2 in boxes[:, :5].trunc().int().tolist():
        x1, y1, x2, y2 = max(x1, 1), max(y1, 1), min(x2, W), min(y2, H)
        patch = images[b, :, y1 - 1 : y2, x1 - 1 : x2] if x2 > x1 - 1 and y2 > y1 - 1 else images[b, :, :1, :1]
        out.append(interpolate(patch[None], size=(size, size), mode="area"))
    return (torch.cat(out) - 127.5) * 0.0078125


class MTCNN:
    """``detect(rgb)`` -> (boxes [K, 4] x1, y1, x2, y2; scores [K]; landmarks [K, 5, 2]), best first;
    ``detect_batch(frames)`` the same for each of a batch of frames of one size, the networks run once per batch."""

    def __init__(self, min_size: int = 20, thresholds=(0.6, 0.7, 0.7), factor: float = 0.709, device="cpu"):
        folder = weights_dir()
        self.nets = []
        for build, name in ((pnet, "pnet"), (rnet, "rnet"), (onet, "onet")):
            net = build()
            net.load_state_dict(torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True))
            self.nets.append(net.eval().requires_grad_(False).to(device))
        self.min_size, self.thresholds, self.factor, self.device = min_size, thresholds, factor, device

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.detect_batch(np.asarray(rgb)[None])[0]

    @torch.no_grad()
    def detect_batch(self, frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        p, r, o = self.nets
        images = torch.as_tensor(np.ascontiguousarray(frames), device=self.device).permute(0, 3, 1, 2).float()
        B, _, H, W = images.shape
        apart = 4.0 * max(H, W)  # NMS per image in one pass: image b's boxes moved b * apart away from the others'

        def nms_each(boxes, threshold, mode="union"):  # rows: image, x1, y1, x2, y2, score, ...
            return nms(boxes[:, 1:5] + boxes[:, :1] * apart, boxes[:, 5], threshold, mode)

        empty = [(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))] * B
        # stage 1: PNet over a pyramid of scales, 12 x 12 cells every 2 pixels
        scale, side, found = 12.0 / self.min_size, min(H, W) * 12.0 / self.min_size, []
        while side >= 12:
            data = interpolate(images, size=(int(H * scale + 1), int(W * scale + 1)), mode="area")
            reg, prob = p((data - 127.5) * 0.0078125)
            mask = prob[:, 1] >= self.thresholds[0]
            byx = mask.nonzero().float()
            if len(byx):
                cell = byx[:, 1:].flip(1)
                box = torch.cat([byx[:, :1], ((2 * cell + 1) / scale).floor(), ((2 * cell + 12) / scale).floor(),
                                 prob[:, 1][mask][:, None], reg.permute(0, 2, 3, 1)[mask]], 1)  # fmt: skip
                found.append(box[nms_each(box, 0.5)])
            scale, side = scale * self.factor, side * self.factor
        if not found:
            return empty
        boxes = torch.cat(found)
        boxes = boxes[nms_each(boxes, 0.7)]
        w, h = boxes[:, 3] - boxes[:, 1], boxes[:, 4] - boxes[:, 2]
        shift = boxes[:, 6:10] * torch.stack([w, h, w, h], 1)
        boxes = torch.cat([boxes[:, :1], _square(torch.cat([boxes[:, 1:5] + shift, boxes[:, 5:6]], 1))], 1)
        # stage 2: RNet refines the candidates on 24 x 24 patches
        reg, prob = r(_patches(images, boxes, 24))
        keep = prob[:, 1] > self.thresholds[1]
        boxes, reg = torch.cat([boxes[keep, :5], prob[keep, 1:2]], 1), reg[keep]
        if not len(boxes):
            return empty
        pick = nms_each(boxes, 0.7)
        boxes = torch.cat([boxes[pick, :1], _square(_regress(boxes[pick, 1:], reg[pick]))], 1)
        # stage 3: ONet on 48 x 48 patches gives the final boxes and the five landmarks
        reg, marks, prob = o(_patches(images, boxes, 48))
        keep = prob[:, 1] > self.thresholds[2]
        boxes, reg, marks = torch.cat([boxes[keep, :5], prob[keep, 1:2]], 1), reg[keep], marks[keep]
        if not len(boxes):
            return empty
        bw = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        bh = (boxes[:, 4] - boxes[:, 2] + 1)[:, None]
        points = torch.stack([bw * marks[:, :5] + boxes[:, 1:2] - 1, bh * marks[:, 5:] + boxes[:, 2:3] - 1], -1)
        boxes = torch.cat([boxes[:, :1], _regress(boxes[:, 1:], reg)], 1)
        pick = nms_each(boxes, 0.7, "min")
        boxes, points = boxes[pick].cpu().numpy(), points[pick].cpu().numpy()
        image = boxes[:, 0]
        return [(boxes[image == b, 1:5], boxes[image == b, 5], points[image == b]) for b in range(B)]
