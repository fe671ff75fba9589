"""What every step of ``expr prepare`` shares: its error, the report of one video, the parts folder, the logger."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

logger = logging.getLogger("expr.extract.prepare")

PARTS = ".parts"
SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}


class PrepareError(RuntimeError):
    """A preparation that cannot go on; the message names the file or option."""


@dataclass
class Report:
    """What happened to one video, kept in the store's header."""

    frames: int = 0
    faces: int = 0
    annotated: int | None = None
    fps: float = 0.0
    audio_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def _loud(message: str) -> None:
    bar = "!" * min(100, len(message) + 4)
    print(f"{bar}\n! {message}\n{bar}", file=sys.stderr)
