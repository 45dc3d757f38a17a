"""Compare a batch recompute with the live tables: the verdict of ``quax verify``. Pure numpy.

Equal means: the same set of finished files, the same slice count per file and for the run, the
same acquisition time per file (when both layouts carry ``file_acquired_at_s``; NaN, unknown, equals
NaN), and every file's mean spectrum and the run mean equal to within ``tolerance`` times the run's mean level
(the average of the live run mean over all bins, V**2/Hz) -- or times the bin's own power where that
is larger: the live FFT and sums are float32 and the recompute's float64 (recompute.py), so a line
40x above the noise may differ by the live chain's rounding, ~3e-7 of its own power, ~1e-5 of the
mean level.
The frequency axes must agree too (when both layouts carry ``frequency_hz``): both are offset by the
run's own LO, so a batch that took another LO than the live views is a MISMATCH, not a relabelling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

FREQUENCY_TOLERANCE_HZ = 1e-3
"""Largest |live - batch| of a frequency bin, Hz: far below a bin (651 Hz), far above float64
rounding at a 10 GHz LO (2e-6 Hz)."""


@dataclass
class Verdict:
    run: str
    tolerance: float
    level: float
    """The run's mean power level, V**2/Hz: differences are quoted relative to it."""
    n_files: int
    n_slices: int
    run_deviation: float
    """Largest |batch - live| of the run mean over all bins, relative to max(level, |live|)."""
    max_file_deviation: float
    missing_from_batch: list[int] = field(default_factory=list)
    """Files in the live tables that the batch job did not find complete in the archive."""
    missing_from_live: list[int] = field(default_factory=list)
    slice_count_differs: dict[int, tuple[int, int]] = field(default_factory=dict)
    """file -> (live, batch) slice counts."""
    power_differs: dict[int, float] = field(default_factory=dict)
    """file -> largest relative deviation of its mean spectrum."""
    acquired_differs: dict[int, tuple[float, float]] = field(default_factory=dict)
    """file -> (live, batch) acquisition times, Unix s, where they differ."""
    run_slices: tuple[int, int] = (0, 0)
    """(live, batch) slice counts of the run."""
    frequency_deviation_hz: float = 0.0
    """Largest |batch - live| of the frequency axis, Hz (infinite if the axes' lengths differ)."""

    @property
    def differing_files(self) -> list[int]:
        return sorted(set(self.missing_from_batch) | set(self.missing_from_live)
                      | set(self.slice_count_differs) | set(self.power_differs) | set(self.acquired_differs))

    @property
    def equal(self) -> bool:
        return (not self.differing_files and self.run_slices[0] == self.run_slices[1]
                and self.run_deviation <= self.tolerance
                and self.frequency_deviation_hz <= FREQUENCY_TOLERANCE_HZ)

    def lines(self) -> list[str]:
        if self.equal:
            return [f"VERDICT: EQUAL - run {self.run}: {self.n_files} files and {self.n_slices} slices "
                    f"in both; largest power difference {self.max_file_deviation:.2e} (files) and "
                    f"{self.run_deviation:.2e} (run mean) of the mean level {self.level:.4g} V**2/Hz, "
                    f"tolerance {self.tolerance:.0e}"]
        out = [f"VERDICT: MISMATCH - run {self.run}: {len(self.differing_files)} files differ: "
               + ", ".join(str(i) for i in self.differing_files[:50])
               + (" ..." if len(self.differing_files) > 50 else "")]
        if self.missing_from_batch:
            out.append(f"  in the live tables but not complete in the archive: {_short(self.missing_from_batch)}")
        if self.missing_from_live:
            out.append(f"  complete in the archive but not in the live tables: {_short(self.missing_from_live)}")
        for i, (live, batch) in sorted(self.slice_count_differs.items())[:20]:
            out.append(f"  file {i}: {live} slices live, {batch} recomputed")
        for i, (live, batch) in sorted(self.acquired_differs.items())[:20]:
            out.append(f"  file {i}: acquired at {live!r} s live, {batch!r} s recomputed")
        for i, dev in sorted(self.power_differs.items())[:20]:
            out.append(f"  file {i}: power differs by {dev:.2e} of the mean level (tolerance {self.tolerance:.0e})")
        if self.run_slices[0] != self.run_slices[1]:
            out.append(f"  run: {self.run_slices[0]} slices live, {self.run_slices[1]} recomputed")
        if self.run_deviation > self.tolerance:
            out.append(f"  run mean differs by {self.run_deviation:.2e} of the mean level")
        if not self.frequency_deviation_hz <= FREQUENCY_TOLERANCE_HZ:
            out.append(f"  frequency axis differs by {self.frequency_deviation_hz:.6g} Hz (another LO?)")
        return out


