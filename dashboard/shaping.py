"""Pure data shaping for the live dashboard: worker JSON and /metrics text in, plot columns out.

No HTTP, no Bokeh: everything here is a function of its arguments (plus one small rate history),
so it is unit-tested without a browser (tests/test_dashboard_shaping.py). Powers are two-sided per
bin power densities in V**2/Hz as the tables hold them; frequencies in Hz unless a name says kHz.
"""

from __future__ import annotations

import csv
import io
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from quax_faust.core import run_meta
from quax_faust.search.baseline import (baseline_residual_variance, normalised_excess, savgol_baseline,
                                        window_bins)
from quax_faust.search.spectrum_search import search_spectrum, searched_bins
from quax_faust.search_settings import config_from_settings
from quax_faust.settings import Settings

# --- runs and files ------------------------------------------------------------------------------


def choose_run(runs: Sequence[Mapping[str, Any]], wanted: str | None = None) -> str | None:
    """The run to show: ``wanted`` if the tables hold it, else the most recently updated one.

    runs: the ``runs`` list of ``/quax/runs/`` (each with ``run`` and ``last_completed_at_s``).
    """
    names = {r["run"] for r in runs}
    if wanted is not None and wanted in names:
        return wanted
    if not runs:
        return None
    newest = max(runs, key=lambda r: (r.get("last_completed_at_s") or float("-inf"), r["run"]))
    return newest["run"]


def run_version(summary: Mapping[str, Any]) -> tuple:
    """What changes whenever a file is folded into a run (to skip re-reading an unchanged run)."""
    return summary.get("n_files"), summary.get("n_slices"), summary.get("last_completed_at_s")


def waterfall_indices(file_indices: Sequence[int], n_rows: int) -> list[int]:
    """The file indices the waterfall shows: the ``n_rows`` highest of the run, ascending."""
    if n_rows < 1:
        raise ValueError(f"the waterfall needs at least one row, got n_rows={n_rows}")
    return sorted(file_indices)[-n_rows:]


def files_to_fetch(file_indices: Sequence[int], seen: Iterable[int], n_rows: int) -> tuple[list[int], list[int]]:
    """Split the run's unseen files into (with spectrum: inside the waterfall, metadata only: older).

    Files fold out of order (four partitions), so "new" is a set difference, not "after the last".
    """
    seen = set(seen)
    recent = set(waterfall_indices(file_indices, n_rows)) if file_indices else set()
    new = sorted(set(file_indices) - seen)
    return [i for i in new if i in recent], [i for i in new if i not in recent]


def as_array(values: Sequence[float | None]) -> np.ndarray:
    """JSON list (null for NaN) -> float64 array."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


# --- spectra -------------------------------------------------------------------------------------


def frequency_khz(frequency_hz: np.ndarray, lo_frequency_hz: float) -> np.ndarray:
    """Plot axis: offset from the local oscillator in kHz (the absolute Hz stay in the hover)."""
    return (np.asarray(frequency_hz, dtype=np.float64) - lo_frequency_hz) / 1e3


def run_lo_frequency_hz(run_doc: Mapping[str, Any], fallback_hz: float) -> float:
    """The run's own LO (Hz) from its view's ``metadata``; ``fallback_hz`` (the setting) only for a
    run recorded before metadata existed, as the workers do."""
    return run_meta.lo_frequency_hz(run_doc.get("metadata") or {}, fallback_hz)


def frequency_axis_label(lo_frequency_hz: float) -> str:
    """The kHz axis' label, naming the LO it is offset from."""
    if lo_frequency_hz == 0:
        return "frequency (kHz)"
    return f"frequency − LO (kHz), LO = {lo_frequency_hz:.6g} Hz"


def file_standard_error(std: np.ndarray, n_slices: int) -> np.ndarray:
    """Standard error of a file's mean spectrum, sigma/sqrt(n) per bin (V**2/Hz).

    std: (n_bins,) scatter of the single-slice periodograms of the file; n_slices: slices averaged.
    """
    if n_slices < 1:
        raise ValueError(f"a file spectrum needs at least one slice, got n_slices={n_slices}")
    return np.asarray(std, dtype=np.float64) / math.sqrt(n_slices)


