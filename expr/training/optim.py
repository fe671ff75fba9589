"""The optimizer and its schedule: AdamW with weight decay on kernels only, the learning rate scaled for the number
of processes and accumulation steps (``train.scale_lr``), linear warm-up then cosine decay to a floor."""

from __future__ import annotations

import math

import torch

from expr.config import TrainConfig


def cosine_schedule(optimizer, total_steps: int, warmup_ratio: float, min_lr_ratio: float):
    """Linear warm-up then cosine decay to ``min_lr_ratio`` x the peak learning rate."""
    warmup = int(round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels only; not on biases, norms, the logit scale or the gains of
    weight-normalised convolutions (``weight.original0``: a per-channel scale, like a norm's, although 3-d)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kernel = p.ndim >= 2 and "logit_scale" not in name and not name.endswith("original0")
        (decay if kernel else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scaled_lr(train: TrainConfig, num_processes: int) -> float:
    """``train.lr`` scaled by ``train.scale_lr`` for processes x accumulation steps (none, linear or sqrt)."""
    factor = num_processes * train.grad_accum_steps
    return train.lr * {"none": 1.0, "linear": float(factor), "sqrt": math.sqrt(factor)}[train.scale_lr]


def build_optimizer(model: torch.nn.Module, train: TrainConfig, lr: float, total_steps: int, groups=None):
    """(AdamW, its cosine schedule over ``total_steps`` optimizer steps). ``groups``: parameter groups with their own
    learning rates (default: :func:`param_groups` of ``model`` at ``lr``); the schedule scales each alike."""
    optimizer = torch.optim.AdamW(groups or param_groups(model, train.weight_decay), lr=lr)
    return optimizer, cosine_schedule(optimizer, total_steps, train.warmup_ratio, train.min_lr_ratio)
