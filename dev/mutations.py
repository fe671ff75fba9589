"""Break each core rule once and check that a test notices: ``python dev/mutations.py [--only ID ...] [--list]``.

Every entry is a plausible one-line bug in a rule that decides what expr computes (docs/rules.md says why each
rule matters). For each, the script applies the change to the source, runs the tests named beside it, restores the
file, and reports whether the tests failed (caught) or passed (missed). Run it after moving code: an entry whose
``old`` line no longer exists is reported as stale, so update the entry with the code.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (id, rule, file, old, new, pytest arguments)
MUTATIONS = [
    ("centre-1", "a window's centre label frame is start + T // 2", "expr/data/windows.py",
     'offset = window // 2 if rule == "center"', 'offset = (window - 1) // 2 if rule == "center"',
     ["tests/test_data.py", "-k", "window_label"]),
    ("centre-2", "a window's centre label frame is start + T // 2", "expr/data/windows.py",
     'offset = window // 2 if rule == "center"', 'offset = window // 2 - 1 if rule == "center"',
     ["tests/test_data.py", "-k", "window_label"]),
    ("audio-sign", "audio_start shifts a window's audio span", "expr/data/store.py",
     "t0 = (np.asarray(start, np.float64) / fps - audio_start) * rate",
     "t0 = (np.asarray(start, np.float64) / fps + audio_start) * rate",
     ["tests/test_data.py", "-k", "audio_span"]),
    ("audio-first", "the first audio unit is the one the window starts in (floor)", "expr/data/store.py",
     "first = np.floor(t0 + eps)", "first = np.ceil(t0 + eps)", ["tests/test_data.py", "-k", "audio_span"]),
    ("audio-count", "the last, partly covered audio unit counts (ceil)", "expr/data/store.py",
     "count = np.ceil(t1 - eps)", "count = np.floor(t1 - eps)", ["tests/test_data.py", "-k", "audio_span"]),
    ("a2v-mask", "audio queries attend only to valid visual frames", "expr/models/fusion.py",
     "ha = self.a2v(fa, fv, visual_mask)", "ha = self.a2v(fa, fv, ~visual_mask)",
     ["tests/test_model.py", "-k", "padding"]),
    ("pool-mask", "visual pooling over valid frames only", "expr/models/fusion.py",
     "zv = masked_mean(hv, visual_mask)", "zv = hv.mean(1)", ["tests/test_model.py", "-k", "padding"]),
    ("text-norm", "the contrastive loss normalises the text embeddings", "expr/losses.py",
     "text = F.normalize(text_embeddings.to(embeddings.dtype), dim=-1)[labels]",
     "text = text_embeddings.to(embeddings.dtype)[labels]", ["tests/test_losses.py"]),
    ("con-face", "windows without a face stay out of the contrastive term", "expr/losses.py",
     "    if valid is not None:\n        embeddings, labels", "    if False:\n        embeddings, labels",
     ["tests/test_losses.py"]),
    ("submit-index", "example frame n (from 1) gets the label of frame n - 1", "expr/submit.py",
     "lab[min(frame - 1, len(lab) - 1)]", "lab[min(frame, len(lab) - 1)]",
     ["tests/test_submit.py", "-k", "own_frame or va_and_au"]),
    ("class-weights", "class weights count the training frames (not windows, not another split)", "expr/criterion.py",
     'rows = store.frame_rows(store.videos_in("train"))',
     'rows = store.frame_rows(store.videos_in("validation"))',
     ["tests/test_train.py", "-k", "class_weights"]),
    ("resume-accum", "a resumed epoch skips steps x accumulation micro-batches", "expr/train.py",
     "acc.skip_first_batches(self.train_loader, skip * cfg.train.grad_accum_steps)",
     "acc.skip_first_batches(self.train_loader, skip)",
     ["tests/test_train.py", "-k", "accumulation and mid_epoch"]),
    ("warmup", "warm-up reaches the peak on its last step: (step + 1) / warmup", "expr/optim.py",
     "return (step + 1) / warmup", "return step / warmup", ["tests/test_train.py", "-k", "warmup"]),
    ("cosine-floor", "the cosine decays to min_lr_ratio", "expr/optim.py",
     "return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))",
     "return 0.5 * (1.0 + math.cos(math.pi * progress))", ["tests/test_train.py", "-k", "warmup"]),
    ("decay-gain", "no weight decay on weight-norm gains", "expr/optim.py",
     ' and not name.endswith("original0")', "", ["tests/test_train.py", "-k", "weight_decay"]),
    ("macro-all", "macro-F1 averages all classes (absent ones count 0)", "expr/metrics.py",
     '"macro_f1": float(f1.mean())', '"macro_f1": float(f1[present].mean())', ["tests/test_metrics.py"]),
    ("spread", "a centre/last window speaks for its label frame", "expr/evaluation.py",
     'if rule == "majority":', "if True:", ["tests/test_evaluation.py", "-k", "perfect or centre or last_frame"]),
    ("eval-stride", "the default evaluation stride is small and window-independent", "expr/config.py",
     "return self.eval_stride or min(3, self.window)", "return self.eval_stride or max(1, self.window // 3)",
     ["tests/test_evaluation.py", "-k", "perfect"]),
    ("face-fill", "frames without a face take the nearest face frame's prediction, everywhere", "expr/evaluation.py",
     "out[a : a + n] = fill_missing_faces(out[a : a + n], face[r])", "out[a : a + n] = out[a : a + n]",
     ["tests/test_evaluation.py", "-k", "faceless"]),
    ("offsets", "training windows move by a drawn offset each epoch", "expr/data/windows.py",
     "if not len(idx) or span.max() <= 1:", "if True:", ["tests/test_train.py", "-k", "drawn_anew"]),
    ("offsets-batch", "a window's offset depends on (seed, epoch, window) alone", "expr/data/windows.py",
     "+ np.asarray(index, np.uint64)[:, None] * np.uint64(0x94D049BB133111EB)",
     "+ np.arange(len(index), dtype=np.uint64)[:, None] * np.uint64(0x94D049BB133111EB)",
     ["tests/test_train.py", "-k", "drawn_anew"]),
    ("budget", "training windows per epoch do not depend on the window length", "expr/config.py",
     "    stride: int | None = 30\n", "    stride: int | None = None\n",
     ["tests/test_train.py", "-k", "budget"]),
    ("online-pad", "a window's audio is encoded without the batch's padding", "expr/models/online.py",
     "if wave_length is None else wave_length.cpu()", "if True else wave_length.cpu()",
     ["tests/test_online.py", "-k", "rest_of_the_batch"]),
    ("layout-direction", "library modules never import a command module", "expr/inference.py",
     "from expr.config import TASK_SCORES, Config, default_num_workers",
     "from expr.config import TASK_SCORES, Config, default_num_workers\n"
     "from expr.report import main as _report_main  # noqa",
     ["tests/test_layout.py"]),
    ("layout-cycle", "no import cycles, function-level imports included", "expr/data/store.py",
     "    def videos_in(self, split: str) -> np.ndarray:\n",
     "    def videos_in(self, split: str) -> np.ndarray:\n        from expr.data.windows import WindowDataset\n",
     ["tests/test_layout.py"]),
    ("backbone-override", "a backbones.* value a prepared store cannot honour is an error", "expr/loaders.py",
     "if theirs is not None and ours not in given and ours != theirs:", "if False:",
     ["tests/test_config.py", "-k", "backbone_override"]),
    ("help-docs", "expr train --help lists every option with its docstring", "expr/config.py",
     "if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):", "if False:",
     ["tests/test_config.py", "-k", "help"]),
    ("run-overrides", "a key that shaped the trained head cannot be overridden when reading a run", "expr/runs.py",
     "fixed = sorted(set(overrides) - set(RUN_OVERRIDES))", "fixed = []",
     ["tests/test_evaluation.py", "-k", "dotted_overrides"]),
    ("command-dotted", "a command's --SECTION.key means its --key", "expr/options.py",
     "rest += [flag_name(name), value]", "rest += [flag_name(name)]", ["tests/test_options.py"]),
    ("command-help", "every command's --help gives each option's docstring", "expr/options.py",
     'kwargs: dict[str, Any] = {"help": help_text, "default": default}',
     'kwargs: dict[str, Any] = {"default": default}',
     ["tests/test_options.py", "-k", "help"]),
    ("enc-mean-pool", "pool=mean averages the patch tokens, not the class token", "expr/features/encoders.py",
     "return tokens[:, prefix:].mean(1)", "return tokens.mean(1)", ["tests/test_encoders.py", "-k", "timm_outputs"]),
    ("enc-layers", "layer=A-B averages hidden states A..B inclusive", "expr/features/encoders.py",
     "for i in range(first, last + 1)", "for i in range(first, last)", ["tests/test_encoders.py", "-k", "layers"]),
    ("enc-views", "test-time views are averaged", "expr/features/encoders.py",
     "return (out / len(views)).astype(np.float16)", "return out.astype(np.float16)",
     ["tests/test_encoders.py", "-k", "timm_outputs"]),
    ("set-overwrite", "a feature set is never overwritten by another encoder", "expr/prepare.py",
     "if name in sets and recorded != str(sets[name][1]):", "if False:",
     ["tests/test_prepare.py", "-k", "new_feature_set"]),
    ("set-concat", "several visual sets are concatenated per frame", "expr/data/store.py",
     "self.visual = arrays[0] if len(arrays) == 1 else ConcatColumns(arrays)", "self.visual = arrays[0]",
     ["tests/test_prepare.py", "-k", "new_feature_set"]),
    ("store-size", "a truncated data file is named when the store opens", "expr/data/store.py",
     "        if path.stat().st_size != size:\n            raise", "        if False:\n            raise",
     ["tests/test_store_info.py", "-k", "truncated"]),
    ("store-checksum", "--verify compares every file's SHA-256", "expr/data/store.py",
     'elif isinstance(entry, dict) and sha256(path) != entry["sha256"]:', "elif False:",
     ["tests/test_store_info.py", "-k", "verify"]),
    ("tune-lora", "under LoRA only the adapters of the tower train", "expr/models/tuning.py",
     'p.requires_grad_("lora_" in name)', "p.requires_grad_(True)",
     ["tests/test_finetune.py", "-k", "intended and lora"]),
    ("tune-last-n", "last_n trains exactly the last N blocks and the layers after them", "expr/models/tuning.py",
     "p.requires_grad_(ids[name] > n - tuning.last_n)", "p.requires_grad_(ids[name] >= n - tuning.last_n)",
     ["tests/test_finetune.py", "-k", "intended and last_n"]),
    ("tune-mha", "LoRA on open_clip attention leaves the base weights bit-identical", "expr/models/tuning.py",
     "    linear_attention(part)\n", "    pass\n", ["tests/test_finetune.py", "-k", "intended and lora"]),
    ("tune-ckpt", "checkpoints hold only what trains", "expr/models/tuning.py",
     'keys -= {f"{part}.{k}" for k in set(sub.state_dict().keys()) - tuned_keys(sub)}', "pass",
     ["tests/test_finetune.py", "-k", "intended and lora"]),
    ("tune-llrd", "block i of n trains at lr x layer_decay^(n - i)", "expr/models/tuning.py",
     '"lr": lr * layer_decay ** (n + 1 - layer)', '"lr": lr * layer_decay ** (n - layer)',
     ["tests/test_finetune.py", "-k", "layer_wise"]),
    ("tune-balanced", "stage I draws frames class-balanced", "expr/data/frames.py",
     "self.weights = torch.from_numpy(1.0 / counts[self.labels])",
     "self.weights = torch.ones(len(self.labels), dtype=torch.float64)", ["tests/test_finetune.py", "-k", "balanced"]),
    ("tune-eval-mode", "tuned encoders keep the eval behaviour of their frozen weights", "expr/models/tuning.py",
     '    if tuning.method in ("full", "last_n"):\n        part.train(training)',
     '    if tuning.method in ("full", "last_n", "lora"):\n        part.train(training)',
     ["tests/test_finetune.py", "-k", "eval_behaviour"]),
    ("tune-gc", "checkpointing layers of an eval-mode (LoRA) tower are told they train", "expr/models/tuning.py",
     "m.training = True  # this module alone", "m.training = False  # this module alone",
     ["tests/test_finetune.py", "-k", "checkpointing"]),
    ("tune-cnn-blocks", "a CNN's stages are its blocks; what precedes them is the embedding", "expr/models/tuning.py",
     "if len(run) >= 2 or (container and len(run) == len(children)):", "if container and len(run) == len(children):",
     ["tests/test_finetune.py", "-k", "cnn"]),
    ("tune-frozen-bn", "frozen batch norms keep their statistics under last_n", "expr/models/tuning.py",
     "not any(p.requires_grad for p in m.parameters()):\n                    m.eval()",
     "not any(p.requires_grad for p in m.parameters()):\n                    pass",
     ["tests/test_finetune.py", "-k", "cnn"]),
    ("tune-gc-layerdrop", "only checkpointing layers, not the encoder (layer drop), are told they train",
     "expr/models/tuning.py",
     "return isinstance(m, GradientCheckpointingLayer) and bool(getattr(m, \"gradient_checkpointing\", False))",
     "return bool(getattr(m, \"gradient_checkpointing\", False))", ["tests/test_finetune.py", "-k", "checkpointing"]),
    ("calib-shift", "calibration offsets add to log-probabilities (not to probabilities)", "expr/calibration.py",
     "z = log_probs(probs) + np.asarray(offsets, np.float64)[None, :]",
     "z = np.asarray(probs, np.float64) + np.asarray(offsets, np.float64)[None, :]",
     ["tests/test_calibration.py", "-k", "known_optimum"]),
    ("calib-held-out", "cross-fitting scores a group with offsets fitted on the others", "expr/calibration.py",
     "offsets = fit_offsets(probs[~held], np.asarray(labels)[~held])", "offsets = fit_offsets(probs, labels)",
     ["tests/test_calibration.py", "-k", "cross_fitting"]),
    ("calib-subject", "both tracks of a raw video stay in one calibration group", "expr/calibration.py",
     "per_video = np.array([ids[video_name(n)] for n in names], np.int64)",
     "per_video = np.arange(len(names), dtype=np.int64)", ["tests/test_calibration.py", "-k", "tracks"]),
    ("calib-order", "a decision calibrates, then smooths", "expr/evaluation.py",
     "return smooth(apply_offsets(probs, self.offsets), self.smoothing, self.width)",
     "return apply_offsets(smooth(probs, self.smoothing, self.width), self.offsets)",
     ["tests/test_calibration.py", "-k", "before_it_smooths"]),
    ("calib-submit", "submit applies the run's calibration", "expr/submit.py",
     "    decision = decision or run_decision(run_dir, cfg)\n",
     "    decision = decision or type(run_decision(run_dir, cfg))(None, cfg.eval.smoothing,\n"
     "                                                            cfg.eval.smoothing_width)\n",
     ["tests/test_calibration.py", "-k", "submit_apply"]),
    ("calib-predict", "predict applies the run's calibration", "expr/predict.py",
     "        decision = run_decision(run, cfg)\n",
     "        decision = type(run_decision(run, cfg))(None, cfg.eval.smoothing, cfg.eval.smoothing_width)\n",
     ["tests/test_predict.py", "-k", "calibration"]),
    ("calib-evaluate", "evaluate applies the run's calibration", "expr/report.py",
     "    decision = run_decision(run_dir, cfg)\n",
     "    decision = type(run_decision(run_dir, cfg))(None, cfg.eval.smoothing, cfg.eval.smoothing_width)\n",
     ["tests/test_calibration.py", "-k", "submit_apply"]),
    ("ens-raw", "an ensemble combines its members' raw probabilities, then decides once", "expr/submit.py",
     "    decision = ensemble_decision(run_dir, overrides) if members is not None else None",
     "    decision = None",
     ["tests/test_ensemble.py", "-k", "steps_table"]),
    ("ens-best", "fitted ensemble weights are the best point of the greedy path", "expr/ensemble.py",
     "if gains[pick] > best_score:", "if True:", ["tests/test_ensemble.py", "-k", "greedy_path"]),
    ("ens-oof", "each fold's frames come from the models that validated on it", "expr/ensemble.py",
     "parts.append((group[0].rows, probs, group[0].labels, group[0].subject, np.full(len(group[0].rows), fold)))",
     "parts.append((group[0].rows, members[0].probs, group[0].labels, group[0].subject, "
     "np.full(len(group[0].rows), fold)))",
     ["tests/test_ensemble.py", "-k", "k_fold"]),
    ("tta-flip", "test-time views average the mirrored crops' probabilities", "expr/inference.py",
     "p = (p + window_probs(mirrored(batch))) / 2", "p = p",
     ["tests/test_online.py", "-k", "flipped"]),
    ("va-ccc-bias", "CCC counts the gap between the means", "expr/metrics.py",
     "denom = x.var() + y.var() + (x.mean() - y.mean()) ** 2", "denom = x.var() + y.var()",
     ["tests/test_tasks.py", "-k", "direct_formula"]),
    ("va-loss-mask", "an unannotated VA frame never changes the loss", "expr/losses.py",
     "        valid = ~torch.isnan(targets).any(-1)", "        valid = torch.ones(len(targets), dtype=torch.bool)",
     ["tests/test_tasks.py", "-k", "ccc_loss"]),
    ("au-loss-mask", "an unannotated AU frame never changes the loss", "expr/losses.py",
     "    valid = (targets >= 0).all(-1)\n    if not valid.any():",
     "    valid = (targets >= -1).all(-1)\n    if not valid.any():", ["tests/test_tasks.py", "-k", "au_loss"]),
    ("va-sentinel", "-5 marks an unannotated VA frame only as a pair", "expr/data/affwild2.py",
     "if all(v == VA_UNANNOTATED for v in values):", "if any(v == VA_UNANNOTATED for v in values):",
     ["tests/test_tasks.py", "-k", "malformed_va"]),
    ("task-rewrite", "a store rewritten for new videos keeps the old videos' VA and AU labels", "expr/prepare.py",
     "        **{t: store.task_labels[t][f0 : f0 + n] if store.task_splits[t][v] else None for t in "
     "store.task_labels},\n", "", ["tests/test_prepare.py", "-k", "va_and_au"]),
    ("task-align", "VA and AU labels are aligned to the video's frames by index", "expr/prepare.py",
     "task_labels[task][: min(T, len(values))] = values[:T]", "task_labels[task][: min(T, len(values))] = values[-T:]",
     ["tests/test_prepare.py", "-k", "va_and_au"]),
    ("mtcnn-marks", "MTCNN's landmark outputs are x then y, scaled by the box", "expr/features/mtcnn.py",
     "points = torch.stack([bw * marks[:, :5] + boxes[:, 1:2] - 1, bh * marks[:, 5:] + boxes[:, 2:3] - 1], -1)",
     "points = torch.stack([bh * marks[:, 5:] + boxes[:, 2:3] - 1, bw * marks[:, :5] + boxes[:, 1:2] - 1], -1)",
     ["tests/test_predict.py", "-k", "landmarks"]),
    ("mtcnn-nms", "non-maximum suppression keeps the best box and drops its overlaps", "expr/features/mtcnn.py",
     "order = rest[overlap <= threshold]", "order = rest", ["tests/test_predict.py", "-k", "landmarks"]),
    ("align-landmarks", "a landmark face is aligned by its landmarks (similarity to the template)",
     "expr/features/faces.py", "        if self.landmarks is not None:\n            return align(",
     "        if False:\n            return align(", ["tests/test_predict.py", "-k", "rotation"]),
    ("predict-goes-on", "an unreadable video among many is reported and the others go on", "expr/predict.py",
     "            failed.append((video, str(e)))\n            continue", "            raise",
     ["tests/test_predict.py", "-k", "several"]),
    ("mtcnn-batch-nms", "a batch's images are suppressed apart (one image's box never drops another's)",
     "expr/features/mtcnn.py", "apart = 4.0 * max(H, W)", "apart = 0.0",
     ["tests/test_tracks.py", "-k", "faces_all"]),
    ("track-iou", "a face joins a track only when it overlaps the track's last box enough", "expr/features/tracks.py",
     "            if overlap < min_iou:\n                break", "            if overlap < 0:\n                break",
     ["tests/test_tracks.py", "-k", "side_by_side"]),
    ("track-gap", "a track lives on across at most max_gap frames without a face", "expr/features/tracks.py",
     "if t - tracks[k].last <= max_gap + 1]", "if t - tracks[k].last <= max_gap + 2]",
     ["tests/test_tracks.py", "-k", "side_by_side"]),
    ("track-order", "tracks are numbered left to right", "expr/features/tracks.py",
     "return sorted(kept, key=lambda t: t.centre_x)", "return kept", ["tests/test_tracks.py", "-k", "side_by_side"]),
    ("track-span", "a track's outputs cover its own frames, numbered as in the video", "expr/predict.py",
     "            person.faces[t - person.first] = face", "            person.faces[t - person.first - 1] = face",
     ["tests/test_tracks.py", "-k", "faces_all"]),
    ("frame-times", "a frame's time is its own timestamp", "expr/data/media.py",
     "time = float(frame.time) - start if frame.time is not None else index / rate", "time = index / rate",
     ["tests/test_predict.py", "-k", "variable or stretch"]),
    ("skip-stretch", "an undecodable packet is left out and decoding goes on", "expr/data/media.py",
     "                skipped.append(float(packet.pts * packet.time_base) - start if packet.pts is not None else "
     "index / rate)\n                continue",
     "                skipped.append(float(packet.pts * packet.time_base) - start if packet.pts is not None else "
     "index / rate)\n                return", ["tests/test_predict.py", "-k", "stretch"]),
    ("annotate-clock", "the annotated video keeps each frame's time", "expr/annotate.py",
     "stream.time_base = stream.codec_context.time_base = TIME_BASE", "stream.time_base = TIME_BASE",
     ["tests/test_predict.py", "-k", "variable"]),
    ("task-split", "each task's targets come from the videos in that task's split", "expr/data/store.py",
     "return np.flatnonzero(self.task_splits[task] == split) if task in self.task_splits",
     "return np.flatnonzero(self.splits == split) if task in self.task_splits",
     ["tests/test_tasks.py", "-k", "own_split"]),
    ("task-expr-mask", "windows without an EXPR label stay out of the EXPR loss", "expr/criterion.py",
     "expr = self.expression(out, batch, None if labelled.all() else labelled)",
     "expr = self.expression(out, batch, None)", ["tests/test_tasks.py", "-k", "lacks"]),
    ("task-va-mask", "a window without a VA target never changes the VA loss", "expr/criterion.py",
     "            valid = ~torch.isnan(target).any(-1)\n",
     "            valid = torch.ones(len(target), dtype=torch.bool, device=target.device)\n",
     ["tests/test_tasks.py", "-k", "lacks"]),
    ("task-val-videos", "VA and AU are scored on their own task's validation videos", "expr/inference.py",
     'videos = store.videos_in("validation", task)', 'videos = store.videos_in("validation")',
     ["tests/test_tasks.py", "-k", "own_validation"]),
    ("task-select", "the best epoch of a multi-task run is chosen by train.select (auto: the sum of the scores)",
     "expr/train.py", "            key = selection_metric(cfg)", '            key = "val/macro_f1"',
     ["tests/test_tasks.py", "-k", "learns_all_three"]),
    ("track-audio", "a track that starts late hears the audio from its own first frame", "expr/predict.py",
     "shift = start - person.first / footage.fps", "shift = start", ["tests/test_tracks.py", "-k", "faces_all"]),
    ("stretch-fill", "frames of an undecodable stretch count as frames without a face (frame i stays at i / fps)",
     "expr/predict.py", "    if skipped:  # the frames of a stretch", "    if False:  # the frames of a stretch",
     ["tests/test_predict.py", "-k", "stretch"]),
    ("sweep-objective", "a study optimises its runs' selection metric (any task's score)", "expr/sweep/worker.py",
     '    return result["best_score"], attrs', '    return result["best_macro_f1"], attrs',
     ["tests/test_sweeps.py", "-k", "task_its_runs"]),
    ("submit-au-threshold", "an AU submission marks a unit active at probability 0.5", "expr/submit.py",
     "thresholds = np.full(len(AU_NAMES), 0.5)", "thresholds = np.full(len(AU_NAMES), 0.3)",
     ["tests/test_submit.py", "-k", "va_and_au"]),
    ("task-ddp-graph", "every parameter stays in a multi-task loss's graph (DDP reduces all of them)",
     "expr/criterion.py", "total = (out.logits.sum() + out.visual_embedding.sum() + out.logit_scale.sum()) * 0.0",
     "total = out.logits.sum() * 0.0", ["tests/test_distributed.py", "-k", "other_tasks"]),
]  # fmt: skip


def run(mutation, python: str) -> tuple[str, float]:
    ident, _, file, old, new, tests = mutation
    path = ROOT / file
    source = path.read_text()
    if source.count(old) != 1:
        return f"stale ({source.count(old)} matches of its line in {file})", 0.0
    t0 = time.time()
    try:
        path.write_text(source.replace(old, new))
        proc = subprocess.run(
            [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    finally:
        path.write_text(source)
    return ("caught" if proc.returncode == 1 else "MISSED" if proc.returncode == 0 else f"error {proc.returncode}"), (
        time.time() - t0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="mutation ids to run")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m[0] in args.only]
    if args.list:
        for ident, rule, file, *_ in chosen:
            print(f"{ident:14} {file:24} {rule}")
        return 0
    missed = 0
    print("| mutation | rule | file | tests | result | s |\n|---|---|---|---|---|---|")
    for m in chosen:
        result, seconds = run(m, sys.executable)
        missed += result != "caught"
        print(f"| {m[0]} | {m[1]} | {m[2]} | `{' '.join(m[5])}` | {result} | {seconds:.0f} |", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