def band(mean: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean - err, mean + err), the edges of a ±1 sigma band."""
    return mean - err, mean + err


def relative_deviation_percent(file_mean: np.ndarray, run_mean: np.ndarray) -> np.ndarray:
    """Waterfall colour: 100 * (file / run average - 1) per bin, float32 (NaN where run <= 0)."""
    run_mean = np.asarray(run_mean, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(run_mean > 0, np.asarray(file_mean) / run_mean, np.nan)
    return (100.0 * (ratio - 1.0)).astype(np.float32)


def waterfall_colour_limit_percent(n_slices_per_file: int, n_sigma: float = 4.0) -> float:
    """Half-range of the waterfall colour scale: n_sigma times a file's relative noise, in percent.

    A periodogram bin scatters by 100 % per slice, so a file mean of n slices by 100/sqrt(n) %:
    pure noise fills the scale faintly and a drift or a transient line of a few sigma stands out.
    """
    return n_sigma * 100.0 / math.sqrt(max(n_slices_per_file, 1))


WATERFALL_COLUMNS = ("image", "x", "dw", "y", "dh", "file_index", "acquired_at_s", "acquired_utc")


def known_time_s(value: float | None) -> float:
    """A time of a view (Unix s; null when unknown) as a float, NaN when unknown."""
    return math.nan if value is None else float(value)


def utc_label(time_s: float | None) -> str:
    """'2026-11-30 02:41:07 UTC' for a Unix time (s), '' when unknown (None or NaN)."""
    if time_s is None or not math.isfinite(time_s):
        return ""
    return datetime.fromtimestamp(time_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def waterfall_row(file_index: int, deviation_percent: np.ndarray, freq_khz: np.ndarray,
                  acquired_at_s: float | None = None) -> dict[str, list]:
    """One file as one row of the waterfall image source (a 1 x n_bins image at y = file_index),
    with the file's acquisition time (Unix s, NaN unknown) and its UTC label ('' unknown)."""
    bin_khz = float(freq_khz[1] - freq_khz[0]) if len(freq_khz) > 1 else 1.0
    return {"image": [np.asarray(deviation_percent, dtype=np.float32).reshape(1, -1)],
            "x": [float(freq_khz[0]) - bin_khz / 2], "dw": [bin_khz * len(freq_khz)],
            "y": [file_index - 0.5], "dh": [1.0], "file_index": [file_index],
            "acquired_at_s": [known_time_s(acquired_at_s)], "acquired_utc": [utc_label(acquired_at_s)]}


def waterfall_rows(spectra: Mapping[int, np.ndarray], run_mean: np.ndarray, freq_khz: np.ndarray,
                   acquired_at_s: Mapping[int, float | None] | None = None) -> dict[str, list]:
    """The whole waterfall: each file's mean spectrum (by file index) relative to run_mean, each
    row with its file's acquisition time where ``acquired_at_s`` (by file index) knows it."""
    acquired_at_s = acquired_at_s or {}
    return merge_rows([waterfall_row(i, relative_deviation_percent(spectra[i], run_mean), freq_khz,
                                     acquired_at_s.get(i)) for i in sorted(spectra)]) \
        or {k: [] for k in WATERFALL_COLUMNS}


def waterfall_needs_renormalising(n_files: int, n_files_when_normalised: int) -> bool:
    """Whether to recompute every waterfall row against the current run average.

    A streamed row is compared with the average as it stood when its file arrived (the first file
    with itself: all zero). Redoing the whole window each time the run has doubled keeps every row
    close to "this file against the run" for O(log n_files) full re-sends over a run.
    """
    return n_files >= 2 * max(n_files_when_normalised, 1)


def merge_rows(rows: Sequence[Mapping[str, list]]) -> dict[str, list]:
    """Concatenate single-row column dicts (same keys) into one dict for a single stream()."""
    if not rows:
        return {}
    return {key: [v for row in rows for v in row[key]] for key in rows[0]}


# --- the normalised excess -----------------------------------------------------------------------


@dataclass(frozen=True)
class Excess:
    """The excess panel of one run mean: all arrays (n_bins,) float64."""

    baseline: np.ndarray
    """Smooth baseline B, V**2/Hz (drawn dashed over the run average)."""
    excess: np.ndarray
    """Normalised excess in sigma: standard normal per bin for pure noise; NaN where not searched."""
    noise_scale: float
    """How much wider than N slices promise the search found the excess (1.0 normally; more when
    the data hold fewer independent slices, e.g. repeated files). Thresholds are scaled by it."""


def baseline_and_excess(mean: np.ndarray, n_slices: int, sample_rate_hz: float,
                        settings: Settings) -> Excess:
    """The run mean's baseline and normalised excess, exactly as the candidate search sees them.

    mean: (n_bins,) run mean P over n_slices slices, V**2/Hz, fftshifted. Runs
    quax_faust.search.spectrum_search.search_spectrum (knobs baseline_window_hz, baseline_polyorder,
    line_width_hz, search_band_fraction, dc_exclude_hz) and spreads its per-block standardised
    excess (P - B)/B * sqrt(N), fit noise included, over the bins of each block; the DC bins and
    the band edges are not searched and stay NaN. If the search refuses the spectrum (e.g. some
    bins unreadable), the plain Savitzky-Golay fit with those bins bridged and
    baseline.normalised_excess are shown instead.
    """
    mean = np.asarray(mean, dtype=np.float64)
    n_bins = mean.size
    n_slices = max(int(n_slices), 1)
    excess = np.full(n_bins, np.nan)
    try:
        result = search_spectrum(mean, n_slices, sample_rate_hz, config=config_from_settings(settings))
    except ValueError:
        return _plain_excess(mean, n_slices, sample_rate_hz, settings)
    for offset in range(result.block_len):
        excess[result.block_start + offset] = result.standardised
    return Excess(result.baseline, excess, float(result.noise_scale_applied))


