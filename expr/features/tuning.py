"""Which weights of a pretrained encoder train: none (frozen), all (full), the last N blocks, or LoRA adapters
(through ``peft``); their learning rates (layer-wise decay); gradient checkpointing; and the state that a checkpoint
of a tuned encoder holds (only what trains, never the base weights, which are reloaded from their source).

The encoder's *tower* is the part that tunes: the vision tower of an open_clip model (its text tower never does),
the whole model otherwise. Its *blocks* are the longest run of same-type layers (transformer layers, CNN stages):
``blocks.N`` of a timm ViT, ``transformer.resblocks.N`` of open_clip, ``encoder.layer.N`` of Hugging Face models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from expr.config import FinetuneConfig

METHODS = ("frozen", "full", "last_n", "lora")
# Parameters outside the blocks that come before them (the embedding), by a part of their name; every other
# parameter outside the blocks (final norm, projection) comes after them.
EMBEDDING_NAMES = ("embed", "cls_token", "class_embedding", "positional", "conv1", "ln_pre", "patch", "stem",
                   "reg_token", "register_tokens", "mask_token", "feature_extractor", "feature_projection",
                   "masked_spec")  # fmt: skip
# open_clip towers attend through nn.MultiheadAttention; under LoRA it becomes a LinearAttention (same weights), whose
# in_proj / out_proj are plain linear layers.
OPEN_CLIP_TARGETS = ("in_proj", "out_proj", "c_fc", "c_proj")


class TuningError(ValueError):
    """A tuning setting that does not fit the encoder; the message names the setting."""


@dataclass(frozen=True)
class Tuning:
    """How one encoder trains (a config's ``finetune`` section, for the image or the audio encoder)."""

    method: str = "frozen"
    last_n: int = 2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()
    grad_checkpointing: bool = False

    @classmethod
    def image(cls, cfg: FinetuneConfig) -> Tuning:
        return cls(cfg.method, *_shared(cfg))

    @classmethod
    def audio(cls, cfg: FinetuneConfig) -> Tuning:
        return cls(cfg.audio_method, *_shared(cfg))

    @property
    def trains(self) -> bool:
        return self.method != "frozen"

    def describe(self) -> dict:
        """What an export or a run's ``tuning.json`` records of it."""
        out = {"method": self.method}
        if self.method == "last_n":
            out["last_n"] = self.last_n
        if self.method == "lora":
            out.update(rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout,
                       targets=list(self.lora_targets))  # fmt: skip
        return out


def _shared(cfg: FinetuneConfig) -> tuple:
    return (cfg.last_n, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_targets),
            cfg.grad_checkpointing)  # fmt: skip


def tower(model: nn.Module, family: str) -> nn.Module:
    """The part of an encoder that tunes: an open_clip model's vision tower, any other model (or a vision tower
    alone) whole."""
    return model.visual if family == "open_clip" and hasattr(model, "visual") else model


def set_mode(part: nn.Module, tuning: Tuning, training: bool) -> None:
    """Train or eval mode of a tower. Frozen and LoRA-adapted towers keep the eval behaviour of their base weights
    (no dropout, fixed norm statistics, no layer drop); only LoRA's own dropout trains, and transformers layers that
    checkpoint activations are told they train (they checkpoint only then; their submodules keep eval behaviour).
    Fully or partly trained towers train; under ``last_n`` the batch norms of frozen blocks keep their statistics
    (dropout and drop-path stay active there, as in the usual partial fine-tuning)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    if tuning.method in ("full", "last_n"):
        part.train(training)
        if tuning.method == "last_n":
            trained = [n for n, p in part.named_parameters() if p.requires_grad]
            for name, m in part.named_modules():
                parent = name.rpartition(".")[0]
                block_trains = bool(parent) and any(t.startswith(parent + ".") for t in trained)
                if isinstance(m, _BatchNorm) and not block_trains and not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return
    part.eval()
    if training and tuning.method == "lora":
        for name, m in part.named_modules():
            if name.endswith("lora_dropout"):
                m.train()
            elif tuning.grad_checkpointing and _checkpointing_layer(m):
                m.training = True  # this module alone (its forward asks); its children keep their eval behaviour


def _checkpointing_layer(m: nn.Module) -> bool:
    """A transformers layer that checkpoints its own forward (not an encoder, whose training flag would also turn on
    layer drop)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # older transformers: the encoder checkpoints its layers
        return bool(getattr(m, "gradient_checkpointing", False))
    return isinstance(m, GradientCheckpointingLayer) and bool(getattr(m, "gradient_checkpointing", False))


