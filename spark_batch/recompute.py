"""The audit's own numerics: a run's spectra recomputed from their definition. Pure numpy/scipy.

Written apart from the live workers' code on purpose: nothing here comes from quax_faust.core.dsp or
quax_faust.core.accumulators, so a bug in those shows up as a difference in ``quax verify`` instead of
being repeated by the recompute (docs/spark.md, "An independent audit").

The definition (the same one tests/test_dsp.py holds the live chain to):

- a slice is ``slice_len`` consecutive complex samples ``i + 1j*q``; its periodogram is
  ``|DFT(slice)|**2 / (sample_rate_hz * slice_len)`` in V**2/Hz: boxcar window, no detrend,
  two-sided, i.e. one segment of ``scipy.signal.welch(..., scaling='density')``;
- a file's spectrum is the mean over its whole slices, each slice index counted once whatever was
  redelivered (= Welch's average without overlap), with the sample standard deviation (ddof=1)
  per bin, 0 for a single slice;
- the run's spectrum is the mean over every whole slice of its complete files, with the sample
  standard deviation (ddof=1) and the standard error std/sqrt(N), both NaN below 2 slices;
- every spectrum is fftshifted (bin 0 is -sample_rate_hz/2, bin slice_len//2 is 0 Hz), float64.

How it differs from the live code, deliberately: the FFT is scipy.fft in complex128 (the live one
is pyfftw in complex64), the slices are de-duplicated by their index in a plain boolean mask per
file (no serialised accumulator, no status), and the moments are float64 sums of P and P**2 pooled
over slices, files and tasks (the live run table merges (count, mean, M2) with Chan's formula).
Periodograms are non-negative with a spread comparable to their mean (exponential for noise), so
sum(P**2) - sum(P)**2/N loses only a few bits of float64, far below the float32 of the live chain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft


class RecordError(ValueError):
    """A slice message that does not fit its file. ``reason`` uses the live workers' tags
    ('inconsistent_file', 'non_finite_samples'), so the two rejection counts read alike."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def periodograms(slices: np.ndarray, sample_rate_hz: float, *, workers: int = 1) -> np.ndarray:
    """Periodogram of each slice, V**2/Hz, fftshifted.

    slices: (n_slices, slice_len) complex samples (computed in complex128 whatever the dtype).
    Returns (n_slices, slice_len) float64. ``workers``: threads of scipy.fft.
    """
    slices = np.asarray(slices)
    if slices.ndim != 2 or not np.iscomplexobj(slices):
        raise ValueError(f"slices must be complex (n_slices, slice_len), got {slices.dtype} {slices.shape}")
    spectrum = scipy.fft.fft(slices.astype(np.complex128), axis=1, workers=workers)
    power = np.abs(spectrum) ** 2 / (sample_rate_hz * slices.shape[1])
    return scipy.fft.fftshift(power, axes=1)


def frequency_axis_hz(slice_len: int, sample_rate_hz: float, lo_frequency_hz: float = 0.0) -> np.ndarray:
    """Bin centre frequencies (Hz) in the fftshifted order, (slice_len,) float64, plus the LO."""
    return scipy.fft.fftshift(scipy.fft.fftfreq(slice_len, d=1.0 / sample_rate_hz)) + lo_frequency_hz


