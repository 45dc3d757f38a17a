"""The batch result in the layout of ``quax export`` (quax_faust/client.py), built from files.parquet.

The per-file spectra are streamed from the Parquet written by Spark into memory-mapped .npy files
(so a week-long run -- 144,000 files, 3.5 GB per array -- needs no driver memory), then stored in
``run.npz`` exactly as ``np.savez`` would (a ZIP_STORED archive of ``<key>.npy`` members).
``file_acquired_at_s`` (when the DAQ acquired each file, Unix s, NaN unknown) is the views' per-file
``acquired_at_s``.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from numpy.lib.format import open_memmap, write_array

from .recompute import frequency_axis_hz

SMALL_COLUMNS = ["file_index", "n_slices", "slices_in_file", "complete", "problem", "slice_len",
                 "sample_rate_hz", "tail_samples", "n_messages", "duplicate_slices", "latency_s",
                 "acquired_at_s"]


def read_file_table(files_parquet: Path) -> pa.Table:
    """Every file's counts and flags (no spectra), sorted by file_index."""
    table = ds.dataset(str(files_parquet), format="parquet").to_table(columns=SMALL_COLUMNS)
    return table.sort_by("file_index")


def arrays(files_parquet: Path, small: pa.Table, scratch: Path, *, run: str, n_slices: int,
           run_mean: np.ndarray, run_std: np.ndarray, run_sem: np.ndarray,
           lo_frequency_hz: float) -> dict[str, np.ndarray]:
    """The export layout of the complete files of ``small`` (read_file_table) and the run's
    statistics (recompute.run_statistics); file_mean/file_std are (n_files, slice_len) float64
    memory maps under scratch."""
    done = small.filter(small.column("complete"))
    slice_len = int(done.column("slice_len")[0].as_py())
    rate = float(done.column("sample_rate_hz")[0].as_py())
    index = done.column("file_index").to_numpy()
    row_of = {int(i): k for k, i in enumerate(index)}
    scratch.mkdir(parents=True, exist_ok=True)
    spectra = {name: open_memmap(scratch / f"file_{name}.npy", mode="w+", dtype=np.float64,
                                 shape=(len(index), slice_len)) for name in ("mean", "std")}
    dataset = ds.dataset(str(files_parquet), format="parquet")
    for batch in dataset.to_batches(columns=["file_index", "mean", "std"], filter=ds.field("complete"),
                                    batch_size=256):
        rows = [row_of[int(i)] for i in batch.column("file_index").to_numpy()]
        for name, target in spectra.items():
            flat = batch.column(name).flatten().to_numpy(zero_copy_only=False)
            target[rows] = flat.reshape(len(rows), slice_len)
    for target in spectra.values():
        target.flush()
    return {
        "frequency_hz": frequency_axis_hz(slice_len, rate, lo_frequency_hz),
        "run_mean": run_mean,
        "run_sem": run_sem,
        "run_std": run_std,
        "n_slices_total": np.int64(n_slices),
        "file_index": index.astype(np.int64),
        "file_mean": spectra["mean"],
        "file_std": spectra["std"],
        "file_n_slices": done.column("n_slices").to_numpy().astype(np.int64),
        "file_latency_s": done.column("latency_s").to_numpy(zero_copy_only=False).astype(np.float64),
        "file_acquired_at_s": _floats(done.column("acquired_at_s")),
        "run": np.array(run),
    }


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """A float64 column as an array, null (unknown) as NaN."""
    return column.fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float64)


def write_npz(data: dict[str, np.ndarray], out: Path) -> Path:
    """Write data as np.savez does (np.load reads it), copying memory maps from disk in chunks."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in data.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                write_array(member, np.asanyarray(value) if not isinstance(value, np.memmap)
                            else value.view(np.ndarray), allow_pickle=False)
    return out


def scratch_dir(parent: Path | None) -> Path:
    """A fresh directory for the memory maps (under parent, or the system temp directory)."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="quax-reprocess-", dir=parent))
