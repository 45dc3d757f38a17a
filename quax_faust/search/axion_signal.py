"""An axion's signal in a run's data: its power per frequency bin over the noise, at any resolution.

Pure numpy/scipy (docs/analysis.md, "The campaign analysis"). An axion of rest frequency f_a and
coupling g2 = (g/g_KSVZ)**2 adds to the receiver's noise (density k_B T_sys, W/Hz, flat) the power
density g2 P_KSVZ(f_a) L(f) F(f - f_a): its whole power on resonance (axion.signal_power_w) times
the cavity Lorentzian at f times the halo line density (1/Hz). The signal is itself Gaussian noise,
so the data are noise whose density is multiplied by (1 + s(f)), s = that density over k_B T_sys.
Averaged over a bin of width b, s gives the relative excess

    s_j = g2 P_KSVZ(f_a) L(f_j) Lq_j / (k_B T_sys b),    Lq_j: the line's share of bin j,

which is g2 a_j of run_excess.py for the run's 651 Hz bins (with P_KSVZ taken at f_a, not f_j:
1e-4 apart over a line). ``axion_excess`` gives s_j for bins of any width: the run average's bins
(synthetic_campaign draws averages) or a raw file's FFT bins (``axion_psd_excess``, for core.synth).
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


def axion_excess(rf_frequency_hz: np.ndarray, bin_width_hz: float, cavity: Cavity, axion: Axion) -> np.ndarray:
    """s_j: the axion's expected power in bins centred at rf_frequency_hz over k_B T_sys b, the
    relative excess of the noise there (shape of rf_frequency_hz, dimensionless)."""
    g_gev = np.sqrt(axion.g2) * ksvz_coupling_gev(axion.frequency_hz)
    whole = signal_power_w(g_gev, axion.frequency_hz, cavity, on_resonance=True)
    lower = rf_frequency_hz - bin_width_hz / 2 - axion.frequency_hz
    share = halo_line_cdf(lower + bin_width_hz, axion.frequency_hz) - halo_line_cdf(lower, axion.frequency_hz)
    return whole * cavity.lorentzian(rf_frequency_hz) * share / cavity.noise_power_w(bin_width_hz)


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
        excess += axion_excess(rf, bin_hz, cavity, axion)
    return PsdExcess(n_samples, first % n_samples, excess)
