"""load_run: any export (.h5, .npz, .csv) back into arrays and its metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quax_faust.exports import csv, h5, layout, npz


@dataclass
class RunExport:
    """A run as exported: power in V**2/Hz per bin, frequency in Hz (fftshifted, plus the LO)."""

    metadata: dict[str, Any]
    """layout.describe's: run, units, window, nperseg, sample_rate_hz, lo_frequency_hz, versions,
    counts, run_metadata ({} for an export written before metadata existed)."""
    frequency_hz: np.ndarray
    run_mean: np.ndarray
    run_std: np.ndarray
    run_sem: np.ndarray
    file_index: np.ndarray | None = None
    """(n_files,) int64; None when the export holds no files (a .csv without its per-file CSV)."""
    file_mean: np.ndarray | None = None
    """(n_files, n_bins) float64; None also when loaded with spectra=False."""
    file_std: np.ndarray | None = None
    file_columns: dict[str, np.ndarray] = field(default_factory=dict)
    """The per-file numbers by their export name: file_n_slices, file_latency_s, file_completed_at_s..."""

    @property
    def run(self) -> str:
        return str(self.metadata.get("run", ""))

    @property
    def n_slices(self) -> int:
        return int(self.metadata["n_slices"])

    def as_dict(self) -> dict[str, Any]:
        """The arrays by their export names (the .npz layout, e.g. for quax analyse)."""
        arrays = {"frequency_hz": self.frequency_hz, "run_mean": self.run_mean, "run_std": self.run_std,
                  "run_sem": self.run_sem, "n_slices_total": np.int64(self.n_slices), "run": np.array(self.run)}
        if self.file_index is not None:
            arrays |= {"file_index": self.file_index, **self.file_columns}
        if self.file_mean is not None:
            arrays |= {"file_mean": self.file_mean, "file_std": self.file_std}
        return arrays


def load_run(path: Path, *, spectra: bool = True, per_file_csv: Path | None = None) -> RunExport:
    """Read an export written by ``quax export`` (or spark_batch's run.npz).

    ``spectra=False`` leaves out the files' spectra (for a long run, tens of GB; read parts of an
    .h5 with h5py directly instead). A .csv holds the run average only; ``per_file_csv`` adds the
    files' spectra from the long CSV written with it."""
    path = Path(path)
    if path.suffix == ".h5":
        arrays = h5.read_h5(path, spectra=spectra)
    elif path.suffix == ".npz":
        arrays = npz.read_npz(path, spectra=spectra)
    elif path.suffix == ".csv":
        arrays = csv.read_run_csv(path)
        if per_file_csv is not None:
            files = csv.read_files_csv(Path(per_file_csv))
            arrays |= files if spectra else {"file_index": files["file_index"]}
    else:
        raise ValueError(f"{path}: an export is .h5, .npz or .csv")
    metadata = dict(arrays["metadata"])
    if "run" not in metadata and "run" in arrays:  # an export without metadata
        metadata["run"] = str(arrays["run"])
    if "n_slices" not in metadata and "n_slices_total" in arrays:
        metadata["n_slices"] = int(arrays["n_slices_total"])
    columns = {c.name: arrays[c.name] for c in layout.FILE_COLUMNS.values() if c.name in arrays}
    return RunExport(metadata=metadata, frequency_hz=arrays["frequency_hz"], run_mean=arrays["run_mean"],
                     run_std=arrays["run_std"], run_sem=arrays["run_sem"], file_index=arrays.get("file_index"),
                     file_mean=arrays.get("file_mean"), file_std=arrays.get("file_std"), file_columns=columns)
