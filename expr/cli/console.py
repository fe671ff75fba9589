"""The console a command's log messages go to while it runs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def console_logging(logger: logging.Logger, level: int | None = None) -> Iterator[None]:
    """Print ``logger``'s messages, bare, on stderr while the command runs; put the logger back as it was after (a
    command called twice in one process, as the tests do, neither prints twice nor writes to a closed stream)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    before = logger.level, logger.propagate
    logger.addHandler(handler)
    if level is not None:
        logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.level, logger.propagate = before
