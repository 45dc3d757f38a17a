"""An axion's signal in a run's data: its power per frequency bin over the noise, at any resolution.

Pure numpy/scipy (docs/analysis.md, "The campaign analysis"). An axion of rest frequency f_a and
coupling g2 = (g/g_KSVZ)**2 adds to the receiver's noise (density k_B T_sys, W/Hz, flat) the power
density g2 P_KSVZ(f_a) L(f) F(f - f_a): its whole power on resonance (axion.signal_power_w) times
the cavity Lorentzian at f times the halo line density (1/Hz). The signal is itself Gaussian noise,
so the data are noise whose density is multiplied by (1 + s(f)), s = that density over k_B T_sys.
In bin j of width b the relative excess is

    s_j = g2 P_KSVZ(f_a) L(f_j) Lq_j / (k_B T_sys b),    Lq_j: the line's share of bin j,

which is g2 a_j of run_excess.py (with P_KSVZ taken at f_a, not f_j: 1e-4 apart over a line).
Two kinds of bins: a slice periodogram's (``axion_periodogram_excess``: the density seen through
the slices' boxcar window, which leaks the line's sharp onset into the bins around it;
synthetic_campaign draws run averages from it), and a raw file's FFT bins
(``axion_rectangular_excess``: the density averaged between the bin's edges, exact for bins ~2 Hz
wide against the line's kHz; ``axion_psd_excess``, for core.synth).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quax_faust.core.synth import PsdExcess
from quax_faust.search.axion import (
    CAVITY_FIELDS,
    Cavity,
    halo_line_cdf,
    halo_width_hz,
    ksvz_coupling_gev,
    signal_power_w,
)

PERIODOGRAM_OVERSAMPLE = 64
"""Cells per periodogram bin on which ``axion_periodogram_excess`` integrates the line (10 Hz cells
for 651 Hz bins: 1024 cells move the expectation by < 2e-5 of its peak; ~6 ms per run and axion)."""
LINE_EXTENT_SCALES = 40.0
"""The line is computed from f_a to f_a + 40 f_a beta**2/3 (112 kHz at 10.4 GHz); beyond lies
gammaincc(3/2, 40) = 5e-17 of its power."""


@dataclass(frozen=True)
class Axion:
    """An injected axion: rest frequency (Hz) and coupling as (g/g_KSVZ)**2 at that frequency."""

    frequency_hz: float
    g2: float

    def line_extent_hz(self) -> float:
        """Width of the line computed above the rest frequency, Hz (LINE_EXTENT_SCALES scales)."""
        return LINE_EXTENT_SCALES * float(halo_width_hz(self.frequency_hz)) / 3


def axion_rectangular_excess(rf_frequency_hz: np.ndarray, bin_width_hz: float, cavity: Cavity,
                             axion: Axion) -> np.ndarray:
    """s_j of rectangular bins centred at rf_frequency_hz: the axion's power between each bin's
    edges over k_B T_sys b (shape of rf_frequency_hz, dimensionless). Exact for a whole file's
    FFT bins; a slice periodogram's bins leak (``axion_periodogram_excess``)."""
    lower = rf_frequency_hz - bin_width_hz / 2 - axion.frequency_hz
    share = halo_line_cdf(lower + bin_width_hz, axion.frequency_hz) - halo_line_cdf(lower, axion.frequency_hz)
    return _resonant_power_w(cavity, axion) * cavity.lorentzian(rf_frequency_hz) * share / cavity.noise_power_w(bin_width_hz)


