"""Exclusion limits on |g_agg| from a grand spectrum, and the radiometer-equation sensitivity.

Pure numpy/scipy (docs/analysis.md, "The campaign analysis", step 8; shared/haloscope.md section 4).
Each candidate frequency measures g2 = (g/g_KSVZ)**2 with a Gaussian sigma. The one-sided upper
limit at confidence CL is g2 + z sigma (z = Phi^-1(CL) = 1.2816 at 90 %). Power-constrained
[Cowan et al. 2011]: the measured value is floored at power_floor_sigma x sigma (default 0), so
a downward fluctuation never excludes more than the experiment's sensitivity, z sigma at
g2 = 0. Couplings in GeV**-1: g_lim = |g_KSVZ(f)| sqrt(g2_lim).

The analytic sensitivity to compare with is the radiometer equation per run,
SNR_i = P_sig,i / (k_B T_sys,i) sqrt(t_i / b_mf), b_mf = pi f beta**2/3 the matched-filter
bandwidth of the halo line, runs added in quadrature: mu**2 = sum_i SNR_i**2, g2_sens = z / mu.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from quax_faust.search.axion import (
    dfsz_coupling_gev,
    halo_width_hz,
    ksvz_coupling_gev,
    matched_filter_bandwidth_hz,
)
from quax_faust.search.grand import GrandSpectrum

CONFIDENCE = 0.9


def upper_limit_g2(g2: np.ndarray, sigma: np.ndarray, confidence: float = CONFIDENCE,
                   power_floor_sigma: float = 0.0) -> np.ndarray:
    """Power-constrained one-sided upper limit on (g/g_KSVZ)**2: max(g2, floor sigma) + z sigma."""
    sigma = np.asarray(sigma, dtype=np.float64)
    return np.maximum(np.asarray(g2, dtype=np.float64), power_floor_sigma * sigma) + special.ndtri(confidence) * sigma


def radiometer_ksvz_significance(grand: GrandSpectrum) -> np.ndarray:
    """(n,) mu of a KSVZ axion at each candidate by the radiometer equation (no baseline loss,
    continuous matched filter), from the kept runs whose used bins hold the line's mean
    frequency (f + f beta**2/2); 0 where none does."""
    frequency = grand.frequency_hz
    mean_line = frequency + halo_width_hz(frequency) / 2
    grid = grand.first_grid_index + np.arange(frequency.size) + np.rint(
        (mean_line - frequency) / grand.bin_width_hz).astype(np.int64)
    bandwidth = matched_filter_bandwidth_hz(frequency)
    ksvz = ksvz_coupling_gev(frequency)
    snr_squared = np.zeros(frequency.size)
    for use in grand.runs:
        # grid is non-decreasing: the candidates whose line mean falls in the run's bins are one
        # stretch; elsewhere the run adds nothing.
        inside = slice(*np.searchsorted(grid, [use.grid_start, use.grid_start + use.response.used.size]))
        covered = use.response.used[grid[inside] - use.grid_start]
        cavity = use.cavity
        power = cavity.resonant_power_w(ksvz[inside], frequency[inside]) * cavity.lorentzian(mean_line[inside])
        snr = power / cavity.noise_power_w(1.0) * np.sqrt(use.live_time_s / bandwidth[inside])
        snr_squared[inside] += np.where(covered, snr ** 2, 0.0)
    return np.sqrt(snr_squared)


@dataclass(frozen=True)
class ExclusionCurve:
    """|g_agg| excluded at each candidate frequency (NaN where not covered), GeV**-1."""

    frequency_hz: np.ndarray
    g_limit_gev: np.ndarray
    """(n,) the power-constrained upper limit at `confidence`."""
    g_sensitivity_gev: np.ndarray
    """(n,) the limit of a measurement of exactly 0: the floor of g_limit_gev (for floor 0)."""
    g_radiometer_gev: np.ndarray
    """(n,) the same from the radiometer equation alone (radiometer_ksvz_significance)."""
    ksvz_gev: np.ndarray
    dfsz_gev: np.ndarray
    confidence: float

    @property
    def limit_over_ksvz(self) -> np.ndarray:
        """(n,) |g_lim / g_KSVZ|: 1 or below means KSVZ is excluded there."""
        return self.g_limit_gev / self.ksvz_gev


def exclusion_curve(grand: GrandSpectrum, confidence: float = CONFIDENCE,
                    power_floor_sigma: float = 0.0) -> ExclusionCurve:
    """The campaign's exclusion curve with the KSVZ and DFSZ predictions beside it."""
    ksvz = ksvz_coupling_gev(grand.frequency_hz)
    limit = upper_limit_g2(grand.g2, grand.sigma, confidence, power_floor_sigma)
    sensitivity = upper_limit_g2(np.zeros_like(grand.sigma), grand.sigma, confidence, 0.0)
    with np.errstate(divide="ignore"):
        radiometer = special.ndtri(confidence) / radiometer_ksvz_significance(grand)
    radiometer = np.where(grand.covered, radiometer, np.nan)
    return ExclusionCurve(grand.frequency_hz, ksvz * np.sqrt(limit), ksvz * np.sqrt(sensitivity),
                          ksvz * np.sqrt(radiometer), ksvz, dfsz_coupling_gev(grand.frequency_hz), confidence)
