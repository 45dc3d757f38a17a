"""One run of a campaign, in physical units: its excess per bin as an estimate of (g/g_KSVZ)**2.

Pure numpy/scipy (docs/analysis.md, "The campaign analysis", steps 1-3). A run's average P over
N slices and its Savitzky-Golay baseline B give the normalised excess delta = P/B - 1 per bin,
sigma = 1/sqrt(N) (radiometer equation). An axion of coupling g adds (g/g_KSVZ)**2 a_j to bin j,

    a_j = P_KSVZ(f_j) L(f_j) Lq / (k_B T_sys b)

(Lq: the line's share of bin j as the periodograms of the run's slices show it, seen through
their boxcar window, which leaks it into the bins around it: axion.windowed_line_shape with L =
the run's number of bins), so delta_j / (a_j/Lq) estimates (g/g_KSVZ)**2 with sigma
(Lq/a_j)/sqrt(N). Besides the data, ``run_response`` computes once per run layout (metadata,
bins, knobs; cached) what the baseline fit does to the grand spectrum's noise and to an axion
line, exactly in the linear approximation: delta = (I - S) eps for noise eps of variance 1/N per
bin, S the baseline's smoothing matrix.

Spectra are fftshifted (core.dsp.frequency_axis_hz), in any power-spectral-density unit; the RF
frequency of bin j is lo_frequency_hz + baseband_j (upper sideband).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.signal

from quax_faust.core.dsp import frequency_axis_hz
from quax_faust.core.errors import QuaxError
from quax_faust.search.axion import (
    CAVITY_FIELDS,
    Cavity,
    ksvz_coupling_gev,
    windowed_line_shape,
)
from quax_faust.search.baseline import baseline_residual_variance, savgol_baseline


@dataclass(frozen=True)
class CampaignConfig:
    """The knobs of the campaign analysis (defaults: QUAX-sized bins at ~10 GHz)."""

    baseline_window_bins: int = 301
    """Savitzky-Golay window of each run's baseline, bins (odd; 196 kHz at 651 Hz): much wider than
    the line, narrower than the receiver's passband features."""
    baseline_polyorder: int = 4
    line_bins: int = 16
    """Bins of the line-shape filter (16 x 651 Hz hold 93 % of a 10.4 GHz line)."""
    band_fraction: float = 0.7
    """Used baseband |f| <= this fraction of sample_rate_hz/2: off the anti-alias roll-off, which
    a 301-bin order-4 fit misses by up to 2e-4 at 0.85 (7e-6 at 0.7) on core.synth's passband."""
    dc_exclude_hz: float = 2000.0
    """Bins within this distance of 0 Hz baseband are not used, and bridged in the baseline."""


@dataclass(frozen=True)
class RunSpectrum:
    """A run as the campaign analysis takes it."""

    run: str
    mean: np.ndarray = field(repr=False)
    """(n_bins,) run average, fftshifted, power spectral density (any unit)."""
    n_slices: int
    sample_rate_hz: float
    metadata: Mapping[str, Any]
    """The run's metadata fields (quax_faust.core.run_meta names): lo_frequency_hz, cavity_*..."""


@dataclass(frozen=True)
class RunResponse:
    """What a run's layout does to the grand spectrum, per slice (multiply by N): row r is the
    candidate line whose first bin is run bin ``first_line_bin + r``."""

    used: np.ndarray
    """(n_bins,) bool: bins in the band, off DC, a half baseline window from the spectrum's ends."""
    gain: np.ndarray
    """(n_bins,) a_j / Lq: expected excess per unit (g/g_KSVZ)**2 of a whole line at bin j; 0 if not used."""
    first_line_bin: int
    line_shape: np.ndarray
    """(line_bins,) Lq: the position-averaged line shape of the filter, as the run's boxcar
    periodogram shows it (axion.windowed_line_shape), from the bin holding the rest frequency."""
    nominal: np.ndarray
    """(n_rows,) sum_q (Lq a)**2 over used bins: inverse variance of the filtered estimate, no baseline."""
    variance: np.ndarray
    """(n_rows,) variance of the filtered sum with the baseline fit ((I - S)^T c, squared)."""
    signal: np.ndarray
    """(n_rows,) filtered sum of an averaged-position line of (g/g_KSVZ)**2 = 1, after the fit."""
    next_covariance: np.ndarray
    """(n_rows,) covariance of row r with row r + 1 (0 for the last)."""


def cavity_of(spectrum: RunSpectrum) -> tuple[float, Cavity] | str:
    """(lo_frequency_hz, cavity) of a run, or the reason it cannot enter the physics."""
    fields = spectrum.metadata
    missing = [name for name in ("lo_frequency_hz",) + CAVITY_FIELDS if fields.get(name) is None]
    if missing:
        return f"its metadata lacks {', '.join(missing)} (needed for the RF grid and the expected axion power)"
    try:
        return float(fields["lo_frequency_hz"]), Cavity.from_metadata(fields)
    except ValueError as exc:
        return f"its metadata is unusable: {exc}"


def excess(spectrum: RunSpectrum, config: CampaignConfig) -> np.ndarray:
    """delta = P/B - 1 per bin: (n_bins,) float64, B the Savitzky-Golay baseline with DC bridged."""
    dc = np.abs(frequency_axis_hz(spectrum.mean.size, spectrum.sample_rate_hz)) <= config.dc_exclude_hz
    baseline = savgol_baseline(spectrum.mean, config.baseline_window_bins, config.baseline_polyorder, exclude=dc)
    return spectrum.mean / baseline - 1.0


