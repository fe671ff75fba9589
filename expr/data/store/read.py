"""Reading a store: :class:`FrameStore`, its tables as numpy arrays and the feature sets it is asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from expr.data.store.columns import ConcatColumns, _fixed_to_numpy, _in_ram
from expr.data.store.format import (
    DEFAULT_AUDIO,
    DEFAULT_VISUAL,
    MTL_LABELS,
    READABLE_VERSIONS,
    TASK_LABELS,
    StoreError,
    video_name,
)
from expr.data.store.span import audio_overlap
from expr.data.store.verify import StoreChecks, check_files, read_header


class FrameStore(StoreChecks):
    """A store as flat numpy arrays (features memory-mapped, the rest in memory), with per-video offsets, reading
    the feature sets it is asked for: ``visual`` (one name, a comma-separated list or a sequence, concatenated per
    frame) and ``audio`` (one name); None: the store's defaults."""

    def __init__(
        self,
        path: str | Path,
        in_memory: bool = False,
        visual: str | list[str] | tuple[str, ...] | None = None,
        audio: str | None = None,
    ):
        """``in_memory``: copy the feature arrays into RAM (faster first-touch random gathers, one copy per process)
        instead of mapping the store's files (opens in seconds, shared by every process through the page cache)."""
        import datasets

        self.path = Path(path)
        header_path = self.path / "store.json"
        if not header_path.is_file():
            raise StoreError(f"{self.path}: not a feature store (no store.json). Create one with `expr prepare`.")
        self.meta: dict[str, Any] = read_header(header_path)
        version = self.meta.get("format_version")
        if version not in READABLE_VERSIONS:
            raise StoreError(
                f"{self.path}: store format {version} is not one this version of expr reads "
                f"({', '.join(map(str, READABLE_VERSIONS))}); prepare it again with this version of expr"
            )
        check_files(self.path, self.meta)
        try:
            frames = datasets.load_from_disk(str(self.path / "frames")).data.table
            videos = datasets.load_from_disk(str(self.path / "videos")).to_dict()
        except FileNotFoundError as e:
            raise StoreError(f"{self.path}: incomplete feature store ({e})") from None
        except Exception as e:  # noqa: BLE001 - a damaged table or record fails inside datasets / Arrow in many ways
            raise StoreError(
                f"{self.path}: damaged store: its frames or videos table does not load ({type(e).__name__}: "
                f"{str(e)[:200]}); `expr store info {self.path} --verify` names the damaged files"
            ) from None
        self.face = frames.column("face").to_numpy().astype(bool)  # [N]
        self.labels = frames.column("label").to_numpy().astype(np.int64)  # [N]
        self.task_labels: dict[str, np.ndarray] = {}  # "va": [N, 2] float32 (NaN), "au": [N, 12] int8 (-1)
        self.task_splits: dict[str, np.ndarray] = {}  # "va": the VA split of each video ("" = not annotated)
        for task, (width, dtype, _) in TASK_LABELS.items():
            if task in frames.column_names:
                flat = frames.column(task).combine_chunks().flatten().to_numpy(zero_copy_only=False)
                self.task_labels[task] = flat.astype(dtype).reshape(-1, width)
                self.task_splits[task] = np.array(videos[f"split_{task}"])
        self.tasks = ["expr", *sorted(self.task_labels)]  # the tasks this store has labels for
        self.mtl_splits, self.mtl = _mtl_labels(frames, videos)  # the multi-task challenge's, if any
        self.names: list[str] = videos["name"]
        self.splits = np.array(videos["split"])
        self.fps = np.asarray(videos["fps"], np.float64)
        self.num_frames = np.asarray(videos["num_frames"], np.int64)
        self.frame_offset = np.asarray(videos["frame_offset"], np.int64)
        self.audio_start = np.asarray(videos["audio_start"], np.float64)
        if version == 1:
            self.sets, columns = _format1_sets(self.path, self.meta, frames, videos)
        else:
            self.sets, columns = self.meta["sets"], {}
        self._arrays: dict[str, Any] = dict(columns)
        self.visual_sets = self._chosen(visual, "visual")
        audio_names = self._chosen(audio, "audio")
        self.audio_set = audio_names[0] if audio_names else None
        arrays = [self.set_array(n) for n in self.visual_sets]
        self.visual = arrays[0] if len(arrays) == 1 else ConcatColumns(arrays)  # [N, visual_dim] fp16
        self.visual_dim = sum(int(self.sets[n]["dim"]) for n in self.visual_sets)
        if self.audio_set is None:  # a store without any audio set: every video without audio
            self.audio, self.audio_dim = np.zeros((0, 1), np.float16), 1
            counts, rate = np.zeros(len(self.names), np.int64), 50.0
        else:
            info = self.sets[self.audio_set]
            self.audio = self.set_array(self.audio_set)  # [Na, audio_dim] fp16
            self.audio_dim = int(info["dim"])
            counts, rate = np.asarray(info["counts"], np.int64), float(info["rate"])
        self.num_audio = counts
        self.audio_offset = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.audio_rate = np.full(len(self.names), rate)
        self._check_record(arrays)
        if in_memory:
            self.visual = ConcatColumns([_in_ram(a) for a in arrays]) if len(arrays) > 1 else _in_ram(self.visual)
            self.audio = _in_ram(self.audio)
        self.split_tag = ""  # names a re-split (k-fold) in window index keys

    def _chosen(self, names, modality: str) -> list[str]:
        """The set names asked for (validated), or the store's defaults."""
        if names is None:
            default = self.meta.get(f"default_{modality}")
            chosen = [default] if isinstance(default, str) else list(default or [])
            if not chosen:
                chosen = [n for n, s in self.sets.items() if s["modality"] == modality][:1]
        else:
            chosen = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        have = sorted(n for n, s in self.sets.items() if s["modality"] == modality)
        for name in chosen:
            if name not in have:
                raise StoreError(
                    f"{self.path}: no {modality} feature set '{name}' (it has {', '.join(have) or 'none'}); add it "
                    f"with `expr prepare ... --out {self.path} --{modality} {name}=FAMILY:MODEL` or pick one of these"
                )
        if modality == "audio" and len(chosen) > 1:
            raise StoreError(f"data.audio: one audio set, not {len(chosen)} ({', '.join(chosen)})")
        return chosen

    def set_array(self, name: str):
        """The [rows, dim] fp16 array of feature set ``name`` (memory-mapped; opened once)."""
        if name not in self._arrays:
            self._arrays[name] = self._set_array(name)
        return self._arrays[name]

    def video_features(self, name: str, v: int) -> np.ndarray:
        """Set ``name``'s rows of video ``v``: [num_frames, dim] (visual) or [count, dim] (audio)."""
        info = self.sets[name]
        if info["modality"] == "visual":
            first, count = self.frame_offset[v], self.num_frames[v]
        else:
            counts = np.asarray(info["counts"], np.int64)
            first, count = int(counts[:v].sum()), int(counts[v])
        return self.set_array(name)[first : first + count]

    def _set_array(self, name: str):
        import datasets

        try:
            table = datasets.load_from_disk(str(self.path / "sets" / name)).data.table
        except FileNotFoundError as e:
            raise StoreError(f"{self.path}: feature set '{name}' is missing its folder ({e})") from None
        except Exception as e:  # noqa: BLE001 - as above
            raise StoreError(
                f"{self.path}: damaged store: feature set '{name}' does not load ({type(e).__name__}: "
                f"{str(e)[:200]}); `expr store info {self.path} --verify` names the damaged files"
            ) from None
        column, dim = table.column("feature"), int(self.sets[name].get("dim", 0))
        width = getattr(column.type, "list_size", None)
        if width is not None and width != dim:  # before a reshape reads the rows at the wrong width
            raise StoreError(
                f"{self.path}: damaged store: feature set '{name}' holds rows of {width} values, store.json says "
                f"{dim}; copy the store again, or re-run expr prepare into a new --out"
            )
        return _fixed_to_numpy(column, dim)

    @property
    def feature_sets(self) -> dict[str, dict[str, Any]]:
        """Every set of the store: modality, width, rate (audio) and provenance."""
        return self.sets

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def text_embeddings(self, template: str, set_name: str | None = None):
        """The class prompts' CLIP text embeddings stored by ``expr prepare`` (``text.safetensors``), or None when
        the store has none, or they were made with another prompt template or (``set_name``) another set's CLIP."""
        path = self.path / "text.safetensors"
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("template") != template or (set_name and meta.get("set", DEFAULT_VISUAL) != set_name):
                return None
            return f.get_tensor("text")

    def use_folds(self, folds: int, fold: int, seed: int = 0) -> None:
        """Re-split for k-fold cross-validation: train and validation videos pooled, grouped by raw video name (a
        video and its ``_left``/``_right`` tracks are one group), groups dealt to ``folds`` folds in a seeded random
        order; fold ``fold`` becomes ``validation``, the rest ``train``. Test videos stay ``test``."""
        pooled = np.flatnonzero(np.isin(self.splits, ["train", "validation"]))
        groups = sorted({video_name(self.names[v]) for v in pooled})
        if len(groups) < folds:
            raise StoreError(f"{self.path}: {len(groups)} raw videos cannot fill {folds} folds")
        order = np.random.default_rng(seed).permutation(len(groups))
        fold_of = {groups[g]: i % folds for i, g in enumerate(order)}
        splits = self.splits.astype(object)
        for v in pooled:
            splits[v] = "validation" if fold_of[video_name(self.names[v])] == fold else "train"
        self.splits = splits.astype(str)
        self.split_tag = f"k{folds}f{fold}s{seed}"

    def use_mtl_split(self) -> None:
        """Train and validate every task on the multi-task challenge's split and labels (``data.split_source mtl``):
        its labels replace the uni-task ones, and each video's split is its multi-task split for all three tasks (a
        test video of the store keeps ``test``; a video outside the challenge is in no split)."""
        if self.mtl_splits is None:
            raise StoreError(
                f"{self.path}: no multi-task split: prepare it from a tree with the challenge's MTL_Challenge folder "
                f"(expr prepare affwild2), or train on the per-task splits (--data.split_source tasks)"
            )
        splits = np.where(self.mtl_splits != "", self.mtl_splits, np.where(self.splits == "test", "test", ""))
        self.labels = self.mtl["expr"]
        self.task_labels = {"va": self.mtl["va"], "au": self.mtl["au"]}
        self.splits = splits
        self.task_splits = {"va": splits, "au": splits}
        self.tasks = ["expr", "au", "va"]
        self.split_tag = "mtl"

    def encode_at(self, rate: float) -> None:
        """Every video's image features as if only ``rate`` frames per second had been encoded (``predict.fps``,
        :mod:`expr.data.subset`): the frames between filled in from the encoded ones, their face flags too. The
        features are then held in memory (the store's feature width in fp16 per frame)."""
        from expr.data.subset import encoded_frames, fill_between

        visual, face = np.empty(self.visual.shape, self.visual.dtype), self.face.copy()
        for v in range(len(self.names)):
            a, n = int(self.frame_offset[v]), int(self.num_frames[v])
            idx = encoded_frames(n, float(self.fps[v]), rate)
            visual[a : a + n], face[a : a + n] = fill_between(self.visual[a : a + n], self.face[a : a + n], idx)
        self.visual, self.face = visual, face
        self.split_tag += f"fps{rate:g}"  # window caches keyed on the features must not mix the two

    def frame_rows(self, videos: np.ndarray) -> np.ndarray:
        """Rows of ``frames`` that belong to ``videos`` (in their order)."""
        parts = [np.arange(self.frame_offset[v], self.frame_offset[v] + self.num_frames[v]) for v in videos]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def videos_in(self, split: str, task: str = "expr") -> np.ndarray:
        """The videos in ``split`` of ``task`` (each Aff-Wild2 task splits the videos its own way; ``expr``'s split,
        which also holds the test videos, is ``splits``); none for a task the store has no labels of."""
        if task == "expr":
            return np.flatnonzero(self.splits == split)
        return np.flatnonzero(self.task_splits[task] == split) if task in self.task_splits else np.zeros(0, np.int64)

    def held_out(self, tasks) -> np.ndarray:
        """The videos that are validation or test for any of ``tasks``."""
        out = [self.videos_in(split, task) for task in tasks for split in ("validation", "test")]
        return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)

    def crossing_videos(self, tasks) -> np.ndarray:
        """The videos that one of ``tasks`` trains on and another validates or tests on."""
        training = np.unique(np.concatenate([self.videos_in("train", task) for task in tasks]))
        return np.intersect1d(training, self.held_out(tasks))

    def training_videos(self, task: str, tasks=("expr",), overlap: str = "exclude") -> np.ndarray:
        """The videos whose frames may train ``task`` in a run of ``tasks``: its training split, less (``overlap``
        ``exclude``) every video another trained task validates or tests on."""
        videos = self.videos_in("train", task)
        return np.setdiff1d(videos, self.held_out(tasks)) if overlap == "exclude" else videos

    def audio_span(self, video: np.ndarray, start: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """First audio frame (relative to the video's audio) and audio frame count of frame windows
        (:func:`audio_overlap` at each video's frame rate, ``audio_start`` and ``audio_rate``)."""
        return audio_overlap(start, length, self.fps[video], self.audio_start[video], self.audio_rate[video])


def _mtl_labels(frames, videos) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """(each video's multi-task split, "" = not in it; the multi-task labels ``expr`` [N] int64, ``va``, ``au``), or
    (None, {}) for a store without them."""
    if "split_mtl" not in videos:
        return None, {}
    labels = {}
    for task, (width, dtype, _) in MTL_LABELS.items():
        column = frames.column(f"mtl_{task}").combine_chunks()
        if width == 1:  # the expression: one class per frame, int64 like ``labels``
            labels[task] = column.to_numpy(zero_copy_only=False).astype(np.int64)
        else:
            labels[task] = column.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(-1, width)
    return np.array(videos["split_mtl"]), labels


def _format1_sets(path: Path, meta: dict[str, Any], frames, videos) -> tuple[dict, dict]:
    """A format-1 store's features as the sets ``clip`` (the ``visual`` column of ``frames``) and ``wav2vec2``
    (``audio/``)."""
    import datasets

    audio = datasets.load_from_disk(str(path / "audio")).data.table
    b = meta.get("backbones", {})
    sets = {
        DEFAULT_VISUAL: {"modality": "visual", "dim": int(meta["visual_dim"])},
        DEFAULT_AUDIO: {
            "modality": "audio",
            "dim": int(meta["audio_dim"]),
            "rate": float(videos["audio_rate"][0]) if videos["audio_rate"] else 50.0,
            "counts": list(videos["num_audio"]),
        },
    }
    if "clip_pretrained" in b:  # the encoder specs (expr.features.spec) of the recorded backbones
        clip = b["clip"] if b["clip"].startswith("local-dir:") else f"{b['clip']}@{b['clip_pretrained']}"
        w2v = "facebook/wav2vec2-base@random" if b["wav2vec2"] == "random" else b["wav2vec2"]
        sets[DEFAULT_VISUAL]["spec"], sets[DEFAULT_AUDIO]["spec"] = f"open_clip:{clip}", f"hf:{w2v}"
    columns = {
        DEFAULT_VISUAL: _fixed_to_numpy(frames.column("visual"), int(meta["visual_dim"])),
        DEFAULT_AUDIO: _fixed_to_numpy(audio.column("audio"), int(meta["audio_dim"])),
    }
    meta.setdefault("default_visual", [DEFAULT_VISUAL])
    meta.setdefault("default_audio", DEFAULT_AUDIO)
    return sets, columns
