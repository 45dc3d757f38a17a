"""HDF5 export: the run average, then every file's spectrum, page by page (memory: one page).

Datasets (docs/usage.md#export): frequency_hz, run_mean, run_std, run_sem (n_bins,); file_index and
the per-file columns (n_files,); file_mean, file_std (n_files, n_bins) in chunks of CHUNK_FILES files,
gzip-compressed with the byte shuffle. Each dataset has a "unit" attribute; the file's attributes are
the metadata (layout.describe), each a scalar attribute, and all of it as JSON in "metadata_json".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import h5py

from quax_faust.client import FilePage, RunAverage
from quax_faust.exports import layout

CHUNK_FILES = 64
COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


def write_h5(path: Path, average: RunAverage, pages: Iterable[FilePage], metadata: dict[str, Any]) -> dict[str, Any]:
    """Write the export to ``path`` (overwritten); returns the metadata written (with the counts)."""
    n_bins = average.slice_len
    tally = layout.Tally(pages, n_bins)
    with h5py.File(path, "w") as f:
        for name, unit in layout.RUN_ARRAYS.items():
            values = {"frequency_hz": average.frequency_hz, "run_mean": average.mean,
                      "run_std": average.std, "run_sem": average.sem}[name]
            f.create_dataset(name, data=values, dtype="f8").attrs["unit"] = unit
        spectra = {}
        for name, (_, unit) in layout.FILE_SPECTRA.items():
            spectra[name] = f.create_dataset(name, shape=(0, n_bins), maxshape=(None, n_bins), dtype="f8",
                                             chunks=(CHUNK_FILES, max(n_bins, 1)), **COMPRESSION)
            spectra[name].attrs["unit"] = unit
        columns = {"file_index": _column(f, "file_index", "int64", "1", "the DAQ's file number")}
        for column in layout.FILE_COLUMNS.values():
            columns[column.name] = _column(f, column.name, column.dtype, column.unit, column.meaning)
        n = 0
        for page in tally:
            rows = slice(n, n + len(page))
            n += len(page)
            for name, (field, _) in layout.FILE_SPECTRA.items():
                spectra[name].resize(n, axis=0)
                spectra[name][rows] = getattr(page, field)
            columns["file_index"].resize(n, axis=0)
            columns["file_index"][rows] = page.file_index
            for view_name, column in layout.FILE_COLUMNS.items():
                columns[column.name].resize(n, axis=0)
                columns[column.name][rows] = page.columns[view_name]
        written = tally.metadata(metadata)
        for key, value in written.items():
            f.attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
        f.attrs["metadata_json"] = json.dumps(written)
    return written


def _column(f: h5py.File, name: str, dtype: str, unit: str, meaning: str) -> h5py.Dataset:
    dataset = f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,), **COMPRESSION)
    dataset.attrs["unit"] = unit
    dataset.attrs["meaning"] = meaning
    return dataset


def read_h5(path: Path, *, spectra: bool = True) -> dict[str, Any]:
    """Every dataset as an array (file_mean/file_std only with ``spectra``), and "metadata"."""
    with h5py.File(path, "r") as f:
        arrays: dict[str, Any] = {name: f[name][()] for name in f if spectra or name not in layout.FILE_SPECTRA}
        arrays["metadata"] = json.loads(f.attrs["metadata_json"])
    return arrays