def _short(indices: list[int]) -> str:
    return ", ".join(str(i) for i in indices[:50]) + (" ..." if len(indices) > 50 else "")


@dataclass
class LiveFiles:
    """Some of the live run's finished files, as a page of the files view brings them."""

    file_index: np.ndarray
    """(n,) int64."""
    n_slices: np.ndarray
    """(n,) slices counted per file."""
    mean: np.ndarray
    """(n, n_bins) V**2/Hz: each file's mean periodogram."""
    acquired_at_s: np.ndarray | None = None
    """(n,) Unix s (NaN: unknown), or None where the live side does not carry it."""


def compare(live: dict[str, np.ndarray], batch: dict[str, np.ndarray], tolerance: float) -> Verdict:
    """Compare two runs in the ``quax export`` layout (live: client.fetch_run; batch: job.reprocess)."""
    files = LiveFiles(live["file_index"], live["file_n_slices"], live["file_mean"], live.get("file_acquired_at_s"))
    return compare_files(str(live["run"]), live["run_mean"], int(live["n_slices_total"]), live.get("frequency_hz"),
                         [files], batch, tolerance)


def compare_files(run: str, run_mean: np.ndarray, n_slices: int, frequency_hz: np.ndarray | None,
                  pages: Iterable[LiveFiles], batch: dict[str, np.ndarray], tolerance: float) -> Verdict:
    """Compare the live run (its average, and its files page by page: memory of one page, not of a
    week's 144,000 spectra) with a batch recompute in the ``quax export`` layout."""
    batch_files = {int(i): k for k, i in enumerate(batch["file_index"])}
    level = float(np.mean(run_mean))
    if not level > 0:
        raise ValueError(f"run {run}: the live run mean level is {level}, expected > 0")
    live_files: set[int] = set()
    slice_count_differs, power_differs, acquired_differs, max_dev = {}, {}, {}, 0.0
    batch_times = batch.get("file_acquired_at_s")
    for page in pages:
        for a, i in enumerate(int(i) for i in page.file_index):
            live_files.add(i)
            b = batch_files.get(i)
            if b is None:
                continue
            n_live, n_batch = int(page.n_slices[a]), int(batch["file_n_slices"][b])
            if n_live != n_batch:
                slice_count_differs[i] = (n_live, n_batch)
            if page.acquired_at_s is not None and batch_times is not None:
                at_live, at_batch = float(page.acquired_at_s[a]), float(batch_times[b])
                if at_live != at_batch and not (np.isnan(at_live) and np.isnan(at_batch)):
                    acquired_differs[i] = (at_live, at_batch)
            dev = _deviation(page.mean[a], batch["file_mean"][b], level)
            max_dev = max(max_dev, dev)
            if not dev <= tolerance:
                power_differs[i] = dev
    return Verdict(
        run=run, tolerance=tolerance, level=level, n_files=len(live_files), n_slices=n_slices,
        run_deviation=_deviation(run_mean, batch["run_mean"], level),
        max_file_deviation=max_dev,
        missing_from_batch=sorted(live_files - batch_files.keys()),
        missing_from_live=sorted(batch_files.keys() - live_files),
        slice_count_differs=slice_count_differs, power_differs=power_differs,
        acquired_differs=acquired_differs,
        frequency_deviation_hz=_axis_deviation_hz(frequency_hz, batch.get("frequency_hz")),
        run_slices=(n_slices, int(batch["n_slices_total"])))


def _axis_deviation_hz(live: np.ndarray | None, batch: np.ndarray | None) -> float:
    """max |live - batch| of two frequency axes, Hz; 0 if either is absent, infinite if their
    lengths differ or a value is not finite."""
    if live is None or batch is None:
        return 0.0
    live, batch = np.asarray(live, dtype=np.float64), np.asarray(batch, dtype=np.float64)
    if live.shape != batch.shape:
        return float("inf")
    diff = np.abs(live - batch)
    return float(np.max(diff, initial=0.0)) if np.isfinite(diff).all() else float("inf")


def _deviation(live: np.ndarray, batch: np.ndarray, level: float) -> float:
    """max over bins of |live - batch| / max(level, |live|); infinite when the shapes differ or a
    value is not finite."""
    live, batch = np.asarray(live, dtype=np.float64), np.asarray(batch, dtype=np.float64)
    if live.shape != batch.shape:
        return float("inf")
    diff = np.abs(live - batch)
    if not np.isfinite(diff).all():
        return float("inf")
    return float(np.max(diff / np.maximum(level, np.abs(live))))