@dataclass
class FileSums:
    """One file's whole slices, each slice index counted once: sums of their periodograms.

    A slice message is anything with the attributes of quax_faust.core.wire.SliceBatch: first_slice,
    slices_in_file, tail_samples, sample_rate_hz, produced_at_s, acquired_at_s and samples
    (slice_count, slice_len). The first copy of a slice index counts; later copies only add to
    duplicate_slices. The file's acquisition time is the earliest known (not NaN) one of the
    messages that counted slices, NaN if none knew it.
    """

    file_index: int
    slices_in_file: int
    slice_len: int
    tail_samples: int
    sample_rate_hz: float
    counted: np.ndarray
    """(slices_in_file,) bool: slice indices already counted."""
    power_sum: np.ndarray | None
    """(slice_len,) float64 sum of the counted periodograms, V**2/Hz; None after ``release``."""
    power_sumsq: np.ndarray | None
    """(slice_len,) float64 sum of their squares, (V**2/Hz)**2."""
    n_slices: int = 0
    duplicate_slices: int = 0
    first_produced_at_s: float = float("inf")
    last_produced_at_s: float = float("-inf")
    acquired_at_s: float = float("nan")
    """When the DAQ acquired the file, Unix seconds; NaN: unknown."""

    @classmethod
    def for_message(cls, file_index: int, message) -> "FileSums":
        slice_len = int(message.samples.shape[1])
        return cls(file_index, int(message.slices_in_file), slice_len, int(message.tail_samples),
                   float(message.sample_rate_hz), np.zeros(int(message.slices_in_file), dtype=bool),
                   np.zeros(slice_len), np.zeros(slice_len))

    @property
    def complete(self) -> bool:
        return self.n_slices == self.slices_in_file

    def add(self, message, *, workers: int = 1) -> int:
        """Count the message's slices not counted before; return how many that was.

        Raises RecordError, changing nothing, if the message's file shape differs from the first
        message's or a slice to be counted holds NaN/Inf.
        """
        samples = np.asarray(message.samples)
        shape = {"slices_in_file": int(message.slices_in_file), "slice_len": int(samples.shape[1]),
                 "tail_samples": int(message.tail_samples), "sample_rate_hz": float(message.sample_rate_hz)}
        for name, value in shape.items():
            if value != getattr(self, name):
                raise RecordError("inconsistent_file", f"file {self.file_index}: {name} {value} differs "
                                  f"from {getattr(self, name)} in its first message")
        first, count = int(message.first_slice), int(samples.shape[0])
        if first + count > self.slices_in_file:
            raise RecordError("inconsistent_file", f"file {self.file_index}: slices {first}..{first + count - 1} "
                              f"beyond its {self.slices_in_file} slices")
        new = ~self.counted[first:first + count]
        n_new = int(np.count_nonzero(new))
        if n_new:
            if self.power_sum is None:
                raise RuntimeError(f"file {self.file_index}: sums released before every slice was counted")
            fresh = samples if n_new == count else samples[new]
            power = periodograms(fresh, self.sample_rate_hz, workers=workers)
            if not (np.isfinite(fresh).all() and np.isfinite(power).all()):
                raise RecordError("non_finite_samples", f"file {self.file_index}: slices "
                                  f"{first}..{first + count - 1} hold NaN/Inf")
            self.power_sum += power.sum(axis=0)
            self.power_sumsq += np.square(power).sum(axis=0)
            self.counted[first:first + count] = True
            self.n_slices += n_new
            self.first_produced_at_s = min(self.first_produced_at_s, float(message.produced_at_s))
            self.last_produced_at_s = max(self.last_produced_at_s, float(message.produced_at_s))
            self.acquired_at_s = float(np.fmin(self.acquired_at_s, float(message.acquired_at_s)))
        self.duplicate_slices += count - n_new
        return n_new

    def release(self) -> None:
        """Drop the sums of a complete file (they have been handed on); repeats are still counted."""
        if not self.complete:
            raise RuntimeError(f"file {self.file_index}: {self.n_slices} of {self.slices_in_file} slices counted")
        self.power_sum = self.power_sumsq = None


def mean_and_std(n_slices: int, power_sum: np.ndarray, power_sumsq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A file's mean periodogram and sample standard deviation (ddof=1; zeros for one slice), V**2/Hz."""
    if n_slices < 1:
        raise ValueError("no slice counted")
    mean = power_sum / n_slices
    if n_slices == 1:
        return mean, np.zeros_like(mean)
    return mean, np.sqrt(_variance(n_slices, power_sum, power_sumsq))


def run_statistics(n_slices: int, power_sum: np.ndarray, power_sumsq: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run's mean, sample standard deviation (ddof=1) and standard error std/sqrt(N) per bin,
    V**2/Hz, from sums over all its N counted slices; std and sem are NaN below 2 slices."""
    if n_slices < 1:
        raise ValueError("no slice counted")
    mean = power_sum / n_slices
    if n_slices == 1:
        return mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan)
    std = np.sqrt(_variance(n_slices, power_sum, power_sumsq))
    return mean, std, std / np.sqrt(n_slices)


def sums_from_mean_and_std(n_slices: int, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sums (of P, of P**2) over n_slices periodograms whose mean and sample std are given."""
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    return n_slices * mean, (n_slices - 1) * std * std + n_slices * mean * mean


def _variance(n: int, power_sum: np.ndarray, power_sumsq: np.ndarray) -> np.ndarray:
    # Clipped at 0: a constant bin's two sums cancel to rounding, which may come out negative.
    return np.maximum(power_sumsq - power_sum * power_sum / n, 0.0) / (n - 1)