def rescaled_excess(spectrum: RunSpectrum, config: CampaignConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per bin, (estimate of (g/g_KSVZ)**2 from a whole line in that bin, its sigma): two (n_bins,)
    arrays, NaN on bins not used. HAYSTAC's rescaled spectrum, before the line-shape filter."""
    lo, cavity = _checked(spectrum)
    response = run_response(cavity, lo, spectrum.mean.size, spectrum.sample_rate_hz, config)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(response.used, 1.0 / response.gain, np.nan)
    return excess(spectrum, config) * scale, scale / np.sqrt(spectrum.n_slices)


def noise_ratio(delta: np.ndarray, used: np.ndarray, n_slices: int, config: CampaignConfig) -> float:
    """Measured scatter of delta over the used bins against 1/sqrt(N) (after the fit's own
    narrowing): 1 for honest noise. Robust (MAD), so a line does not move it."""
    values = delta[used]
    mad = np.median(np.abs(values - np.median(values))) * 1.4826
    return float(mad * np.sqrt(n_slices / baseline_residual_variance(config.baseline_window_bins,
                                                                      config.baseline_polyorder)))


def _checked(spectrum: RunSpectrum) -> tuple[float, Cavity]:
    found = cavity_of(spectrum)
    if isinstance(found, tuple):
        return found
    raise QuaxError("bad_metadata", f"run {spectrum.run}: {found}")


@lru_cache(maxsize=256)
def run_response(cavity: Cavity, lo_frequency_hz: float, n_bins: int, sample_rate_hz: float,
                 config: CampaignConfig) -> RunResponse:
    """The run's ``RunResponse`` (cached: it depends on the layout, not on the data)."""
    half, order, k = config.baseline_window_bins // 2, config.baseline_polyorder, config.line_bins
    baseband = frequency_axis_hz(n_bins, sample_rate_hz)
    bin_width_hz = sample_rate_hz / n_bins
    dc = np.abs(baseband) <= config.dc_exclude_hz
    used = (np.abs(baseband) <= config.band_fraction * sample_rate_hz / 2) & ~dc
    used[:half] = used[n_bins - half:] = False
    if not used.any():
        raise ValueError(f"no usable bins: {n_bins} bins, band fraction {config.band_fraction}, "
                         f"baseline window {config.baseline_window_bins}")
    rf = baseband + lo_frequency_hz
    whole_line = (cavity.resonant_power_w(ksvz_coupling_gev(rf), rf) * cavity.lorentzian(rf)
                  / cavity.noise_power_w(bin_width_hz))
    gain = np.where(used, whole_line, 0.0)
    dc_bins = np.flatnonzero(dc)
    pad = dc_bins.size + 1
    # The line as the filter sees it (k bins from the one holding f_a), and as the data hold it:
    # the window's leak below bin 0 and the tail above the filter (8.5 % of the power) lift the
    # fit under the line, and reach the filtered sum through it.
    below = half + pad
    long_shape = windowed_line_shape(float(np.median(rf)), bin_width_hz, n_bins, k + 2 * below, first_bin=-below)
    shape = long_shape[below:below + k]

    used_bins = np.flatnonzero(used)
    first = used_bins[0] - k + 1
    n_rows = used_bins[-1] - first + 1
    starts = first + np.arange(n_rows)
    line_bins = starts[:, None] + np.arange(-below, k + below)[None, :]
    inside = (line_bins >= 0) & (line_bins < n_bins)
    clipped = np.clip(line_bins, 0, n_bins - 1)
    filtered = slice(below, below + k)
    c = np.where(inside[:, filtered], gain[clipped[:, filtered]], 0.0) * shape  # filter weights (per slice)
    s = np.where(inside, whole_line[clipped], 0.0) * long_shape                 # the line's excess, used or not

    # Row r of (I - S Br)^T c over bins [start_r - half - pad, start_r + k + half + pad): S the
    # Savitzky-Golay smoother (interior rows: the kernel h, since used bins are interior), Br the
    # bridging of the DC bins by linear interpolation (its transpose hands a DC bin's share to
    # the two kept bins around it).
    kernel = scipy.signal.savgol_coeffs(2 * half + 1, order, use="dot")
    toeplitz = np.zeros((k, k + 2 * half))
    for q in range(k):
        toeplitz[q, q:q + 2 * half + 1] = kernel
    rows = np.zeros((n_rows, k + 2 * half + 2 * pad))
    rows[:, half + pad:half + pad + k] = c
    rows[:, pad:pad + k + 2 * half] -= c @ toeplitz
    if dc_bins.size:
        low, high = dc_bins[0] - 1, dc_bins[-1] + 1
        for d in dc_bins:
            col = d - starts + half + pad
            r = np.flatnonzero((col >= pad) & (col < pad + k + 2 * half))
            share = -rows[r, col[r]]  # what the smoother put on this DC bin (c is 0 there)
            rows[r, col[r]] = 0.0
            rows[r, col[r] - (d - low)] -= share * (high - d) / (high - low)
            rows[r, col[r] + (high - d)] -= share * (d - low) / (high - low)

    next_covariance = np.zeros(n_rows)
    next_covariance[:-1] = np.einsum("ij,ij->i", rows[:-1, 1:], rows[1:, :-1])
    response = RunResponse(used=used, gain=gain, first_line_bin=int(first), line_shape=shape,
                           nominal=np.einsum("ij,ij->i", c, c),
                           variance=np.einsum("ij,ij->i", rows, rows),
                           signal=np.einsum("ij,ij->i", rows, s),
                           next_covariance=next_covariance)
    for array in (response.used, response.gain, response.line_shape, response.nominal, response.variance, response.signal,
                  response.next_covariance):
        array.flags.writeable = False
    return response
