"""The Hugging Face speech family (wav2vec2, HuBERT, WavLM, data2vec-audio, the Whisper encoder): 16 kHz mono ->
50 feature frames per second, over a whole track in overlapping chunks (:class:`~expr.features.encoding.AudioEncoder`),
the hidden state or range of hidden states that ``layer`` names. The paper's Wav2Vec2-Base
(``hf:facebook/wav2vec2-base``) loads here too (:func:`expr.features.backbones.load_wav2vec2`)."""

from __future__ import annotations

from expr.features.encoding import AudioEncoder, EncoderError, seeded
from expr.features.hf_models import _hf_model, _hf_source, cached_first, hf_config
from expr.features.spec import EncoderSpec


def load_hf_audio(spec: EncoderSpec, device, chunk_seconds: float, context_seconds: float) -> AudioEncoder:
    config = hf_config(spec)
    model, normalize, mel = speech_model(spec, config)
    model = model.to(device).eval().requires_grad_(False)
    return AudioEncoder(model, normalize, chunk_seconds, context_seconds, spec, mel)


def speech_model(spec: EncoderSpec, config) -> tuple:
    """(model, normalize, mel) of an hf speech spec built with ``config`` (:func:`hf_config`): the speech encoder (on
    the CPU, not yet frozen), whether its input is standardised (zero mean, unit variance: its feature extractor's
    ``do_normalize``), and Whisper's log-mel feature extractor (None for the wav2vec2 family)."""
    import transformers

    mel = None
    if config.model_type == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if spec.random:  # the encoder alone: no decoder to build
            with seeded():
                model = WhisperEncoder(config)
        else:
            model = _hf_model(spec, config).encoder
        mel = transformers.WhisperFeatureExtractor(feature_size=config.num_mel_bins)
        normalize = False
    elif hasattr(config, "conv_kernel"):
        source, local = _hf_source(spec)
        try:
            extractor = cached_first(transformers.AutoFeatureExtractor.from_pretrained, source, local or spec.random)
            normalize = bool(extractor.do_normalize)
        except Exception:  # noqa: BLE001 - no preprocessor config: the wav2vec2-base convention
            normalize = True
    else:
        raise EncoderError(
            f"encoder '{spec}': a {config.model_type} model is not a speech encoder expr knows (wav2vec2, HuBERT, "
            f"WavLM, data2vec-audio, Whisper)"
        )
    if mel is None:
        model = _hf_model(spec, config)
    return model, normalize, mel
