"""Online mode's encoders: CLIP's image tower and Wav2Vec2 run inside the training step, turning a batch of decoded
face crops and raw audio into the same features the cache holds, for the same :class:`FusionHead`.

Frozen (the paper's design), they live outside the module that accelerate/DeepSpeed prepare, so they are not in the
optimizer, not wrapped by DDP and not partitioned by ZeRO; on a GPU they run in fp16. Tuned (``finetune.method`` /
``finetune.audio_method``: LoRA adapters or the last blocks), they train with the head inside one
:class:`OnlineModel`, in fp32 under the run's mixed precision; its checkpoints hold only what trains.
"""

from __future__ import annotations

import torch
from torch import nn

from expr.data.store import StoreError
from expr.features.backbones import load_clip, load_wav2vec2, split_preprocess
from expr.features.encoders import conv_geometry
from expr.features.tuning import Tuning, apply, set_mode


class OnlineEncoders(nn.Module):
    """``forward(pixels, visual_mask, wave, wave_mask, wave_length) -> (visual, audio, audio_mask)``.

    pixels [B, T, 3, S, S] uint8 (open_clip's PIL steps already applied), visual_mask [B, T]; wave [B, L] float
    16 kHz samples of each window (zero-padded to the longest), wave_mask [B, L] (False where the track has no
    audio, and in the padding), wave_length [B] each window's own sample count. Returns visual [B, T, Dv] fp16
    (zeros where masked: only frames with a face are encoded), audio [B, Ta, Da] fp16 and audio_mask [B, Ta].
    Wav2Vec2 runs over each window's own audio, standardised per window like the checkpoint's feature extractor,
    and on the windows of each length apart: Wav2Vec2-Base's group norm spans time, so batch padding would change
    every feature of the shorter windows. An output frame is valid when the centre of its receptive field holds
    real audio; frames past a window's own output length are masked."""

    def __init__(
        self,
        clip_visual: nn.Module,
        mean,
        std,
        wav2vec2: nn.Module,
        normalize_audio: bool = True,
        image_batch: int = 512,
    ):
        super().__init__()
        self.clip_visual = clip_visual.eval().requires_grad_(False)
        self.wav2vec2 = wav2vec2.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.normalize_audio = normalize_audio
        self.image_batch = image_batch
        self.visual_dim = int(clip_visual.output_dim)
        self.audio_dim = int(wav2vec2.config.hidden_size)
        self.audio_stride, self.audio_receptive = conv_geometry(wav2vec2.config)
        self.tuning = (Tuning(), Tuning())

    @property
    def trains(self) -> bool:
        return any(t.trains for t in self.tuning)

    def tune(self, image: Tuning, audio: Tuning) -> OnlineEncoders:
        """Make the image tower and/or Wav2Vec2 trainable as ``image`` / ``audio`` say (in place). A tuned
        Wav2Vec2 drops no layers and masks no time steps: its features stay those that inference computes."""
        self.tuning = (image, audio)
        apply(self.clip_visual, "open_clip", image)
        apply(self.wav2vec2, "hf", audio)
        if audio.trains:
            self.wav2vec2.config.layerdrop, self.wav2vec2.config.apply_spec_augment = 0.0, False
        return self

    def train(self, mode: bool = True):
        """Frozen weights keep their eval behaviour (no dropout, fixed norms); see :func:`set_mode`."""
        super().train(False)
        set_mode(self.clip_visual, self.tuning[0], mode)
        set_mode(self.wav2vec2, self.tuning[1], mode)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.clip_visual.parameters()).dtype

    def encode_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An online batch (``pixels``, ``visual_mask``, ``wave``, ``wave_mask``) with the head's inputs added:
        ``visual``, ``audio``, ``audio_mask``, as a cached batch has them."""
        visual, audio, audio_mask = self(
            batch["pixels"], batch["visual_mask"], batch["wave"], batch["wave_mask"], batch.get("wave_length")
        )
        return {**batch, "visual": visual, "audio": audio, "audio_mask": audio_mask}

    def forward(self, pixels, visual_mask, wave, wave_mask, wave_length=None):
        with torch.set_grad_enabled(self.trains and torch.is_grad_enabled()):
            return self._encode(pixels, visual_mask, wave, wave_mask, wave_length)

    def _encode(self, pixels, visual_mask, wave, wave_mask, wave_length=None):
        device, dtype = self.mean.device, self.dtype
        B, T = visual_mask.shape
        out_dtype = torch.float32 if self.trains else torch.float16  # tuned: gradients flow through the features
        visual = torch.zeros((B * T, self.visual_dim), dtype=out_dtype, device=device)
        keep = visual_mask.reshape(-1).to(device)
        images = pixels.reshape(B * T, *pixels.shape[2:])[keep.to(pixels.device)].to(device, non_blocking=True)
        out = []
        for i in range(0, len(images), self.image_batch):
            x = (images[i : i + self.image_batch].float() / 255.0 - self.mean) / self.std
            out.append(self.clip_visual(x.to(dtype)).to(out_dtype))
        if out:
            visual = visual.index_put((keep,), torch.cat(out))
        audio, audio_mask = self.encode_audio(wave, wave_mask, wave_length)
        return visual.view(B, T, self.visual_dim), audio, audio_mask

    def encode_audio(self, wave, wave_mask, wave_length=None):
        """Wav2Vec2 features [B, Ta, Da] fp16 and their mask [B, Ta] of each window's own audio (see the class)."""
        device, dtype = self.mean.device, self.dtype
        out_dtype = torch.float32 if self.trains else torch.float16
        wave = wave.to(device, torch.float32, non_blocking=True)
        wave_mask = wave_mask.to(device, non_blocking=True)
        B, L = wave.shape
        lengths = torch.full((B,), L, dtype=torch.int64) if wave_length is None else wave_length.cpu()
        parts = {}
        for length in sorted(set(lengths.tolist())):
            rows = torch.nonzero(lengths == length).flatten().to(device)
            w, m = wave[rows, :length], wave_mask[rows, :length]
            mf = m.float()
            if self.normalize_audio:  # per window over its real samples, as Wav2Vec2FeatureExtractor does per input
                count = mf.sum(1, keepdim=True).clamp(min=1.0)
                mu = (w * mf).sum(1, keepdim=True) / count
                var = (((w - mu) * mf) ** 2).sum(1, keepdim=True) / count
                w = (w - mu) / torch.sqrt(var + 1e-7)
            hidden = self.wav2vec2((w * mf).to(dtype)).last_hidden_state.to(out_dtype)  # [b, Ta, Da]
            centre = torch.arange(hidden.shape[1], device=device) * self.audio_stride + self.audio_receptive // 2
            parts[length] = (rows, hidden, m[:, centre.clamp(max=length - 1)])
        ta = max(h.shape[1] for _, h, _ in parts.values())
        audio = torch.zeros((B, ta, self.audio_dim), dtype=out_dtype, device=device)
        audio_mask = torch.zeros((B, ta), dtype=torch.bool, device=device)
        for rows, hidden, mask in parts.values():
            audio[rows, : hidden.shape[1]] = hidden * mask.unsqueeze(-1).to(hidden.dtype)
            audio_mask[rows, : hidden.shape[1]] = mask
        return audio, audio_mask


