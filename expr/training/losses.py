"""Loss functions: class-weighted cross-entropy, the CLIP-style text contrastive loss, and the valence-arousal
(CCC) and action-unit (weighted BCE) losses of Aff-Wild2's other tasks. Pure functions."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(labels: np.ndarray, num_classes: int, scheme: str = "inverse", beta: float = 0.999) -> torch.Tensor:
    """Per-class cross-entropy weights from the training labels (``-1`` entries are ignored).

    ``inverse``: w_c = N / (C n_c). ``sqrt_inverse``: its square root. ``effective``: (1 - beta) / (1 - beta^n_c)
    (Cui et al., CVPR 2019). ``none``: all ones. Every scheme is rescaled so the mean weight over the training
    samples is 1 (so the loss keeps the scale of the unweighted one); a class with no sample gets 0.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels[labels >= 0], minlength=num_classes).astype(np.float64)[:num_classes]
    present = counts > 0
    w = np.zeros(num_classes)
    if scheme == "none":
        w[:] = 1.0
    elif scheme in ("inverse", "sqrt_inverse"):
        w[present] = counts.sum() / (num_classes * counts[present])
        if scheme == "sqrt_inverse":
            w = np.sqrt(w)
    elif scheme == "effective":
        w[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    else:
        raise ValueError(f"unknown class weight scheme '{scheme}'")
    total = counts.sum()
    if total > 0 and scheme != "none":
        w = w * total / (w * counts).sum()
    return torch.tensor(w, dtype=torch.float32)


def text_contrastive(
    embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric CLIP-style loss between B visual embeddings and the text embeddings of their labels.

    The B x B logits compare visual embedding i with the text embedding of item j's label; the target of row i and
    of column i is i (CLIP's ``arange``), and the loss is the mean of the visual-to-text (rows) and text-to-visual
    (columns) cross-entropies. Items with the same label have identical text columns, so this equals the
    multi-positive form that makes every same-label j a positive with a uniform soft target (SupCon-style): in each
    row the same-label logits are equal, and putting the target mass on one of them or spreading it over them gives
    the same loss and gradient. Same-label pairs are therefore neither pushed apart nor pulled together beyond their
    shared prompt.

    embeddings: [B, D] L2-normalised; text_embeddings: [C, D] (normalised here); labels: [B] in [0, C); ``valid``
    [B] bool: items that enter the loss (e.g. windows with at least one face; the others' embedding carries no
    visual evidence). No valid item: 0.
    """
    if valid is not None:
        embeddings, labels = embeddings[valid], labels[valid]
    if len(labels) == 0:
        return embeddings.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) intact
    text = F.normalize(text_embeddings.to(embeddings.dtype), dim=-1)[labels]  # [B, D]
    logits = logit_scale * embeddings @ text.t()  # [B, B]
    target = torch.arange(len(labels), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def total_loss(
    logits: torch.Tensor,
    embeddings: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor,
    text_embeddings: torch.Tensor,
    weights: torch.Tensor | None,
    contrastive_weight: float,
    label_smoothing: float = 0.0,
    has_face: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """L = L_cls + lambda L_con. Returns the parts as a dict with the sum under ``loss``. ``has_face`` [B]: windows
    with at least one face frame; only they enter the contrastive term (a window without a face has the projection
    bias as its embedding, the same for every label)."""
    weight = weights.to(logits.device, logits.dtype) if weights is not None else None
    cls = F.cross_entropy(
        logits.float(), labels, weight=None if weight is None else weight.float(), label_smoothing=label_smoothing
    )
    out = {"loss_cls": cls}
    if contrastive_weight > 0:
        con = text_contrastive(embeddings.float(), text_embeddings.float(), labels, logit_scale.float(), has_face)
        out["loss_con"] = con
        out["loss"] = cls + contrastive_weight * con
    else:
        out["loss"] = cls
    return out


def ccc_loss(predictions: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """1 - the mean over the D columns of Lin's concordance correlation coefficient of [N, D] ``predictions`` and
    ``targets`` (the VA score's own form; batch statistics), over the rows where ``valid`` [N] is True (default:
    targets without NaN). Fewer than two valid rows: 0 (a constant carries no correlation)."""
    if valid is None:
        valid = ~torch.isnan(targets).any(-1)
    x, y = predictions[valid].float(), targets[valid].float()
    if len(x) < 2:
        return predictions.sum() * 0.0
    mx, my = x.mean(0), y.mean(0)
    cov = ((x - mx) * (y - my)).mean(0)
    denom = x.var(0, unbiased=False) + y.var(0, unbiased=False) + (mx - my) ** 2
    return 1.0 - (2.0 * cov / denom.clamp_min(1e-8)).mean()


def au_pos_weights(targets: np.ndarray) -> torch.Tensor:
    """Per-unit positive weights for the AU loss: negatives / positives over the labelled rows of [N, K] 0/1
    targets (rows of -1 skipped); a unit without positives gets 1."""
    targets = np.asarray(targets)
    labelled = targets[(targets >= 0).all(1)]
    pos = (labelled == 1).sum(0).astype(np.float64)
    neg = (labelled == 0).sum(0).astype(np.float64)
    return torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1.0), 1.0), dtype=torch.float32)


def au_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of [N, K] AU logits against 0/1 ``targets``, positives weighted by ``pos_weight`` [K],
    averaged over the labelled rows (a row of -1 is unannotated and never changes the loss). No labelled row: 0."""
    valid = (targets >= 0).all(-1)
    if not valid.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(
        logits[valid].float(), targets[valid].float(), pos_weight=pos_weight, reduction="mean"
    )
