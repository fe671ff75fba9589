"""Frozen encoder features extracted once into a feature store that training reads (``expr prepare``).

Work is kept per video: each finished video is written to ``CACHE/.parts/<name>.npz`` (a temporary file renamed
into place, so a kill never leaves a half-written part that a later run trusts); a re-run skips finished videos;
at the end the parts are assembled into the store (``store.json``, ``frames/``, ``audio/``, ``videos/``, and the
class prompts' CLIP text embeddings in ``text.safetensors``) and removed. A later run with more videos (e.g. the
test list) adds them to the existing store. Problems with one video (a corrupt JPEG, an unreadable video, no audio
track, an annotation that is longer or shorter than the video) are reported by file, masked, and counted in the
summary; they never stop the run. A malformed annotation line stops it before any extraction, naming file and line.

Modules, in the order of the work: affwild2 (the items of an Aff-Wild2 tree), plan (what a run adds to a store),
video (one video's features), parts (a finished video on disk), job (the processes and ``prepare``), assembly (the
parts into the store, the summary); common holds what they share.
"""

from expr.extract.affwild2 import items_from_affwild2
from expr.extract.assembly import assemble
from expr.extract.common import PrepareError, Report
from expr.extract.job import Job, extract_all, prepare
from expr.extract.parts import load_part, save_part
from expr.extract.plan import Plan, plan_work
from expr.extract.video import extract_from_store, extract_item

__all__ = [
    "Job",
    "Plan",
    "PrepareError",
    "Report",
    "assemble",
    "extract_all",
    "extract_from_store",
    "extract_item",
    "items_from_affwild2",
    "load_part",
    "plan_work",
    "prepare",
    "save_part",
]
