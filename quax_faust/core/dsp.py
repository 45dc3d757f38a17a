"""The spectrum: FFT of complex slices, power spectral density, averages. Pure numpy/pyfftw.

Definitions (docs/architecture.md):

- a *slice* is ``slice_len`` consecutive complex samples ``i + 1j*q`` (complex64);
- its periodogram is ``|FFT(slice)|**2 / (sample_rate_hz * slice_len)`` in V**2/Hz (boxcar window,
  no detrend, two-sided): exactly one segment of ``scipy.signal.welch(..., scaling="density")``;
- a file's spectrum is the mean periodogram over its whole slices (= Welch's average, no overlap);
- its scatter, and a run's mean over its files, come from per-bin ``Moments`` (count, mean, M2):
  std is the sample std (ddof=1) of single-slice periodograms, sem = std/sqrt(n);
- spectra are returned *fftshifted*: bin 0 is -sample_rate_hz/2, bin slice_len//2 is 0 Hz.

The FFT runs through one cached FFTW plan per (block_rows, slice_len) shape, on cache-sized blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyfftw


def frequency_axis_hz(slice_len: int, sample_rate_hz: float, lo_frequency_hz: float = 0.0) -> np.ndarray:
    """Bin centre frequencies (Hz), fftshifted, shape (slice_len,), float64, offset by the LO."""
    return np.fft.fftshift(np.fft.fftfreq(slice_len, d=1.0 / sample_rate_hz)) + lo_frequency_hz


def psd_scale(slice_len: int, sample_rate_hz: float) -> float:
    """Factor turning |FFT|**2 of one boxcar slice into a density in V**2/Hz (Welch's 'density')."""
    return 1.0 / (sample_rate_hz * slice_len)


@dataclass
class PowerSums:
    """Per-bin sums over counted slices, fftshifted, in V**2/Hz: shapes (slice_len,), float64."""

    power_sum: np.ndarray
    power_sumsq: np.ndarray
    n_slices: int


GROUP_ROWS = 16
"""Counted periodograms are summed pairwise in float32 in groups of this many, in the order they
come, and the group sums added in float64: the result is the same whatever the FFT block size."""


class _Plan:
    """One FFTW plan over an aligned (block_rows, slice_len) complex64 buffer, and the float32
    buffer the periodograms and their squares are summed in (a few hundred kB: all stays in L2)."""

    def __init__(self, block_rows: int, slice_len: int, threads: int):
        self.inp = pyfftw.empty_aligned((block_rows, slice_len), dtype=np.complex64)
        self.out = pyfftw.empty_aligned((block_rows, slice_len), dtype=np.complex64)
        self.fft = pyfftw.FFTW(self.inp, self.out, axes=(1,), direction="FFTW_FORWARD",
                               flags=("FFTW_MEASURE",), threads=threads)
        self.inp[:] = 0
        # each slice's periodogram and its square side by side (one pairwise pass sums both):
        # a block's slices after up to GROUP_ROWS - 1 left over from the block before
        self.pending = np.empty((block_rows + GROUP_ROWS - 1, 2, slice_len), dtype=np.float32)
        self.scratch = np.empty((block_rows, slice_len), dtype=np.float32)

    def block_power(self, block: np.ndarray, out: np.ndarray) -> None:
        """|FFT|**2 of block's rows (at most block_rows) into out[:, 0], its square into out[:, 1];
        out: (rows, 2, slice_len) float32.

        block is copied into the aligned input first: a view into a Kafka record is not aligned
        for FFTW's SIMD codelets (an FFTW_UNALIGNED plan on the view is 2.6x slower than the copy
        and the aligned plan). Squares of the real and imaginary parts by ufuncs into preallocated
        buffers: 10x faster than einsum over the (re, im) axis of length 2 (docs/performance.md).
        """
        rows = block.shape[0]
        self.inp[:rows] = block
        self.fft.execute()
        power, scratch = out[:, 0], self.scratch[:rows]
        np.square(self.out[:rows].real, out=power)
        np.square(self.out[:rows].imag, out=scratch)
        np.add(power, scratch, out=power)
        np.square(power, out=out[:, 1])


@lru_cache(maxsize=8)
def _plan(block_rows: int, slice_len: int, threads: int) -> _Plan:
    return _Plan(block_rows, slice_len, threads)


def plan_fft(slice_len: int, block_rows: int = 16, threads: int = 1) -> None:
    """Make (and cache) the FFTW plan power_sums will use: FFTW_MEASURE takes ~0.2 s, better paid
    when a worker starts than on its first file."""
    _plan(block_rows, slice_len, threads)


def power_sums(slices: np.ndarray, sample_rate_hz: float, *, counted: np.ndarray | None = None,
               block_rows: int = 16, threads: int = 1) -> PowerSums:
    """Sum and sum of squares of the slices' periodograms (V**2/Hz), fftshifted.

    slices: (n_slices, slice_len) complex samples. counted: optional (n_slices,) bool mask of the
    slices to include (the others, e.g. already-counted duplicates, are transformed but ignored;
    a block of block_rows slices none of which is counted is not transformed).
    Each block is transformed, squared and summed while it is in cache: the counted periodograms
    are added pairwise in float32 in groups of GROUP_ROWS, the group sums in float64 (relative
    error ~1e-7 per bin, like the float32 FFT itself). The result does not depend on block_rows.
    """
    slices = _as_slices(slices)
    n, slice_len = slices.shape
    plan = _plan(block_rows, slice_len, threads)
    pending = plan.pending
    sums = np.zeros((2, slice_len))  # of the periodograms and of their squares
    n_counted = 0
    waiting = 0  # rows of pending not yet summed, < GROUP_ROWS between blocks
    for start in range(0, n, block_rows):
        rows = min(block_rows, n - start)
        keep = None if counted is None else counted[start:start + rows]
        if keep is not None and not keep.any():
            continue
        block = pending[waiting:waiting + rows]
        plan.block_power(slices[start:start + rows], out=block)
        if keep is not None and not keep.all():  # duplicates are rare: close up the kept rows
            rows = int(np.count_nonzero(keep))
            block[:rows] = block[keep]
        n_counted += rows
        waiting += rows
        summed = waiting - waiting % GROUP_ROWS
        for first in range(0, summed, GROUP_ROWS):
            sums += _sum_rows_pairwise(pending[first:first + GROUP_ROWS])
        if summed:
            pending[:waiting - summed] = pending[summed:waiting]
            waiting -= summed
    if waiting:
        sums += _sum_rows_pairwise(pending[:waiting])
    if n_counted == 0:
        return PowerSums(np.zeros(slice_len), np.zeros(slice_len), 0)
    scale = psd_scale(slice_len, sample_rate_hz)
    power_sum, power_sumsq = np.fft.fftshift(sums, axes=1)
    return PowerSums(power_sum * scale, power_sumsq * (scale * scale), n_counted)


def _sum_rows_pairwise(block: np.ndarray) -> np.ndarray:
    """Sums along axis 0 of a (rows, ...) float array, added pairwise in place: error ~log2(rows)
    ulp instead of ~rows ulp row after row. Overwrites block; returns a view of its first row."""
    n = block.shape[0]
    while n > 1:
        half = n // 2
        block[:half] += block[n - half:n]
        n -= half
    return block[0]


@dataclass(frozen=True, eq=False)
class Moments:
    """Per-bin count, mean and M2 (sum of squared deviations from the mean) of n periodograms.

    mean: (slice_len,) float64 in V**2/Hz; m2: (slice_len,) float64 in (V**2/Hz)**2. A file's
    moments come from its sums (``from_sums``) or its spectrum (``from_std``); a run's are its files'
    merged with ``merge``, so they are those of all its slices whatever order the files come in.
    """

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def from_sums(cls, n: int, power_sum: np.ndarray, power_sumsq: np.ndarray) -> "Moments":
        """From the sum and the sum of squares of n periodograms (``PowerSums``, a file's table value).

        The cancellation in sumsq - n*mean**2 can leave M2 a few ulp below zero: ``variance`` clamps.
        """
        if n <= 0:
            raise ValueError("no slices counted")
        mean = power_sum / n
        return cls(n, mean, power_sumsq - n * mean * mean)

    @classmethod
    def from_std(cls, n: int, mean: np.ndarray, std: np.ndarray) -> "Moments":
        """From a mean and a sample standard deviation (ddof=1), as a ``FileSpectrum`` carries them."""
        return cls(n, mean, std * std * (n - 1))

    def merge(self, other: "Moments") -> "Moments":
        """The moments of both sets of periodograms together (Chan et al.'s parallel formula)."""
        if self.n == 0:
            return Moments(other.n, other.mean.copy(), other.m2.copy())
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.n * other.n / n)
        return Moments(n, mean, m2)

    def variance(self) -> np.ndarray:
        """Sample variance per bin (ddof=1), (V**2/Hz)**2; NaN where it is undefined (n < 2)."""
        if self.n < 2:
            return np.full_like(self.mean, np.nan)
        return np.maximum(self.m2 / (self.n - 1), 0.0)

    def std(self) -> np.ndarray:
        """Sample standard deviation of one periodogram per bin (ddof=1), V**2/Hz; NaN if n < 2."""
        return np.sqrt(self.variance())

    def sem(self) -> np.ndarray:
        """Standard error of the mean per bin, std/sqrt(n), V**2/Hz; NaN if n < 2."""
        return np.sqrt(self.variance() / self.n)


def mean_and_std(power_sum: np.ndarray, power_sumsq: np.ndarray, n_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """A file's per-bin mean and sample std (ddof=1) from the sums over its n_slices periodograms,
    as its spectrum carries them: one slice has std 0 (no scatter seen; the spectra topic carries
    finite numbers only)."""
    moments = Moments.from_sums(n_slices, power_sum, power_sumsq)
    return moments.mean, moments.std() if n_slices > 1 else np.zeros_like(moments.mean)


def _as_slices(slices: np.ndarray) -> np.ndarray:
    slices = np.asarray(slices)
    if slices.ndim != 2:
        raise ValueError(f"slices must be 2-D (n_slices, slice_len), got shape {slices.shape}")
    if not np.iscomplexobj(slices):
        raise ValueError(f"slices must be complex, got {slices.dtype}")
    return slices