def axion_periodogram_excess(lo_frequency_hz: float, n_bins: int, sample_rate_hz: float, cavity: Cavity,
                             axion: Axion, oversample: int = PERIODOGRAM_OVERSAMPLE) -> np.ndarray:
    """s_j of the boxcar periodogram of n_bins-sample slices (bins fs/n_bins wide, fftshifted as
    core.dsp.frequency_axis_hz, RF = LO + baseband): the expected relative excess of a run
    average, (n_bins,) dimensionless, as raw data hold it (a quax synth file's slices).

    The density (cavity Lorentzian at each frequency of the line, the line cut at +-fs/2 as the
    raw files cut it) on cells oversample times finer than a bin, each spread uniformly over its
    cell, seen through the Fejer kernel: sum over |m| < L of (1 - |m|/L) rho_m exp(-2 pi i m k/L),
    rho_m the density's autocorrelation at lag m/fs over fs. The campaign analysis's a_j Lq
    (axion.windowed_line_shape) is this with the Lorentzian at the bin centre.
    """
    n_fine = n_bins * oversample
    band = _fft_band(axion, lo_frequency_hz, n_fine, sample_rate_hz)
    if band is None:
        return np.zeros(n_bins)
    fine_hz = sample_rate_hz / n_fine
    cells = np.arange(band[0], band[1] + 1)
    spread = np.zeros(n_fine)
    spread[cells % n_fine] = axion_rectangular_excess(lo_frequency_hz + cells * fine_hz, fine_hz, cavity, axion)
    lag = np.arange(n_bins)
    autocorrelation = np.conj(np.fft.rfft(spread)[:n_bins]) / n_fine * np.sinc(lag / n_fine) * (1 - lag / n_bins)
    folded = autocorrelation.copy()  # lag m and m - L are one term of the period-L series
    folded[1:] += np.conj(autocorrelation[:0:-1])  # rho at lag m - L is conj(rho at L - m)
    return np.fft.fftshift(np.fft.fft(folded).real)


def _resonant_power_w(cavity: Cavity, axion: Axion) -> float:
    """The axion's whole power on resonance, W."""
    g_gev = np.sqrt(axion.g2) * ksvz_coupling_gev(axion.frequency_hz)
    return float(signal_power_w(g_gev, axion.frequency_hz, cavity, on_resonance=True))


def lo_and_cavity(fields: Mapping[str, Any]) -> tuple[float, Cavity]:
    """(lo_frequency_hz, Cavity) of a run's metadata; ValueError naming every missing or bad field."""
    missing = [name for name in ("lo_frequency_hz",) + CAVITY_FIELDS if fields.get(name) is None]
    if missing:
        raise ValueError(f"an axion's signal needs the run's {', '.join(missing)} (metadata missing)")
    return float(fields["lo_frequency_hz"]), Cavity.from_metadata(fields)


def _fft_band(axion: Axion, lo_frequency_hz: float, n_samples: int, sample_rate_hz: float) -> tuple[int, int] | None:
    """Signed FFT indices (first, last) of the bins of a file of n_samples that the axion's line
    reaches, or None when it lies wholly outside the baseband [-fs/2, fs/2)."""
    bin_hz = sample_rate_hz / n_samples
    start = (axion.frequency_hz - lo_frequency_hz) / bin_hz
    first = max(math.floor(start - 0.5), -(n_samples // 2))
    last = min(math.ceil(start + axion.line_extent_hz() / bin_hz + 0.5), (n_samples - 1) // 2)
    return (first, last) if first <= last else None


def axions_in_band(axions: Sequence[Axion], lo_frequency_hz: float, sample_rate_hz: float) -> tuple[Axion, ...]:
    """The axions whose line (from f_a to f_a + line_extent_hz) reaches into the baseband
    LO +- fs/2 (the others add nothing there)."""
    low, high = lo_frequency_hz - sample_rate_hz / 2, lo_frequency_hz + sample_rate_hz / 2
    return tuple(a for a in axions if a.frequency_hz < high and a.frequency_hz + a.line_extent_hz() > low)


def axion_psd_excess(axions: Sequence[Axion], fields: Mapping[str, Any], n_samples: int,
                     sample_rate_hz: float) -> PsdExcess | None:
    """The relative excess s of the noise density at the FFT bins (fs/n_samples Hz wide) of a
    raw file of n_samples, for core.synth.synth_file; None if no axion's line is in the band.

    fields: the run's metadata (lo_frequency_hz and the cavity, quax_faust.core.run_meta names);
    the RF frequency of baseband f is LO + f. Parts of a line beyond +-fs/2 are left out: the
    receiver's anti-alias filter removes them. Cost ~0.1 s per line at 2**23 samples, once per run.
    """
    lo, cavity = lo_and_cavity(fields)
    bands = [band for axion in axions if (band := _fft_band(axion, lo, n_samples, sample_rate_hz))]
    if not bands:
        return None
    first, last = min(b[0] for b in bands), max(b[1] for b in bands)
    bin_hz = sample_rate_hz / n_samples
    rf = lo + np.arange(first, last + 1) * bin_hz
    excess = np.zeros(rf.size)
    for axion in axions:
        excess += axion_rectangular_excess(rf, bin_hz, cavity, axion)
    return PsdExcess(n_samples, first % n_samples, excess)
