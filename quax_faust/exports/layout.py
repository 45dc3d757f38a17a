"""What an export holds, the same in every format: the names of its arrays, their units, the numbers
kept per file, and the metadata that describes the run and how its spectra were computed."""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from quax_faust.client import FilePage, RunAverage

log = logging.getLogger(__name__)

FORMAT = "quax-export/1"
POWER_UNIT = "V**2/Hz"
FREQUENCY_UNIT = "Hz"
TIME_UNIT = "s since 1970-01-01 UTC"

RUN_ARRAYS = {  # name -> unit; each (n_bins,) float64
    "frequency_hz": FREQUENCY_UNIT,
    "run_mean": POWER_UNIT,
    "run_std": POWER_UNIT,
    "run_sem": POWER_UNIT,
}
FILE_SPECTRA = {"file_mean": ("mean", POWER_UNIT), "file_std": ("std", POWER_UNIT)}
"""Per-file spectra, (n_files, n_bins) float64: export name -> (FilePage field, unit)."""


@dataclass(frozen=True)
class FileColumn:
    name: str
    """In the export."""
    dtype: str
    unit: str
    meaning: str
    required: bool = True
    """False: a page without it (from a worker that does not serve it yet) gets NaN (unknown)."""


FILE_COLUMNS: dict[str, FileColumn] = {  # the files view's name -> the export's column, (n_files,)
    "n_slices": FileColumn("file_n_slices", "int64", "1", "whole slices averaged"),
    "tail_samples": FileColumn("file_tail_samples", "int64", "1", "samples after the last whole slice, dropped"),
    "first_produced_at_s": FileColumn("file_first_produced_at_s", "float64", TIME_UNIT,
                                      "the producer sent the file's first slices"),
    "last_produced_at_s": FileColumn("file_last_produced_at_s", "float64", TIME_UNIT,
                                     "the producer sent the file's last slices"),
    "completed_at_s": FileColumn("file_completed_at_s", "float64", TIME_UNIT, "the worker had the spectrum"),
    "latency_s": FileColumn("file_latency_s", "float64", "s", "from the last slices sent to the spectrum"),
    # Wire v2: the DAQ's acquisition time; NaN for a file sent by a producer that did not read it
    "acquired_at_s": FileColumn("file_acquired_at_s", "float64", TIME_UNIT, "the DAQ acquired the file (NaN: unknown)",
                                required=False),
}


def software() -> dict[str, str]:
    """quax-stream's version, and the git commit of the checkout it runs from (if it is one)."""
    try:
        found = {"quax_version": version("quax-stream")}
    except PackageNotFoundError:
        found = {"quax_version": "unknown (not installed)"}
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            found["git_commit"] = commit + ("-dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return found


def describe(average: RunAverage, run_metadata: dict[str, Any] | None = None,
             kafka_offsets: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata of an export of ``average``: every export writes it, as attributes or JSON.

    ``run_metadata`` is whatever is known about the run besides the data (e.g. from a run metadata
    table); it is kept as given, under "run_metadata". ``kafka_offsets``: where the tables stood in
    the Kafka log (connection.covered_offsets), under "kafka_offsets" when given."""
    return {
        "format": FORMAT,
        "run": average.run,
        "power_unit": POWER_UNIT,
        "frequency_unit": FREQUENCY_UNIT,
        "time_unit": TIME_UNIT,
        "spectrum": "Welch density, two-sided, fftshifted: per slice |FFT|**2 / (sample_rate_hz * nperseg)",
        "window": "boxcar",
        "nperseg": average.slice_len,
        "noverlap": 0,
        "sample_rate_hz": average.sample_rate_hz,
        "lo_frequency_hz": average.lo_frequency_hz,
        "bin_width_hz": average.sample_rate_hz / average.slice_len,
        "n_slices": average.n_slices,
        "n_files_in_average": int(average.file_indices.size),
        "tail_samples_dropped": average.tail_samples_dropped,
        "exported_at_s": time.time(),
        **software(),
        "run_metadata": dict(run_metadata or {}),
        **({"kafka_offsets": kafka_offsets} if kafka_offsets is not None else {}),
    }


class Tally:
    """The pages of an export as they go by: checks each and counts files and slices, so that the
    metadata written at the end says what the file holds."""

    def __init__(self, pages: Iterable[FilePage], n_bins: int):
        self.pages, self.n_bins = pages, n_bins
        self.n_files = self.n_slices = 0
        self.last_index = -1
        self.unknown: set[str] = set()

    def __iter__(self) -> Iterator[FilePage]:
        for page in self.pages:
            if page.mean.shape != (len(page), self.n_bins) or page.std.shape != page.mean.shape:
                raise ValueError(f"a page of {len(page)} files has spectra of shape {page.mean.shape} and "
                                 f"{page.std.shape}, expected ({len(page)}, {self.n_bins})")
            if len(page) and (np.any(np.diff(page.file_index) <= 0) or page.file_index[0] <= self.last_index):
                raise ValueError(f"file indices not ascending: after {self.last_index}, {page.file_index[:5]}...")
            missing = sorted(set(FILE_COLUMNS) - set(page.columns))
            if any(FILE_COLUMNS[name].required for name in missing):
                raise ValueError(f"a page of files lacks {', '.join(missing)}")
            if missing:
                page = FilePage(page.file_index, page.mean, page.std,
                                {**page.columns, **{name: np.full(len(page), np.nan) for name in missing}})
            for name in sorted(set(page.columns) - set(FILE_COLUMNS) - self.unknown):
                self.unknown.add(name)
                log.warning("the files view serves %r, which the export leaves out: give it a row in "
                            "quax_faust/exports/layout.py FILE_COLUMNS", name)
            self.n_files += len(page)
            self.n_slices += int(page.columns["n_slices"].sum())
            if len(page):
                self.last_index = int(page.file_index[-1])
            yield page

    def metadata(self, metadata: dict[str, Any]) -> dict[str, Any]:
        return {**metadata, "n_files": self.n_files, "n_slices_in_files": self.n_slices}
