"""The frame-level feature store: what ``expr prepare`` and the demo generator write, and training reads.

One module per job: :mod:`~expr.data.store.format` (what a store holds: layout, records, names),
:mod:`~expr.data.store.columns` (feature columns between numpy and Arrow files), :mod:`~expr.data.store.write`
(writing a store, adding feature sets), :mod:`~expr.data.store.read` (:class:`FrameStore`),
:mod:`~expr.data.store.verify` (the header, the data files it records, the checks on opening) and
:mod:`~expr.data.store.span` (a window's video and audio span). Every public name is importable from here; a test
that patches one patches it in the module that looks it up (``MAX_ARROW_VALUES``: in ``columns``).
"""

from expr.data.store.columns import MAX_ARROW_VALUES, ConcatColumns, RowChunks, write_set_column
from expr.data.store.format import (
    DATA_FOLDERS,
    DEFAULT_AUDIO,
    DEFAULT_VISUAL,
    FORMAT_VERSION,
    MTL_LABELS,
    PROBLEMS,
    READABLE_VERSIONS,
    SIDES,
    SPLITS,
    TASK_LABELS,
    VIDEO_COLUMNS,
    StoreError,
    VideoRecord,
    problem_lines,
    video_name,
)
from expr.data.store.read import FrameStore
from expr.data.store.span import audio_overlap, video_of_rows
from expr.data.store.verify import (
    StoreChecks,
    check_files,
    data_files,
    read_header,
    sha256,
    verify_files,
    write_header,
)
from expr.data.store.write import add_sets, datasets_column_sum, write_store

__all__ = [
    "DATA_FOLDERS",
    "DEFAULT_AUDIO",
    "DEFAULT_VISUAL",
    "FORMAT_VERSION",
    "MAX_ARROW_VALUES",
    "MTL_LABELS",
    "PROBLEMS",
    "READABLE_VERSIONS",
    "SIDES",
    "SPLITS",
    "TASK_LABELS",
    "VIDEO_COLUMNS",
    "ConcatColumns",
    "FrameStore",
    "RowChunks",
    "StoreChecks",
    "StoreError",
    "VideoRecord",
    "add_sets",
    "audio_overlap",
    "check_files",
    "data_files",
    "datasets_column_sum",
    "problem_lines",
    "read_header",
    "sha256",
    "verify_files",
    "video_name",
    "video_of_rows",
    "write_header",
    "write_set_column",
    "write_store",
]