def _plain_excess(mean: np.ndarray, n_slices: int, sample_rate_hz: float, settings: Settings) -> Excess:
    """Per-bin excess over a Savitzky-Golay baseline with unreadable and DC bins bridged."""
    n_bins = mean.size
    searched, dc = searched_bins(n_bins, sample_rate_hz, settings.search_band_fraction,
                                 settings.dc_exclude_hz)
    unreadable = ~np.isfinite(mean) | (mean <= 0)
    if (dc | unreadable).all():
        return Excess(np.full(n_bins, np.nan), np.full(n_bins, np.nan), 1.0)
    window = window_bins(settings.baseline_window_hz, sample_rate_hz / n_bins)
    window = min(window, n_bins if n_bins % 2 else n_bins - 1)
    order = min(settings.baseline_polyorder, window - 1)
    baseline = savgol_baseline(mean, window, order, exclude=dc | unreadable)
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = normalised_excess(
            mean, baseline, n_slices, residual_variance=baseline_residual_variance(window, order))
    excess[~searched | unreadable | ~(baseline > 0)] = np.nan
    return Excess(baseline, excess, 1.0)


def robust_scatter(values: np.ndarray) -> float:
    """Standard deviation of normal-ish values estimated from their median absolute deviation.

    Used on the normalised excess: 1.0 for pure noise of independent slices, and blind to a few
    strong lines. NaN values are ignored; NaN when none are left.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def bins_above(excess: np.ndarray, threshold_sigma: float) -> np.ndarray:
    """Indices of the bins whose normalised excess exceeds threshold_sigma (NaN never does)."""
    excess = np.asarray(excess, dtype=np.float64)
    return np.flatnonzero(np.nan_to_num(excess, nan=-np.inf) > threshold_sigma)


def candidate_columns(doc: Mapping[str, Any] | None, lo_frequency_hz: float) -> dict[str, list]:
    """The candidates view's current candidates as plot/table columns (empty when there are none).

    Records of candidates that faded below threshold (``above_threshold`` false) are left out.
    """
    items = [c for c in (doc or {}).get("candidates") or [] if c.get("above_threshold", True)]
    freq = [float(c["frequency_hz"]) for c in items]
    return {
        "frequency_hz": freq,
        "frequency_khz": list(frequency_khz(np.array(freq, dtype=np.float64), lo_frequency_hz)),
        "significance": [math.nan if c.get("significance") is None else float(c["significance"])
                         for c in items],
        "power": [float(c["power"]) if c.get("power") is not None else math.nan for c in items],
        "first_seen_file": [c.get("first_seen_file") for c in items],
        "persistent": ["yes" if c.get("persistent") else "no" for c in items],
    }


# --- downloads -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpectrum:
    """What the run-average panel shows, as arrays of n_bins (V**2/Hz, Hz)."""

    run: str
    frequency_hz: np.ndarray
    mean: np.ndarray
    sem: np.ndarray
    std: np.ndarray
    n_slices: int
    n_files: int

    def csv_bytes(self) -> bytes:
        """One row per bin: frequency_hz, mean, sem (= std/sqrt(n_slices)), std; '#' header lines."""
        out = io.StringIO()
        out.write(f"# quax-stream run {self.run}: {self.n_files} files, {self.n_slices} slices; "
                  "power densities in V**2/Hz\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["frequency_hz", "mean", "sem", "std"])
        for row in zip(self.frequency_hz, self.mean, self.sem, self.std):
            writer.writerow([f"{v:.10g}" for v in row])
        return out.getvalue().encode()

    def npz_bytes(self) -> bytes:
        """The same arrays as a NumPy .npz (keys of quax export where they coincide)."""
        out = io.BytesIO()
        np.savez(out, frequency_hz=self.frequency_hz, run_mean=self.mean, run_sem=self.sem,
                 run_std=self.std, n_slices_total=np.int64(self.n_slices),
                 n_files=np.int64(self.n_files), run=np.array(self.run))
        return out.getvalue()


# --- health: /metrics and /quax/health/ ----------------------------------------------------------


@dataclass(frozen=True)
class WorkerCounters:
    """The counters of one worker's /metrics that the health strip uses (totals since it started)."""

    slices: float = 0.0
    files_completed: float = 0.0
    rejected: float = 0.0
    latency_sum_s: float = 0.0
    latency_count: float = 0.0
    consumer_lag_messages: float | None = None
    """Sum over the partitions this worker reports; None when the gauge is not exported."""