def blocks(module: nn.Module) -> tuple[list[str], int]:
    """(the dotted names of the module's blocks, in order; how many parameters they hold): the longest-weighted run
    of consecutive children of one type, in a ModuleList / Sequential (transformer layers) or directly under one
    module (a ResNet's layer1 .. layer4), that holds the most parameters."""
    runs: list[tuple[list[str], int]] = []
    for name, parent in module.named_modules():
        children = list(parent.named_children())
        container = isinstance(parent, (nn.ModuleList, nn.Sequential))
        start = 0
        for i in range(1, len(children) + 1):  # runs of consecutive children of one type
            if i < len(children) and type(children[i][1]) is type(children[start][1]):
                continue
            run = children[start:i]
            if len(run) >= 2 or (container and len(run) == len(children)):
                size = sum(p.numel() for _, c in run for p in c.parameters())
                runs.append(([f"{name}.{n}" if name else n for n, _ in run], size))
            start = i
    if not runs or max(size for _, size in runs) <= 0:
        raise TuningError(f"{type(module).__name__} has no list of blocks to tune (finetune.method=last_n needs one)")
    # The run holding the most parameters; among runs holding nearly as many (a ConvNeXt's [stem, stages] against
    # its stages), the one with the most blocks.
    largest = max(size for _, size in runs)
    return max((r for r in runs if r[1] >= 0.9 * largest), key=lambda r: (len(r[0]), r[1]))


def layer_ids(module: nn.Module) -> tuple[dict[str, int], int]:
    """({parameter name: layer id}, number of blocks n): i + 1 for block i; 0 for what comes before the blocks (the
    embedding), n + 1 for what comes after them (final norm, projection), by the order the modules are registered
    in; parameters held directly by a module that contains the blocks go by name (class token, positional
    embedding: 0; a projection: n + 1). LoRA parameters take the layer of the weight they adapt."""
    names, _ = blocks(module)
    n = len(names)
    order = {name: i for i, (name, _) in enumerate(module.named_modules())}
    ids = {}
    for pname, _ in module.named_parameters():
        owner = pname.rpartition(".")[0]
        block = next((i for i, b in enumerate(names) if owner == b or owner.startswith(b + ".")), None)
        if block is not None:
            ids[pname] = block + 1
        elif owner == "" or names[0].startswith(owner + "."):  # held by a module that contains the blocks
            ids[pname] = 0 if any(key in pname for key in EMBEDDING_NAMES) else n + 1
        elif owner.endswith("encoder.layer_norm") and getattr(
            getattr(module, "config", None), "do_stable_layer_norm", 0
        ):
            ids[pname] = n + 1  # wav2vec2-large style: registered before the layers, applied after them
        else:
            ids[pname] = 0 if order[owner] < order[names[0]] else n + 1
    return ids, n


def apply(model: nn.Module, family: str, tuning: Tuning) -> nn.Module:
    """Set which of ``model``'s weights train (in place; LoRA adapters are injected into its tower) and return the
    model. Every weight outside the tower stays frozen."""
    if tuning.method not in METHODS:
        raise TuningError(f"finetune.method '{tuning.method}' is not one of {', '.join(METHODS)}")
    model.requires_grad_(False)
    part = tower(model, family)
    if tuning.method == "full":
        part.requires_grad_(True)
    elif tuning.method == "last_n":
        ids, n = layer_ids(part)
        if tuning.last_n > n:
            raise TuningError(f"finetune.last_n={tuning.last_n}, but {type(part).__name__} has {n} blocks")
        for name, p in part.named_parameters():
            p.requires_grad_(ids[name] > n - tuning.last_n)
    elif tuning.method == "lora":
        _inject_lora(part, family, tuning)
    if tuning.grad_checkpointing and tuning.trains:
        enable_checkpointing(part)
    return model


def _inject_lora(part: nn.Module, family: str, tuning: Tuning) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(tuning.lora_targets) or (list(OPEN_CLIP_TARGETS) if family == "open_clip" else "all-linear")
    config = LoraConfig(
        r=tuning.lora_rank, lora_alpha=tuning.lora_alpha, lora_dropout=tuning.lora_dropout, target_modules=targets
    )
    linear_attention(part)
    try:
        inject_adapter_in_model(config, part)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        names = sorted({n.split(".")[-1] for n, m in part.named_modules() if isinstance(m, nn.Linear)})
        raise TuningError(
            f"finetune.lora_targets {targets}: {str(e).splitlines()[0]} (linear layers of this model: "
            f"{', '.join(names[:12])})"
        ) from None
    for name, p in part.named_parameters():
        p.requires_grad_("lora_" in name)


