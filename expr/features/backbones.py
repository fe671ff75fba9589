"""Frozen backbones: load CLIP (open_clip) and encode; nothing is trained here.

``pretrained`` is an open_clip tag (``openai``), a local checkpoint file, or ``random``: weights drawn from a
fixed seed, identical in every process and every later command, for smoke runs and tests offline.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

RANDOM = "random"
RANDOM_SEED = 20240601


class BackboneError(RuntimeError):
    """Backbone weights that cannot be loaded; the message says how to provide them."""


def cache_root() -> Path:
    return Path(os.environ.get("EXPR_CACHE_DIR", Path.home() / ".cache" / "expr"))


def load_clip(name: str = "ViT-B-32", pretrained: str = "openai", device: str | torch.device = "cpu"):
    """Return (model, preprocess, tokenizer) of a frozen open_clip model in eval mode."""
    import open_clip

    if pretrained == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    else:
        if os.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors")):
            if not Path(pretrained).is_file():
                raise BackboneError(f"CLIP checkpoint not found: {pretrained}")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
        except Exception as e:  # noqa: BLE001 - hub/network errors come in many types; all mean "not available"
            raise BackboneError(
                f"CLIP weights {name}/{pretrained} are not available ({type(e).__name__}). Download them once on a "
                f"machine with internet (`python -c \"import open_clip; open_clip.create_model('{name}', "
                f"pretrained='{pretrained}')\"`, cached under ~/.cache/huggingface), or pass a local checkpoint with "
                f"--backbones.clip_pretrained PATH, or use 'random' for a smoke run."
            ) from None
    model = model.to(device).eval().requires_grad_(False)
    return model, preprocess, open_clip.get_tokenizer(name)


def prompts(classes: list[str] | tuple[str, ...], template: str) -> list[str]:
    """``template`` with ``{emotion}`` replaced by each lower-cased class name."""
    return [template.format(emotion=c.lower()) for c in classes]


@torch.no_grad()
def encode_text(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """[len(texts), D] L2-normalised CLIP text embeddings (fp32, CPU)."""
    device = next(model.parameters()).device
    emb = model.encode_text(tokenizer(texts).to(device)).float()
    return torch.nn.functional.normalize(emb, dim=-1).cpu()


def text_embeddings(classes, template: str, clip: str, pretrained: str) -> torch.Tensor:
    """The prompts' CLIP text embeddings, computed once and cached under ``$EXPR_CACHE_DIR/text``."""
    from safetensors.torch import load_file, save_file

    identity = {"classes": list(classes), "template": template, "clip": clip, "pretrained": pretrained}
    if Path(pretrained).is_file():
        stat = Path(pretrained).stat()
        identity["checkpoint"] = [str(Path(pretrained).resolve()), stat.st_size, int(stat.st_mtime)]
    key = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root() / "text" / f"{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["text"]
    model, _, tokenizer = load_clip(clip, pretrained)
    emb = encode_text(model, tokenizer, prompts(classes, template))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"text": emb.contiguous()}, str(tmp), metadata={k: json.dumps(v) for k, v in identity.items()})
    os.replace(tmp, path)
    return emb