def parse_metrics(text: str, slices_topic: str | None = None) -> WorkerCounters:
    """WorkerCounters from a Prometheus text exposition (prometheus_client's parser).

    The lag counts only ``slices_topic`` messages when given (the gauge covers every topic the
    worker consumes; the health strip converts slice messages into seconds of data).
    """
    values = {"slices": 0.0, "files_completed": 0.0, "rejected": 0.0, "latency_sum_s": 0.0,
              "latency_count": 0.0}
    lag: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "quax_slices_total":
                values["slices"] += sample.value
            elif sample.name == "quax_files_completed_total":
                values["files_completed"] += sample.value
            elif sample.name == "quax_rejected_messages_total":
                values["rejected"] += sample.value
            elif sample.name == "quax_file_latency_seconds_sum":
                values["latency_sum_s"] += sample.value
            elif sample.name == "quax_file_latency_seconds_count":
                values["latency_count"] += sample.value
            elif sample.name == "quax_consumer_lag_messages":
                if slices_topic is None or sample.labels.get("topic") == slices_topic:
                    lag = (lag or 0.0) + sample.value
    return WorkerCounters(**values, consumer_lag_messages=lag)


def counter_increase(old: float, new: float) -> float:
    """Increase of a counter between two readings; a drop means the worker restarted from zero."""
    return new - old if new >= old else new


@dataclass
class RateHistory:
    """Recent (time, per-worker counters) readings, to turn totals into rates over a window."""

    window_s: float
    _samples: deque = field(default_factory=deque)

    def add(self, time_s: float, counters: Mapping[str, WorkerCounters]) -> None:
        self._samples.append((time_s, dict(counters)))
        while len(self._samples) > 2 and time_s - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def rates(self) -> tuple[float, float]:
        """(files/s, slices/s) over the window; NaN until two readings exist."""
        if len(self._samples) < 2:
            return math.nan, math.nan
        t0, t1 = self._samples[0][0], self._samples[-1][0]
        if t1 <= t0:
            return math.nan, math.nan
        files = slices = 0.0
        # Reading by reading, like Prometheus' increase(): a restart between two readings is seen.
        for (_, before), (_, after) in zip(list(self._samples)[:-1], list(self._samples)[1:]):
            for worker, now in after.items():
                if worker in before:
                    files += counter_increase(before[worker].files_completed, now.files_completed)
                    slices += counter_increase(before[worker].slices, now.slices)
        return files / (t1 - t0), slices / (t1 - t0)


@dataclass(frozen=True)
class Health:
    """The health strip's figures and verdict."""

    files_per_s: float
    slices_per_s: float
    realtime_factor: float
    """Seconds of detector data processed per wall-clock second (1.0 = keeping up with the DAQ)."""
    last_file_latency_s: float | None
    consumer_lag_messages: float | None
    consumer_lag_s: float | None
    """The lag as seconds of detector data waiting in Kafka."""
    rejected_messages: float
    workers_alive: int
    workers_expected: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def assess_health(*, files_per_s: float, slices_per_s: float, slice_duration_s: float,
                  slices_per_message: int, last_file_latency_s: float | None,
                  counters: Sequence[WorkerCounters], workers_expected: int,
                  behind_s: float) -> Health:
    """Figures for the health strip, and what is wrong (empty when the chain keeps up).

    counters: one entry per worker that answered. behind_s: the pipeline is "behind real time"
    when the last file took longer than this to process, or the data waiting in Kafka exceeds it.
    """
    lags = [c.consumer_lag_messages for c in counters if c.consumer_lag_messages is not None]
    lag = float(sum(lags)) if lags else None
    lag_s = lag * slices_per_message * slice_duration_s if lag is not None else None
    problems = []
    if len(counters) < workers_expected:
        problems.append(f"{workers_expected - len(counters)} of {workers_expected} workers not answering")
    if last_file_latency_s is not None and last_file_latency_s > behind_s:
        problems.append(f"behind real time: last file latency {last_file_latency_s:.1f} s > {behind_s:.1f} s")
    if lag_s is not None and lag_s > behind_s:
        problems.append(f"behind real time: {lag_s:.1f} s of data waiting in Kafka")
    return Health(files_per_s=files_per_s, slices_per_s=slices_per_s,
                  realtime_factor=slices_per_s * slice_duration_s, last_file_latency_s=last_file_latency_s,
                  consumer_lag_messages=lag, consumer_lag_s=lag_s,
                  rejected_messages=float(sum(c.rejected for c in counters)),
                  workers_alive=len(counters), workers_expected=workers_expected, problems=tuple(problems))