def load_encoders(
    clip: str, clip_pretrained: str, wav2vec2: str, device, tuning: tuple[Tuning, Tuning] | None = None
) -> tuple[OnlineEncoders, object]:
    """The encoders of a store's recorded backbones on ``device`` (frozen: fp16 on a GPU; ``tuning``: made trainable
    as it says, fp32), and the PIL part of open_clip's preprocessing for the data-loading workers."""

    model, preprocess, _ = load_clip(clip, clip_pretrained, "cpu")
    image_transform, mean, std = split_preprocess(preprocess)
    w2v, normalize = load_wav2vec2(wav2vec2, "cpu")
    encoders = OnlineEncoders(model.visual, mean, std, w2v, normalize)
    del model  # the text tower is not needed: the prompts' embeddings come from the store
    if tuning is not None:
        encoders.tune(*tuning)
    device = torch.device(device)
    encoders = encoders.to(device)
    if device.type == "cuda" and not encoders.trains:
        encoders.clip_visual.half()
        encoders.wav2vec2.half()
    return encoders, image_transform


def store_encoders(store, device, tuning: tuple[Tuning, Tuning] | None = None) -> tuple[OnlineEncoders, object]:
    """:func:`load_encoders` of the backbones a store was prepared with (``store.json``)."""

    recorded = store.meta.get("backbones", {})
    if "clip_pretrained" not in recorded or "wav2vec2" not in recorded:
        raise StoreError(f"{store.path}: store.json does not say which backbones made it; prepare it with expr prepare")
    return load_encoders(recorded["clip"], recorded["clip_pretrained"], recorded["wav2vec2"], device, tuning)


class OnlineModel(nn.Module):
    """Tuned encoders and the head as one module (what accelerate prepares when an encoder trains):
    ``forward(pixels, visual_mask, wave, wave_mask, wave_length) -> FusionOutput``. Only what trains is saved:
    ``pretrained`` names the encoders (:func:`expr.features.tuning.trainable_keys`)."""

    pretrained = ("encoders",)

    def __init__(self, encoders: OnlineEncoders, head: nn.Module):
        super().__init__()
        self.encoders, self.head = encoders, head

    def forward(self, pixels, visual_mask, wave, wave_mask, wave_length=None):
        visual, audio, audio_mask = self.encoders(pixels, visual_mask, wave, wave_mask, wave_length)
        dtype = next(self.head.parameters()).dtype  # fp16 / bf16 under DeepSpeed, else fp32 (autocast does the rest)
        dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
        return self.head(visual.to(dtype), visual_mask.to(visual.device), audio.to(dtype), audio_mask)


__all__ = ["OnlineEncoders", "OnlineModel", "load_encoders", "store_encoders"]
