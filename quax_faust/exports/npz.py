"""NumPy .npz export, readable with ``np.load`` (the layout of docs/usage.md#export), written page by
page: each per-file array goes to an unnamed temporary file on the output's disk as the pages come,
then into the archive with its .npy header once the number of files is known. Memory: one page and
a copy buffer, whatever the run's length. The metadata (layout.describe) is the entry "metadata", a
JSON string.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import numpy as np

from quax_faust.client import FilePage, RunAverage
from quax_faust.exports import layout

COPY_BYTES = 1 << 20


def write_npz(path: Path, average: RunAverage, pages: Iterable[FilePage], metadata: dict[str, Any]) -> dict[str, Any]:
    """Write the export to ``path`` (overwritten); returns the metadata written (with the counts)."""
    n_bins = average.slice_len
    tally = layout.Tally(pages, n_bins)
    per_file = {"file_index": np.dtype("<i8"),
                **{name: np.dtype("<f8") for name in layout.FILE_SPECTRA},
                **{c.name: np.dtype(c.dtype).newbyteorder("<") for c in layout.FILE_COLUMNS.values()}}
    spools: dict[str, BinaryIO] = {}
    try:
        for name in per_file:
            spools[name] = tempfile.TemporaryFile(dir=Path(path).parent)
        for page in tally:
            values = {"file_index": page.file_index,
                      **{name: getattr(page, field) for name, (field, _) in layout.FILE_SPECTRA.items()},
                      **{c.name: page.columns[view_name] for view_name, c in layout.FILE_COLUMNS.items()}}
            for name, dtype in per_file.items():
                spools[name].write(np.ascontiguousarray(values[name], dtype=dtype).tobytes())
        written = tally.metadata(metadata)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            small = {"frequency_hz": average.frequency_hz, "run_mean": average.mean, "run_std": average.std,
                     "run_sem": average.sem, "n_slices_total": np.int64(average.n_slices),
                     "run": np.array(average.run), "metadata": np.array(json.dumps(written))}
            for name, value in small.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            for name, dtype in per_file.items():
                shape = (tally.n_files, n_bins) if name in layout.FILE_SPECTRA else (tally.n_files,)
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_1_0(member, {
                        "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
                    spools[name].seek(0)
                    shutil.copyfileobj(spools[name], member, COPY_BYTES)
    finally:
        for spool in spools.values():
            spool.close()
    return written


def read_npz(path: Path, *, spectra: bool = True) -> dict[str, Any]:
    """Every array (file_mean/file_std only with ``spectra``), and "metadata" ({} in an export that
    has none: written before quax-export/1, or by spark_batch)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays: dict[str, Any] = {name: npz[name] for name in npz.files
                                  if spectra or name not in layout.FILE_SPECTRA}
    arrays["metadata"] = json.loads(str(arrays["metadata"])) if "metadata" in arrays else {}
    return arrays
