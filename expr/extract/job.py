"""The preparation of a store: one process or several (``accelerate launch``), each extracting its share of the
videos into parts, then the main process assembling the store; ``prepare`` is the whole of it."""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expr.atomic import write_text
from expr.config import ABAW_CLASSES, LossConfig, resolve_device
from expr.data.item import Item
from expr.extract.assembly import _print_summary, _swap_in, assemble
from expr.extract.common import PARTS, PrepareError, Report, _loud, logger
from expr.extract.parts import _recorded_media, _store_media, save_part
from expr.extract.plan import Plan, _check_parts, _Encoders, plan_work
from expr.extract.video import extract_from_store, extract_item
from expr.features.backbones import Backbones
from expr.locks import FolderLock


def prepare(
    items: Sequence[Item],
    out: str | Path,
    backbones: Backbones,
    classes: Sequence[str] = ABAW_CLASSES,
    prompt_template: str = LossConfig.prompt_template,
    source: dict[str, Any] | None = None,
    workers: int = 4,
    progress: bool = True,
    stop_after: int | None = None,
    media: bool = False,
) -> dict[str, Any]:
    """Extract every item not yet done into ``out`` and assemble the store; returns the summary (also printed and
    stored in ``store.json``). On an existing store, new videos are added (with every set of the store) and new
    feature sets are added for its videos (from its kept face crops and audio when it has them). ``stop_after``
    stops after that many newly extracted videos without assembling (for tests of interrupted runs). ``media`` also
    keeps every face crop and audio track in the store for online training (``data.mode=online``)."""
    out = Path(out)
    names = [it.name for it in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PrepareError(f"video names appear twice: {', '.join(dup[:10])}")
    staging = out.with_name(out.name + ".assembling")
    job = Job.current(backbones)
    lock = None
    if job.rank == 0:  # one preparation of a store at a time (they would share its parts and staging folder)
        lock = FolderLock(out, "store", "wait for that expr prepare to finish, then run this one", beside=True)
        lock.acquire()
    try:
        return _prepare(items, out, staging, job, backbones, classes, prompt_template, source, workers, progress,
                        stop_after, media)  # fmt: skip
    finally:
        if lock is not None:
            lock.release()


def _prepare(items, out, staging, job, backbones, classes, prompt_template, source, workers, progress, stop_after,
             media) -> dict[str, Any]:  # fmt: skip
    if job.rank == 0:
        if (staging / "store.json").is_file():  # killed while moving the assembled store into place
            logger.info("finishing the interrupted assembly of %s", out)
            _swap_in(staging, out)
        for old in (out / PARTS).glob(".progress-*.json"):  # the progress of an earlier, killed job
            old.unlink()
    job.wait()
    media = media or _recorded_media(out)  # a store that keeps its crops and audio keeps them for every video
    plan = plan_work(out, items, backbones, classes, media)
    _check_parts(out, plan, classes, media)
    job.wait()  # every process has its work list before any writes a part
    random = [n for n, (_, s) in plan.sets.items() if s is not None and s.random]
    if random and job.rank == 0:
        _loud(f"RANDOM BACKBONE WEIGHTS ({', '.join(random)}): smoke runs only; the store records it in store.json")
    encoders = _Encoders(backbones, plan)
    if plan.todo:  # load the weights before writing anything: a missing checkpoint must not leave a cache behind
        encoders.load(sorted({n for _, sets in plan.todo for n in sets}))
        if job.rank == 0:
            write_text(
                out / PARTS / "plan.json",
                json.dumps({"sets": plan.identity(), "classes": list(classes), "media": media}, indent=2),
            )
    skipped = len(items) - len(plan.todo)
    if skipped and plan.existing is None and job.rank == 0:
        logger.info("%d of %d videos already extracted in %s: skipped", skipped, len(items), out)
    done = extract_all(out, plan, encoders, job, workers, progress and job.rank == 0, stop_after, media)
    job.wait()  # every process's videos are in their parts
    if done is not None:
        return done
    if job.rank != 0:
        return {"rank": job.rank}
    summary = assemble(out, staging, plan, encoders, classes, prompt_template, source, media)
    _print_summary(out, summary, plan)
    return summary


@dataclass
class Job:
    """The processes of one preparation: under ``accelerate launch`` each extracts every ``world``-th video of the
    work list on its own device and writes its parts; the main process assembles the store."""

    rank: int = 0
    world: int = 1
    state: Any = None

    @classmethod
    def current(cls, backbones: Backbones) -> Job:
        if int(os.environ.get("WORLD_SIZE", 1)) == 1:
            return cls()
        from accelerate import PartialState

        # A long timeout: a process with one long video left keeps the others waiting at the final barrier.
        state = PartialState(cpu=resolve_device(backbones.device) == "cpu", timeout=datetime.timedelta(hours=12))
        if backbones.device == "auto":
            backbones.device = str(state.device)  # this process's GPU, not cuda:0 for everyone
        return cls(state.process_index, state.num_processes, state)

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def extract_all(out: Path, plan: Plan, encoders, job: Job, workers: int, progress: bool, stop_after, media: bool):
    """Extract this process's share of ``plan.todo`` into parts. The main process's progress bar counts the videos
    and frames of every process (each writes its totals to ``.parts/.progress-<rank>.json``). Returns
    ``{"stopped_after": n}`` when ``stop_after`` stopped it, else None."""
    from tqdm.auto import tqdm

    existing = plan.existing
    media_of_store = _store_media(existing)
    index = {n: v for v, n in enumerate(existing.names)} if existing is not None else {}
    mine = plan.todo[job.rank :: job.world]
    bar = tqdm(total=len(plan.todo), unit="video", disable=not progress or not plan.todo, dynamic_ncols=True)
    t0, frames = time.perf_counter(), [0]

    def totals() -> tuple[int, int]:
        if job.world == 1:
            return bar.n, frames[0]
        counts = [json.loads(p.read_text()) for p in (out / PARTS).glob(".progress-*.json")]
        return sum(c["videos"] for c in counts), sum(c["frames"] for c in counts)

    def tick(n: int) -> None:
        frames[0] += n
        rate = totals()[1] / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix_str(f"{rate:.0f} frames/s" + (f" ({job.world} processes)" if job.world > 1 else ""), False)

    for count, (item, sets) in enumerate(mine):
        if stop_after is not None and count >= stop_after:
            bar.close()
            return {"stopped_after": count}
        bar.set_description_str(f"extracting {item.name}"[:40])
        visual, audio = encoders.pick(sets)
        if item.name in index and media_of_store is not None:  # new sets from the store's own crops and audio
            arrays, report = extract_from_store(existing, index[item.name], visual, audio, tick), Report()
        else:
            arrays, report = extract_item(item, visual, audio, workers, tick, media and item.name not in index)
            if item.name in index:  # a video of the store: keep only its new sets
                arrays = {k: v for k, v in arrays.items() if k.startswith(("visual.", "audio."))}
        save_part(out, item, arrays, report)
        for problem in report.problems:
            tqdm.write(f"{item.name}: {problem}", file=sys.stderr)
        if job.world > 1:
            mine_done = {"videos": count + 1, "frames": frames[0]}
            write_text(out / PARTS / f".progress-{job.rank}.json", json.dumps(mine_done))
            bar.n = totals()[0]
            bar.refresh()
        else:
            bar.update(1)
    bar.close()
    if mine:
        seconds = time.perf_counter() - t0
        logger.info("extracted %d videos (%d frames) in %.0f s", len(mine), frames[0], seconds)
    return None
