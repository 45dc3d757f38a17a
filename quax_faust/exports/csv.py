"""CSV exports: the run average, one row per bin (frequency_hz, run_mean, run_std, run_sem), and the
optional long per-file CSV, one row per file and bin (file_index, frequency_hz, mean, std), written
page by page. Numbers are written with 17 significant digits (float64 read back exactly).

The header is the first line; the metadata (layout.describe) follows the data as comment lines,
``# metadata: {json}``, so that np.loadtxt(skiprows=1), pandas.read_csv(comment="#") and
spreadsheets read the numbers as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, TextIO

import numpy as np

from quax_faust.client import FilePage, RunAverage
from quax_faust.exports import layout

RUN_COLUMNS = ("frequency_hz", "run_mean", "run_std", "run_sem")
FILE_COLUMNS = ("file_index", "frequency_hz", "mean", "std")
METADATA_PREFIX = "# metadata: "


def write_run_csv(path: Path, average: RunAverage, metadata: dict[str, Any]) -> None:
    """The run average, one row per bin."""
    with open(path, "w") as out:
        out.write(",".join(RUN_COLUMNS) + "\n")
        np.savetxt(out, np.column_stack([average.frequency_hz, average.mean, average.std, average.sem]),
                   delimiter=",", fmt="%.17g")
        _write_metadata(out, metadata, "the run average per bin")


def write_files_csv(path: Path, average: RunAverage, pages: Iterable[FilePage],
                    metadata: dict[str, Any]) -> dict[str, Any]:
    """Every file's spectrum, one row per file and bin, ascending file_index then frequency."""
    tally = layout.Tally(pages, average.slice_len)
    with open(path, "w") as out:
        out.write(",".join(FILE_COLUMNS) + "\n")
        for page in tally:
            n, n_bins = page.mean.shape
            table = np.column_stack([np.repeat(page.file_index, n_bins), np.tile(average.frequency_hz, n),
                                     page.mean.ravel(), page.std.ravel()])
            np.savetxt(out, table, delimiter=",", fmt=["%d", "%.17g", "%.17g", "%.17g"])
        written = tally.metadata(metadata)
        _write_metadata(out, written, "each file's spectrum per bin")
    return written


def _write_metadata(out: TextIO, metadata: dict[str, Any], what: str) -> None:
    out.write(f"# quax export of run {metadata.get('run')}: {what}; power in {layout.POWER_UNIT}, "
              f"frequency in {layout.FREQUENCY_UNIT}\n")
    out.write(METADATA_PREFIX + json.dumps(metadata) + "\n")


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata line at the end of a CSV export ({} if it has none)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - (1 << 20)))  # the footer is well within the last MiB
        tail = f.read().decode(errors="replace")
    lines = [line for line in tail.splitlines() if line.startswith(METADATA_PREFIX)]
    return json.loads(lines[-1][len(METADATA_PREFIX):]) if lines else {}


def read_run_csv(path: Path) -> dict[str, Any]:
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    _check_header(path, RUN_COLUMNS)
    return {**{name: table[:, k] for k, name in enumerate(RUN_COLUMNS)}, "metadata": read_metadata(path)}


def read_files_csv(path: Path) -> dict[str, np.ndarray]:
    """file_index (n_files,), file_mean and file_std (n_files, n_bins) from the long CSV."""
    _check_header(path, FILE_COLUMNS)
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    indices = np.unique(table[:, 0].astype(np.int64))
    if indices.size and table.shape[0] % indices.size:
        raise ValueError(f"{path}: {table.shape[0]} rows are not the same number of bins for {indices.size} files")
    shape = (indices.size, table.shape[0] // max(indices.size, 1))
    return {"file_index": indices, "file_mean": table[:, 2].reshape(shape), "file_std": table[:, 3].reshape(shape)}


def _check_header(path: Path, columns: tuple[str, ...]) -> None:
    with open(path) as f:
        header = f.readline().strip().split(",")
    if tuple(header) != columns:
        raise ValueError(f"{path}: header {header} is not {list(columns)}")
