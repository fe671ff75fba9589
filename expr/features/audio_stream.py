"""A speech encoder over audio that arrives in pieces (``expr predict --stream``), and the same encoding of a whole
track (``predict.audio_chunk``), so a file predicted offline gets the features its stream got.

:class:`~expr.features.encoding.AudioEncoder` encodes a track in chunks of 30 s, each with 2 s of context on both
sides, after normalising the whole track: a stream cannot wait 32 s for a feature nor know the whole track's level.
Here the chunks are short (``predict.audio_chunk`` seconds) and each piece the encoder reads (a chunk and its
``predict.audio_context`` seconds on each side, or the track's edge) is normalised on its own. The features of a chunk
are final once the audio to the end of its right context has arrived, so a feature waits at most one chunk and one
context for its audio.
"""

from __future__ import annotations

import numpy as np
import torch


class AudioStream:
    """Feed 16 kHz mono audio in order (:meth:`push`, then :meth:`close`); each returns the features [n, dim] of the
    output frames that became final, in order (output frame j covers samples ``[stride j, stride j + receptive)`` of
    the audio pushed, as the encoder places them)."""

    def __init__(self, encoder, chunk_seconds: float, context_seconds: float):
        self.encoder = encoder
        self.chunk = max(1, round(chunk_seconds * 16_000 / encoder.stride))  # output frames per chunk
        self.context = max(0, round(context_seconds * 16_000 / encoder.stride))
        self.samples = np.zeros(0, np.float32)  # the audio from sample ``base`` on that later chunks still read
        self.base = 0
        self.total = 0  # samples pushed
        self.done = 0  # output frames given out

    @property
    def held(self) -> int:
        """Samples held (bounded by a chunk and two contexts)."""
        return len(self.samples)

    def push(self, wave: np.ndarray) -> np.ndarray:
        self.samples = np.concatenate([self.samples, np.asarray(wave, np.float32).reshape(-1)])
        self.total += len(wave)
        out = []
        known = self.encoder.num_frames(self.total)  # output frames whose samples have all arrived
        while self.done + self.chunk + self.context <= known:
            out.append(self._encode(self.done + self.chunk, self.done + self.chunk + self.context))
        self._trim()
        return self._stack(out)

    def close(self) -> np.ndarray:
        out, total = [], self.encoder.num_frames(self.total)
        while self.done < total:
            end = min(total, self.done + self.chunk)
            out.append(self._encode(end, min(total, end + self.context)))
        self._trim()
        return self._stack(out)

    def _encode(self, end: int, right: int) -> np.ndarray:
        """The features of output frames ``done .. end - 1``, read with the audio of frames up to ``right``."""
        enc, c0 = self.encoder, self.done
        f0 = max(0, c0 - self.context)
        s0, s1 = f0 * enc.stride, min(self.total, (right - 1) * enc.stride + enc.receptive)
        piece = self.samples[s0 - self.base : s1 - self.base]
        if enc.normalize:
            piece = (piece - piece.mean()) / np.sqrt(piece.var() + 1e-7)
        with torch.no_grad():
            hidden = enc._hidden(piece).float().cpu().numpy()
        self.done = end
        return hidden[c0 - f0 : end - f0].astype(np.float16)

    def _trim(self) -> None:
        keep = max(0, self.done - self.context) * self.encoder.stride  # the first sample a later chunk reads
        if keep > self.base:
            self.samples = self.samples[keep - self.base :].copy()
            self.base = keep

    def _stack(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, self.encoder.dim), np.float16)


def encode_in_pieces(encoder, wave: np.ndarray, chunk_seconds: float, context_seconds: float) -> np.ndarray:
    """A whole track's features as :class:`AudioStream` gives them (the offline side of ``predict.audio_chunk``)."""
    stream = AudioStream(encoder, chunk_seconds, context_seconds)
    return np.concatenate([stream.push(wave), stream.close()])
