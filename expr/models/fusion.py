"""The trainable head of the paper: visual TCN, audio adapter, bi-directional cross-attention, pooling, MLP.

Pure ``nn.Module`` code built from :class:`expr.config.ModelConfig`; no accelerate, datasets or optuna here.

Masks are ``True`` where a position holds real data (a frame with a face, an audio frame inside the video).
Masked positions are zeroed before the TCN, never used as attention keys, and never pooled, so changing their
values cannot change the output. A window with no valid position on one side (a video without audio, a window
without any face) gets a zero attention update and a zero pooled vector for that side, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from expr.config import ModelConfig
from expr.tasks import OTHER_TASKS, TASKS


class CausalConv1d(nn.Module):
    """A dilated 1-D convolution that only sees the past: left padding of (k - 1) * dilation."""

    def __init__(self, width: int, kernel: int, dilation: int, use_weight_norm: bool):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        conv = nn.Conv1d(width, width, kernel, dilation=dilation)
        self.conv = weight_norm(conv) if use_weight_norm else conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, T]
        return self.conv(F.pad(x, (self.pad, 0)))  # [B, C, T]


class TemporalBlock(nn.Module):
    """Bai, Kolter & Koltun (2018): two dilated causal convs with ReLU and dropout, plus a residual."""

    def __init__(self, width: int, kernel: int, dilation: int, dropout: float, use_weight_norm: bool):
        super().__init__()
        self.net = nn.Sequential(
            CausalConv1d(width, kernel, dilation, use_weight_norm),
            nn.ReLU(),
            nn.Dropout(dropout),
            CausalConv1d(width, kernel, dilation, use_weight_norm),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, T]
        return F.relu(x + self.net(x))


class TCN(nn.Module):
    """``blocks`` temporal blocks with dilation 2^i; receptive field 1 + 2 (k - 1)(2^blocks - 1) frames."""

    def __init__(self, width: int, blocks: int, kernel: int, dropout: float, use_weight_norm: bool):
        super().__init__()
        self.blocks = nn.ModuleList(TemporalBlock(width, kernel, 2**i, dropout, use_weight_norm) for i in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, C]
        y = x.transpose(1, 2)  # [B, C, T]
        for block in self.blocks:
            y = block(y)
        return y.transpose(1, 2)  # [B, T, C]


class CrossAttention(nn.Module):
    """H = LN(Q + MHA(Q, KV, KV)) with key padding; queries with no valid key get a zero update."""

    spelled_out = False
    """Attend through :meth:`_attend` (set while exporting to ONNX) instead of ``nn.MultiheadAttention``."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        # query: [B, Tq, D]; kv: [B, Tk, D]; kv_mask: [B, Tk], True = valid
        empty = ~kv_mask.any(dim=1)  # [B]
        # A row with no valid key would softmax over nothing (NaN). Let it attend to position 0 (zeroed by the
        # caller) and drop its update below, so the result is LN(query). Not in place, so ONNX exports it.
        padding = torch.cat([~kv_mask[:, :1] & ~empty[:, None], ~kv_mask[:, 1:]], dim=1)
        if self.spelled_out:
            update = self._attend(query, kv, ~padding)  # [B, Tq, D]
        else:
            update, _ = self.attn(query, kv, kv, key_padding_mask=padding, need_weights=False)  # [B, Tq, D]
        update = update.masked_fill(empty[:, None, None], 0.0)
        return self.norm(query + update)  # [B, Tq, D]

    def _attend(self, query: torch.Tensor, kv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``self.attn(query, kv, kv, key_padding_mask=~valid)`` spelled out with its own weights (the same values
        on the inputs tested), for the ONNX exporter, whose trace of ``nn.MultiheadAttention`` fixes the key length.
        Training keeps ``nn.MultiheadAttention``: its packed key-value projection rounds gradients differently."""
        a, (B, Tq, D) = self.attn, query.shape
        H = a.num_heads
        w_q, w_k, w_v = a.in_proj_weight.chunk(3)
        b_q, b_k, b_v = a.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).view(B, Tq, H, D // H).transpose(1, 2)
        k = F.linear(kv, w_k, b_k).view(B, -1, H, D // H).transpose(1, 2)
        v = F.linear(kv, w_v, b_v).view(B, -1, H, D // H).transpose(1, 2)
        dropout = a.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :], dropout_p=dropout)
        return a.out_proj(out.transpose(1, 2).reshape(B, Tq, D))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of the valid positions; zeros where none is valid. x: [B, T, D], mask: [B, T] -> [B, D]."""
    weights = mask.to(x.dtype).unsqueeze(-1)  # [B, T, 1]
    total = (x * weights).sum(dim=1)  # [B, D]
    count = weights.sum(dim=1).clamp(min=1.0)  # [B, 1]
    return total / count


@dataclass
class FusionOutput:
    logits: torch.Tensor
    """[B, num_classes] class scores."""
    visual_embedding: torch.Tensor
    """[B, text_dim] pooled visual representation after fusion, projected to the CLIP text space, L2-normalised."""
    logit_scale: torch.Tensor
    """Scalar contrastive logit scale (already exponentiated and clamped)."""
    va: torch.Tensor | None = None
    """[B, 2] valence and arousal in [-1, 1] (a head trained with the va task)."""
    au: torch.Tensor | None = None
    """[B, 12] action-unit logits (a head trained with the au task)."""
    log_vars: torch.Tensor | None = None
    """[tasks] learned log-variances of the tasks' losses (``loss.task_balance uncertainty``), in ``tasks`` order."""

    def scores(self, tasks=("expr",)) -> dict[str, torch.Tensor]:
        """What each of ``tasks`` predicts for the windows, float32: ``expr`` class probabilities [B, C], ``va``
        valence and arousal [B, 2], ``au`` action-unit probabilities [B, 12]."""
        raw = {"expr": self.logits, "va": self.va, "au": self.au}
        return {t: ACTIVATIONS[TASKS[t].kind](raw[t].float()) for t in tasks}


TASK_OUTPUTS = {name: t.width for name, t in OTHER_TASKS.items()}
"""The outputs of each task's head beside the expression classifier."""
ACTIVATIONS = {"classes": lambda x: x.softmax(-1), "values": lambda x: x, "units": torch.sigmoid}
"""From a task's raw outputs to what it predicts (``values`` heads end in tanh already)."""


class FusionHead(nn.Module):
    """Visual TCN + audio adapter + cross-attention fusion + masked mean pooling + MLP classifier; with ``tasks``
    ``va`` / ``au``, one more MLP of the classifier's shape per task on the same pooled representation."""

    def __init__(self, cfg: ModelConfig, num_classes: int, tasks=("expr",), task_log_vars: bool = False):
        """``task_log_vars``: learn a log-variance per task (Kendall et al. 2018's uncertainty weighting)."""
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.visual_in = nn.Identity() if cfg.visual_dim == d else nn.Linear(cfg.visual_dim, d)
        self.tcn = TCN(d, cfg.tcn_blocks, cfg.tcn_kernel, cfg.dropout, cfg.tcn_weight_norm)
        self.audio_adapter = nn.Sequential(
            nn.Linear(cfg.audio_dim, d), nn.LayerNorm(d), nn.ReLU(), nn.Dropout(cfg.dropout)
        )
        self.v2a = CrossAttention(d, cfg.heads, cfg.dropout) if cfg.fusion in ("bidirectional", "v2a") else None
        self.a2v = CrossAttention(d, cfg.heads, cfg.dropout) if cfg.fusion in ("bidirectional", "a2v") else None
        self.classifier = self._mlp(2 * d, num_classes)
        self.task_heads = nn.ModuleDict({t: self._mlp(2 * d, n) for t, n in TASK_OUTPUTS.items() if t in tasks})
        self.text_projection = nn.Linear(d, cfg.text_dim)
        # Shape [1], not a 0-dim scalar: DeepSpeed broadcasts parameters through a byte view, which 0-dim refuses.
        self.logit_scale = nn.Parameter(
            torch.full((1,), float(cfg.logit_scale_init)), requires_grad=cfg.learnable_logit_scale
        )
        self.task_log_vars = nn.Parameter(torch.zeros(len(tasks))) if task_log_vars else None

    def _mlp(self, width: int, outputs: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for hidden in self.cfg.mlp_hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(self.cfg.mlp_dropout)]
            width = hidden
        layers.append(nn.Linear(width, outputs))
        return nn.Sequential(*layers)

    def forward(
        self,
        visual: torch.Tensor,
        visual_mask: torch.Tensor,
        audio: torch.Tensor,
        audio_mask: torch.Tensor,
    ) -> FusionOutput:
        # visual: [B, T, 512], visual_mask: [B, T]; audio: [B, Ta, 768], audio_mask: [B, Ta]
        visual_mask = visual_mask.bool()
        audio_mask = audio_mask.bool()
        if self.cfg.modalities == "visual":
            audio_mask = torch.zeros_like(audio_mask)
        elif self.cfg.modalities == "audio":
            visual_mask = torch.zeros_like(visual_mask)
        # Zero masked inputs so the causal convolutions never see what is behind a mask.
        v = visual * visual_mask.unsqueeze(-1).to(visual.dtype)
        fv = self.tcn(self.visual_in(v))  # [B, T, D]
        fa = self.audio_adapter(audio)  # [B, Ta, D]
        fv = fv * visual_mask.unsqueeze(-1).to(fv.dtype)
        fa = fa * audio_mask.unsqueeze(-1).to(fa.dtype)
        hv = self.v2a(fv, fa, audio_mask) if self.v2a is not None else fv  # [B, T, D]
        ha = self.a2v(fa, fv, visual_mask) if self.a2v is not None else fa  # [B, Ta, D]
        zv = masked_mean(hv, visual_mask)  # [B, D]
        za = masked_mean(ha, audio_mask)  # [B, D]
        z = torch.cat([zv, za], dim=-1)  # [B, 2D]
        logits = self.classifier(z)  # [B, C]
        embedding = F.normalize(self.text_projection(zv), dim=-1)  # [B, text_dim]
        scale = self.logit_scale.exp().clamp(max=100.0).squeeze(0)  # scalar
        va = torch.tanh(self.task_heads["va"](z)) if "va" in self.task_heads else None
        au = self.task_heads["au"](z) if "au" in self.task_heads else None
        log_vars = self.task_log_vars * 1.0 if self.task_log_vars is not None else None  # through forward, for DDP
        return FusionOutput(logits=logits, visual_embedding=embedding, logit_scale=scale, va=va, au=au,
                            log_vars=log_vars)  # fmt: skip


def receptive_field(cfg: ModelConfig) -> int:
    """Frames the last TCN output can see: 1 + 2 (k - 1)(2^blocks - 1)."""
    return 1 + 2 * (cfg.tcn_kernel - 1) * (2**cfg.tcn_blocks - 1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["FusionHead", "FusionOutput", "TCN", "CrossAttention", "masked_mean", "receptive_field"]
