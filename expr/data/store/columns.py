"""Feature columns between numpy and Arrow files: written as one record batch streamed from flat fp16 files (never
held whole in memory), read back as zero-copy views of the memory map (:class:`RowChunks` for a column longer than
one arrow array; :class:`ConcatColumns` for several sets side by side)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class _ArrowFile:
    """A ``datasets`` folder whose one data file is written as an arrow stream, one record batch per call: no table is
    ever held whole in memory, and nothing is copied at the end. The folder's metadata (``state.json``,
    ``dataset_info.json``) and the stream's schema come from ``save_to_disk`` of an empty table of the same columns,
    so ``datasets.load_from_disk`` reads the result like any saved dataset."""

    DATA = "data-00000-of-00001.arrow"

    def __init__(self, folder: Path):
        self.folder, self.writer, self.schema = folder, None, None

    def write(self, table) -> None:
        import datasets
        import pyarrow as pa

        if self.writer is None:
            datasets.Dataset(table.slice(0, 0)).save_to_disk(str(self.folder), num_shards=1)
            with pa.memory_map(str(self.folder / self.DATA)) as source:
                self.schema = pa.ipc.open_stream(source).schema
            self.writer = pa.ipc.new_stream(str(self.folder / f".{self.DATA}.tmp"), self.schema)
        self.writer.write_table(pa.Table.from_arrays(table.columns, schema=self.schema))

    def save(self, empty) -> None:
        """Finish the folder (``empty``: the columns to save when nothing was written)."""
        import os

        if self.writer is None:
            self.write(empty)
        self.writer.close()
        os.replace(self.folder / f".{self.DATA}.tmp", self.folder / self.DATA)


def _fixed(array: np.ndarray, dim: int):
    import pyarrow as pa

    flat = np.ascontiguousarray(array, np.float16).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)


MAX_ARROW_VALUES = 2**31 - 1  # the most values Arrow IPC writes in one array


class _RawColumn:
    """Feature rows appended to a flat fp16 file, one video at a time; at the end a FixedSizeList column backed by
    the memory-mapped file, one arrow array per ``MAX_ARROW_VALUES`` values (which :class:`FrameStore` maps without
    copying) while the writer holds one video in memory."""

    def __init__(self, path: Path):
        self.path, self.rows = path, 0
        self.file = open(path, "wb")  # noqa: SIM115 - closed in column()

    def append(self, array: np.ndarray) -> None:
        if not array.size:
            return
        self.file.write(memoryview(np.ascontiguousarray(array, np.float16)).cast("B"))
        self.rows += len(array)

    def column(self, dim: int):
        import pyarrow as pa

        self.file.close()
        if not self.rows:
            return _fixed(np.zeros((0, dim)), dim)
        flat = np.memmap(self.path, np.float16, "r")
        # Arrow IPC writes arrays of at most 2^31 - 1 values: Aff-Wild2's audio column (~3.4e9 values) takes two.
        step = MAX_ARROW_VALUES // dim * dim
        chunks = []
        for start in range(0, len(flat), step):
            part = flat[start : start + step]
            values = pa.Array.from_buffers(pa.float16(), len(part), [None, pa.py_buffer(part)])
            chunks.append(pa.FixedSizeListArray.from_arrays(values, dim))
        return pa.chunked_array(chunks)


def write_set_column(folder: Path, column) -> None:
    """One feature set's folder: a ``datasets`` folder with the column ``feature`` as one record batch."""
    import pyarrow as pa

    out = _ArrowFile(folder)
    out.write(pa.table({"feature": column}))  # one record batch: the column is one contiguous buffer in the file
    out.save(None)


class RowChunks:
    """Rows of a few memory-mapped [n_i, dim] arrays, indexed as one [sum n_i, dim] array (integer arrays of any shape,
    slices, or one row): the feature columns too long for one arrow array."""

    def __init__(self, chunks: list[np.ndarray]):
        self.chunks = chunks
        self.starts = np.cumsum([0] + [len(c) for c in chunks])
        self.shape = (int(self.starts[-1]), *chunks[0].shape[1:])
        self.dtype = chunks[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self[np.arange(*index.indices(len(self)))]
        rows = np.asarray(index, np.int64)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((*rows.shape, *self.shape[1:]), self.dtype)
        for c, chunk in enumerate(self.chunks):
            mask = which == c
            if mask.any():
                out[mask] = chunk[rows[mask] - self.starts[c]]
        return out


def _in_ram(array) -> np.ndarray:
    """A private in-memory copy of a (memory-mapped) feature array, copied once."""
    return np.concatenate(array.chunks) if isinstance(array, RowChunks) else np.array(array)


def _arrow_type(dtype):
    import pyarrow as pa

    return pa.from_numpy_dtype(np.dtype(dtype))


def _fixed_to_numpy(column, dim: int, dtype=np.float16) -> np.ndarray:
    """A FixedSizeList column (ChunkedArray, memory-mapped) as one [N, dim] array: read-only zero-copy views of the
    memory map when the column has a few long chunks (stores written by :func:`write_store`: one chunk, or
    :class:`RowChunks` of two for Aff-Wild2's audio; every process on a machine then shares one copy in the page
    cache), else (a store of many small record batches) a copy filled chunk by chunk."""
    if column.type.value_type == _arrow_type(dtype) and 0 < column.num_chunks <= 8:
        flats = [chunk.flatten() for chunk in column.chunks]
        if all(f.null_count == 0 for f in flats):
            views = [f.to_numpy(zero_copy_only=True).reshape(-1, dim) for f in flats]
            return views[0] if len(views) == 1 else RowChunks(views)
    out = np.empty((len(column), dim), dtype)
    row = 0
    for chunk in column.chunks:
        values = chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        out[row : row + len(values)] = values
        row += len(values)
    return out


class ConcatColumns:
    """Several feature sets' [N, d_i] arrays of the same rows, indexed as one [N, sum d_i] array (concatenated per
    row at gather time, never copied whole)."""

    def __init__(self, arrays: list):
        self.arrays = arrays
        self.shape = (len(arrays[0]), sum(a.shape[1] for a in arrays))
        self.dtype = arrays[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        return np.concatenate([a[index] for a in self.arrays], axis=-1)