class LinearAttention(nn.Module):
    """A self-attention ``nn.MultiheadAttention`` with its input and output projections as ``nn.Linear`` layers
    (sharing its weights), so LoRA adapts them as it adapts any linear layer. peft's own support of
    ``nn.MultiheadAttention`` merges the adapter into the base weights for every forward and out again, which drifts
    the frozen weights by rounding; this keeps them bit-identical. Same call and outputs as the module it replaces
    (``need_weights=False``)."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise TuningError("LoRA on attention supports plain self-attention (nn.MultiheadAttention defaults)")
        d = mha.embed_dim
        self.num_heads, self.batch_first, self.dropout = mha.num_heads, mha.batch_first, mha.dropout
        self.in_proj = nn.Linear(d, 3 * d, bias=mha.in_proj_bias is not None)
        self.in_proj.weight = mha.in_proj_weight
        if mha.in_proj_bias is not None:
            self.in_proj.bias = mha.in_proj_bias
        self.out_proj = mha.out_proj

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, key_padding_mask=None,
                average_attn_weights=True, is_causal=False):  # fmt: skip
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise TuningError("LinearAttention: self-attention only (query, key and value one tensor)")
        if key_padding_mask is not None or need_weights or is_causal:
            raise TuningError("LinearAttention: no key_padding_mask, attention weights or is_causal")
        if query.dim() == 2:  # unbatched [L, E]
            return self(query.unsqueeze(1 if not self.batch_first else 0), attn_mask=attn_mask)[0].squeeze(
                1 if not self.batch_first else 0
            ), None
        x = query if self.batch_first else query.transpose(0, 1)
        b, n, d = x.shape
        q, k, v = self.in_proj(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None:  # nn.MultiheadAttention: True = masked, [L, S] or [B * heads, L, S]
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.reshape(b, self.num_heads, *attn_mask.shape[1:])
            attn_mask = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask.to(q.dtype)  # SDPA: True = attend
        p = self.dropout if self.training else 0.0
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, d))
        return (out if self.batch_first else out.transpose(0, 1)), None


def linear_attention(part: nn.Module) -> None:
    """Every ``nn.MultiheadAttention`` of ``part`` as a :class:`LinearAttention` (in place)."""
    for name, module in list(part.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            parent, _, attr = name.rpartition(".")
            setattr(part.get_submodule(parent) if parent else part, attr, LinearAttention(module))


def enable_checkpointing(part: nn.Module) -> None:
    """Gradient checkpointing of a tower (timm and open_clip: ``set_grad_checkpointing``; transformers:
    ``gradient_checkpointing_enable``)."""
    if hasattr(part, "set_grad_checkpointing"):
        part.set_grad_checkpointing(True)
    elif hasattr(part, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
        part.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(part, "gradient_checkpointing_enable"):
        part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise TuningError(f"finetune.grad_checkpointing: {type(part).__name__} does not support it")


def param_groups(part: nn.Module, prefix: str, lr: float, layer_decay: float, weight_decay: float) -> list[dict]:
    """Optimizer groups of a tower's trainable parameters, named as in the full model (``prefix`` + name): one
    learning rate per layer (``lr x layer_decay^(n + 1 - id)``), weight decay on matrices only."""
    ids, n = layer_ids(part) if layer_decay != 1.0 else ({}, 0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in part.named_parameters():
        if not p.requires_grad:
            continue
        layer = ids.get(name, n + 1)
        decay = p.ndim >= 2
        group = groups.setdefault(
            (layer, decay),
            {"params": [], "lr": lr * layer_decay ** (n + 1 - layer), "weight_decay": weight_decay if decay else 0.0,
             "name": f"{prefix}layer{layer}"},
        )  # fmt: skip
        group["params"].append(p)
    return list(groups.values())


def tuned_keys(module: nn.Module) -> set[str]:
    """The state-dict keys of a pretrained module that training changes: its trainable parameters and the buffers
    of the layers that own one (a trained block's batch-norm statistics)."""
    keys = set()
    for prefix, layer in module.named_modules():
        own = [(n, p) for n, p in layer.named_parameters(recurse=False)]
        trains = any(p.requires_grad for _, p in own)
        names = [n for n, p in own if p.requires_grad]
        if trains:
            names += [n for n, _ in layer.named_buffers(recurse=False)]
        keys |= {f"{prefix}.{n}" if prefix else n for n in names}
    return keys & set(module.state_dict().keys())


def trainable_keys(model: nn.Module) -> set[str]:
    """The state-dict keys a checkpoint of ``model`` holds: every key, less the pretrained parts' (the submodules
    named in ``model.pretrained``) keys that training does not change (:func:`tuned_keys`); those are reloaded from
    their source."""
    keys = set(model.state_dict().keys())
    for part in getattr(model, "pretrained", ()):
        sub = model.get_submodule(part)
        keys -= {f"{part}.{k}" for k in set(sub.state_dict().keys()) - tuned_keys(sub)}
    return keys


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full weights of ``model`` with its LoRA adapters merged into the weights they adapt, under the base
    model's own keys (in place: the model keeps the merged weights)."""
    from peft.tuners.lora import LoraLayer

    for m in model.modules():
        if isinstance(m, LoraLayer) and not m.merged:
            m.merge()
    state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    for name, m in model.named_modules():  # a LinearAttention's input projection under nn.MultiheadAttention's keys
        if isinstance(m, LinearAttention):
            for kind in ("weight", "bias"):
                if f"{name}.in_proj.{kind}" in state:
                    state[f"{name}.in_proj_{kind}"] = state.pop(f"{name}.in_proj.{kind}")
    return state


__all__ = ["Tuning", "TuningError", "apply", "blocks", "layer_ids", "param_groups", "trainable_keys", "tuned_keys",
           "merged_state", "tower", "set_mode", "LinearAttention"]  # fmt: skip
