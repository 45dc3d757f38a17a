"""Write a run to a file, the format by its suffix: .h5 (HDF5), .npz (NumPy), .csv (the run
average; the files' spectra optionally to a second, long CSV). Every output is written to a
temporary file and renamed at the end (atomic.py): an existing one is refused without ``force``,
an interrupted export leaves none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from quax_faust.client import FilePage, RunAverage
from quax_faust.exports import csv, h5, layout, npz
from quax_faust.exports.atomic import atomic_output, refuse_existing

FORMATS = (".h5", ".npz", ".csv")


def check_outputs(out: Path, per_file_csv: Path | None = None, *, force: bool = False) -> None:
    """Raise ValueError (a format, a combination, an existing output) before any work is done."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise ValueError(f"{out}: an export is {', '.join(FORMATS)}, not {out.suffix or 'without a suffix'}")
    if per_file_csv is not None and out.suffix != ".csv":
        raise ValueError(f"--per-file-csv goes with a .csv export ({out.suffix} holds the files' spectra itself)")
    for path in (out, per_file_csv):
        try:
            if path is not None:
                refuse_existing(Path(path), force)
        except FileExistsError as exc:
            raise ValueError(str(exc)) from None


def write_run(out: Path, average: RunAverage, pages: Iterable[FilePage], metadata: dict[str, Any], *,
              force: bool = False, per_file_csv: Path | None = None) -> dict[str, Any]:
    """Write the run; ``pages`` (e.g. client.iter_file_pages) are read once, one at a time, and not
    at all for a .csv without ``per_file_csv``. Returns the metadata written."""
    out = Path(out)
    check_outputs(out, per_file_csv, force=force)
    if out.suffix == ".h5":
        with atomic_output(out, force=force) as temporary:
            return h5.write_h5(temporary, average, pages, metadata)
    if out.suffix == ".npz":
        with atomic_output(out, force=force) as temporary:
            return npz.write_npz(temporary, average, pages, metadata)
    written = layout.Tally((), average.slice_len).metadata(metadata)
    if per_file_csv is not None:
        with atomic_output(Path(per_file_csv), force=force) as temporary:
            written = csv.write_files_csv(temporary, average, pages, metadata)
    with atomic_output(out, force=force) as temporary:
        csv.write_run_csv(temporary, average, written)
    return written


def write_export(data: dict[str, np.ndarray], out: Path, *, force: bool = False,
                 metadata: dict[str, Any] | None = None) -> Path:
    """Write arrays already in memory, in the layout of the .npz export (client.fetch_run's; the
    per-file columns it lacks are NaN), as .h5, .npz or .csv."""
    n_files, n_bins = np.shape(data["file_mean"])
    frequency_hz = np.asarray(data["frequency_hz"], dtype=np.float64)
    run = str(data.get("run", "run"))
    average = RunAverage(run=run, frequency_hz=frequency_hz, mean=np.asarray(data["run_mean"], dtype=np.float64),
                         std=np.asarray(data["run_std"], dtype=np.float64),
                         sem=np.asarray(data["run_sem"], dtype=np.float64),
                         n_slices=int(data["n_slices_total"]),
                         file_indices=np.asarray(data["file_index"], dtype=np.int64),
                         sample_rate_hz=float(abs(frequency_hz[1] - frequency_hz[0]) * n_bins) if n_bins > 1 else float("nan"),
                         tail_samples_dropped=0)
    columns = {name: np.full(n_files, np.nan) if c.dtype == "float64" else np.zeros(n_files, dtype=c.dtype)
               for name, c in layout.FILE_COLUMNS.items()}
    columns["n_slices"] = np.asarray(data["file_n_slices"], dtype=np.int64)
    if "file_latency_s" in data:
        columns["latency_s"] = np.asarray(data["file_latency_s"], dtype=np.float64)
    page = FilePage(average.file_indices, np.asarray(data["file_mean"], dtype=np.float64),
                    np.asarray(data["file_std"], dtype=np.float64), columns)
    write_run(out, average, [page] if n_files else [], layout.describe(average, metadata), force=force)
    return Path(out)
