"""The candidate search: is there a localised excess in a run's average spectrum, and how significant?

Pure numpy/scipy, no Kafka. The method (docs/analysis.md), in the HAYSTAC style:

1. *Baseline* ``B``: a Savitzky-Golay fit of the smooth passband of the run mean ``P`` (window much
   wider than a line, much narrower than passband features). Excluded bins (the DC bin, candidates
   already found) are bridged by linear interpolation before the fit, so a strong line does not
   drag the baseline around it.
2. *Normalised excess* ``delta = (P - B) / B``; ``delta * sqrt(N)`` is standard normal for pure noise
   up to two corrections the search makes exactly: the fit's own noise (for one interior bin the
   residual ``P - B`` has variance ``1 - c0`` times that of ``P``, ``c0`` = the filter's centre
   weight) and the skewness ``2/sqrt(N)`` of a mean of ``N`` exponential periodogram values.
3. *Co-adding*: adjacent bins are summed in blocks matching the expected line width (optional).
4. *Significance*: each block's standardised excess is turned into a Gaussian-equivalent local
   significance through the Gamma distribution it follows, then into a global one over the number
   of blocks searched (look-elsewhere: P_global = 1 - (1 - p_local)**n_trials).
5. *Candidates*: clusters of adjacent blocks above the global threshold; each reported at its peak.

Frequencies in Hz (baseband, or plus the LO where said), power spectral densities in V**2/Hz per
bin, powers in V**2, spectra fftshifted as everywhere else (bin slice_len//2 is 0 Hz).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.signal
from scipy import special

from .dsp import frequency_axis_hz
from .settings import Settings

# The standard error of a MAD-based scale estimate of n normal values is 1.166/sqrt(n) (relative).
_MAD_TO_SIGMA = 1.4826
_MAD_SCALE_ERROR = 1.166
# The measured scatter must exceed 1 by this many of its own standard errors before it replaces theory.
_NOISE_GUARD_SIGMAS = 3.0
# Re-fits of the baseline after masking what was found (the mask converges in one or two).
_MAX_REFITS = 4


# --- baseline and normalised excess ------------------------------------------------------------

def window_bins(window_hz: float, bin_width_hz: float) -> int:
    """The Savitzky-Golay window in bins for a window in Hz: rounded, then made odd."""
    n = int(round(window_hz / bin_width_hz))
    return n if n % 2 else n + 1


def savgol_baseline(mean: np.ndarray, window_bins: int, polyorder: int, *,
                    exclude: np.ndarray | None = None) -> np.ndarray:
    """Savitzky-Golay fit of the smooth passband of a spectrum.

    mean: (n_bins,) float, V**2/Hz (any positive spectrum). window_bins: odd, > polyorder,
    <= n_bins. exclude: optional (n_bins,) bool, bins bridged by linear interpolation from their
    neighbours before the fit (DC spike, lines already found). Edges: the first and last
    window_bins//2 bins get the polynomial fitted to the first/last full window (scipy's
    ``mode="interp"``); the search never uses them (see ``search_spectrum``).
    Returns (n_bins,) float64 in the units of ``mean``.
    """
    mean = np.asarray(mean, dtype=np.float64)
    if mean.ndim != 1:
        raise ValueError(f"savgol_baseline expects a 1-D spectrum, got shape {mean.shape}")
    if window_bins % 2 != 1 or window_bins <= polyorder or window_bins > mean.size:
        raise ValueError(f"baseline window of {window_bins} bins must be odd, > polyorder {polyorder} "
                         f"and <= the {mean.size} bins of the spectrum")
    filled = _bridge(mean, exclude)
    return scipy.signal.savgol_filter(filled, window_bins, polyorder, mode="interp")


def baseline_residual_variance(window_bins: int, polyorder: int) -> float:
    """Var(P - B) / Var(P) for one interior bin with a Savitzky-Golay baseline: 1 - c0.

    The fit is a linear projection, so its centre weight c0 equals the sum of its squared weights:
    Var(B) = c0 Var(P) and Cov(P, B) = c0 Var(P). About 2.25/window_bins for polyorder 2-3.
    """
    return 1.0 - float(_savgol_weights(window_bins, polyorder)[window_bins // 2])


def normalised_excess(mean: np.ndarray, baseline: np.ndarray, n_slices: int, *,
                      residual_variance: float = 1.0) -> np.ndarray:
    """delta_k * sqrt(N) with delta = (P - B) / B, per bin (dimensionless).

    mean: (n_bins,) run mean P over n_slices periodograms; baseline: (n_bins,) B, same units.
    For pure noise and an exact baseline this has mean 0 and variance 1 (each P_k is a mean of N
    exponential values). With a fitted baseline pass ``residual_variance =
    baseline_residual_variance(window, order)`` to divide by its square root; the default 1.0 gives
    the plain delta*sqrt(N), whose variance is then 1 - c0 (about 0.965 for the default window).
    """
    if n_slices < 1:
        raise ValueError(f"normalised_excess needs at least one slice, got n_slices={n_slices}")
    mean = np.asarray(mean, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    if mean.shape != baseline.shape:
        raise ValueError(f"mean {mean.shape} and baseline {baseline.shape} differ in shape")
    return (mean - baseline) / baseline * np.sqrt(n_slices / residual_variance)


# --- significance --------------------------------------------------------------------------------

def gaussian_equivalent(standardised: np.ndarray, shape: np.ndarray | float) -> np.ndarray:
    """Gaussian-equivalent significance of a standardised excess whose noise is Gamma-shaped.

    standardised: u, the excess in units of its standard deviation (mean 0, variance 1 for noise).
    shape: K, the Gamma shape of the noise (N for one bin of a mean of N exponential periodograms,
    m*N for m co-added bins; see ``search_spectrum``); its skewness is 2/sqrt(K).
    Returns z with P_gamma(U > u) = P_normal(Z > z) (the lower tail likewise). Exact through the
    incomplete Gamma function; beyond p ~ 1e-300 (|z| > 37) the Wilson-Hilferty cube-root
    approximation takes over. For K -> infinity, z -> u.
    """
    u = np.asarray(standardised, dtype=np.float64)
    k = np.broadcast_to(np.asarray(shape, dtype=np.float64), u.shape)
    x = np.maximum(1.0 + u / np.sqrt(k), 1e-300)  # the Gamma variate over its mean
    upper = u > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(upper, special.gammaincc(k, k * x), special.gammainc(k, k * x))
        z = np.where(upper, -special.ndtri(p), special.ndtri(p))
        wilson_hilferty = (np.cbrt(x) - 1.0 + 1.0 / (9.0 * k)) * 3.0 * np.sqrt(k)
    far = ~(p > 1e-300) & np.isfinite(u)
    z = np.where(far, wilson_hilferty, z)
    return z if z.ndim else float(z)


def local_threshold(global_sigma: float, n_trials: int) -> float:
    """Local (per-block) significance that corresponds to global_sigma over n_trials blocks.

    One-sided: P_global = Phi(-global_sigma) = 1 - (1 - p_local)**n_trials. 5 sigma over 2600 bins
    is 6.4 sigma per bin.
    """
    if n_trials < 1:
        raise ValueError(f"need at least one trial, got {n_trials}")
    p_global = special.ndtr(-global_sigma)
    p_local = -np.expm1(np.log1p(-p_global) / n_trials)
    return float(-special.ndtri(p_local))


def global_significance(local_sigma: np.ndarray | float, n_trials: int) -> np.ndarray | float:
    """Look-elsewhere-corrected significance of a local one, over n_trials independent blocks.

    Gaussian-equivalent of P(any of n_trials noise blocks exceeds local_sigma); negative when such
    an excess is more likely than not somewhere in the band. Valid far into the tail (log space).
    """
    z = np.asarray(local_sigma, dtype=np.float64)
    log_p = special.log_ndtr(-z)
    p = np.exp(log_p)
    with np.errstate(divide="ignore"):
        exact = np.log(-np.expm1(n_trials * np.log1p(-np.minimum(p, 1 - 1e-16))))
    log_p_global = np.where(p < 1e-10, log_p + np.log(n_trials), exact)
    out = -special.ndtri_exp(np.minimum(log_p_global, 0.0))
    return out if out.ndim else float(out)


# --- co-adding and the residual weights ----------------------------------------------------------

def coadd_bins(line_width_hz: float, bin_width_hz: float) -> int:
    """Bins per co-added block for an expected line width (Hz); at least 1."""
    return max(1, int(round(line_width_hz / bin_width_hz)))


def coadd(values: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Sum of values[start:start+length] for each block start: (n_blocks,) float64."""
    cums = np.concatenate(([0.0], np.cumsum(np.asarray(values, dtype=np.float64))))
    starts = np.asarray(starts, dtype=np.int64)
    return cums[starts + length] - cums[starts]


def residual_weights(n_bins: int, start: int, length: int, window_bins: int, polyorder: int,
                     exclude: np.ndarray | None = None) -> np.ndarray:
    """Weights r with delta_block = sum_j r_j (P_j / B - 1), for one block of a fitted spectrum.

    The block is bins [start, start+length); its excess is mean(P - B) / mean(B) over the block,
    B from ``savgol_baseline(..., exclude=exclude)``. For white noise of relative variance 1/N
    per bin, Var(delta_block) = sum(r**2)/N and its third cumulant is 2 sum(r**3)/N**2.
    The block must lie window_bins//2 or more from both ends. Returns (n_bins,) float64.
    """
    half = window_bins // 2
    if start - half < 0 or start + length + half > n_bins:
        raise ValueError(f"block [{start}, {start + length}) is within the baseline half-window "
                         f"({half} bins) of the spectrum edge (n_bins={n_bins})")
    weights = _savgol_weights(window_bins, polyorder)
    row = np.zeros(n_bins)
    for i in range(start, start + length):
        row[i - half:i + half + 1] += weights / length
    if exclude is not None and exclude.any():
        bridged = np.flatnonzero(exclude & (row != 0))
        if bridged.size:
            kept = np.flatnonzero(~exclude)
            right_pos = np.searchsorted(kept, bridged)
            left = kept[np.maximum(right_pos - 1, 0)]
            right = kept[np.minimum(right_pos, kept.size - 1)]
            gap = np.where(right != left, right - left, 1)
            w_right = np.where(right_pos == 0, 1.0,
                               np.where(right_pos == kept.size, 0.0, (bridged - left) / gap))
            np.add.at(row, left, row[bridged] * (1 - w_right))
            np.add.at(row, right, row[bridged] * w_right)
            row[bridged] = 0.0
    residual = -row
    residual[start:start + length] += 1.0 / length
    return residual


# --- the search ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """A localised excess: a cluster of adjacent blocks above the threshold, reported at its peak."""

    bin: int
    """First bin of the peak block in the fftshifted spectrum."""
    frequency_hz: float
    """Centre of the peak block, plus the LO frequency (Hz)."""
    significance: float
    """Global (look-elsewhere-corrected) Gaussian-equivalent significance, sigma."""
    local_significance: float
    power: float
    """Excess power over the baseline summed over the cluster (V**2; a tone A*exp(2j*pi*f*t) in the
    centre of a bin gives A**2)."""
    psd: float
    """Mean run PSD over the peak block (V**2/Hz)."""
    baseline_psd: float
    n_blocks: int


@dataclass
class SearchResult:
    """Everything the search computed, per bin and per searched block."""

    n_slices: int
    bin_width_hz: float
    lo_frequency_hz: float
    window_bins: int
    polyorder: int
    block_len: int
    frequency_hz: np.ndarray  # (n_bins,), plus the LO
    baseline: np.ndarray  # (n_bins,) V**2/Hz
    excluded: np.ndarray  # (n_bins,) bool: bridged in the final fit (DC and what was found)
    block_start: np.ndarray  # (n_trials,) int: first bin of each searched block
    delta: np.ndarray  # (n_trials,) (P - B)/B of each block
    standardised: np.ndarray  # (n_trials,) delta / its standard deviation (fit noise included)
    local_significance: np.ndarray  # (n_trials,) sigma
    significance: np.ndarray  # (n_trials,) sigma, global
    threshold_sigma: float
    local_threshold_sigma: float
    noise_scale: float
    """Scatter of the local significances (MAD-based) over the blocks that are not candidates."""
    noise_scale_applied: float
    """noise_scale if it exceeded 1 by more than 3 of its standard errors (then the data hold
    fewer independent slices than N says, e.g. repeated files), else 1."""
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def n_trials(self) -> int:
        return int(self.block_start.size)

    @property
    def block_frequency_hz(self) -> np.ndarray:
        return coadd(self.frequency_hz, self.block_start, self.block_len) / self.block_len


def searched_bins(slice_len: int, sample_rate_hz: float, band_fraction: float,
                  dc_exclude_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """(searched, dc) bool masks over the fftshifted bins.

    searched: baseband |f| <= band_fraction * sample_rate_hz/2 and not within dc_exclude_hz of 0 Hz
    (the anti-alias roll-off near +-fs/2 and the DC bin of the I/Q mixer are not searched).
    dc: the excluded DC bins, bridged in the baseline fit.
    """
    if not 0 < band_fraction <= 1:
        raise ValueError(f"search band fraction must be in (0, 1], got {band_fraction}")
    f = frequency_axis_hz(slice_len, sample_rate_hz)
    dc = np.abs(f) <= dc_exclude_hz
    return (np.abs(f) <= band_fraction * sample_rate_hz / 2) & ~dc, dc


def block_starts(searched: np.ndarray, length: int) -> np.ndarray:
    """Starts of consecutive, non-overlapping blocks of ``length`` searched bins.

    Each contiguous searched segment (one each side of DC) is tiled from its first bin; a leftover
    shorter than a block is dropped. Non-overlapping blocks are independent trials.
    """
    edges = np.flatnonzero(np.diff(np.concatenate(([0], searched.astype(np.int8), [0]))))
    starts = [np.arange(a, b - length + 1, length) for a, b in zip(edges[0::2], edges[1::2])]
    return np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)


def search_spectrum(mean: np.ndarray, n_slices: int, sample_rate_hz: float,
                    settings: Settings) -> SearchResult:
    """Search a run mean for localised excesses.

    mean: (slice_len,) float, the run's mean periodogram (V**2/Hz, fftshifted) over n_slices
    slices; sample_rate_hz of the data. Knobs from settings: baseline_window_hz,
    baseline_polyorder, line_width_hz, search_band_fraction, dc_exclude_hz,
    candidate_threshold_sigma, lo_frequency_hz (added to reported frequencies).
    """
    mean = np.asarray(mean, dtype=np.float64)
    if mean.ndim != 1 or mean.size < 8:
        raise ValueError(f"search_spectrum expects a 1-D spectrum, got shape {mean.shape}")
    if n_slices < 1:
        raise ValueError(f"search_spectrum needs at least one slice, got n_slices={n_slices}")
    n_bins = mean.size
    bin_width = sample_rate_hz / n_bins
    window = window_bins(settings.baseline_window_hz, bin_width)
    order = settings.baseline_polyorder
    length = coadd_bins(settings.line_width_hz, bin_width)
    searched, dc = searched_bins(n_bins, sample_rate_hz, settings.search_band_fraction,
                                 settings.dc_exclude_hz)
    half = window // 2
    if searched[:half].any() or searched[n_bins - half:].any():
        raise ValueError(f"search band fraction {settings.search_band_fraction} reaches within the "
                         f"baseline half-window ({half} bins) of the band edge: narrow the band or "
                         "the window")
    if not np.all(np.isfinite(mean)) or np.any(mean[searched | dc] <= 0):
        raise ValueError("the run mean must be finite, and positive in the searched band")
    starts = block_starts(searched, length)
    if starts.size == 0:
        raise ValueError(f"no block of {length} bins fits in the searched band")
    n_trials = starts.size
    z_local_threshold = local_threshold(settings.candidate_threshold_sigma, n_trials)

    interior = residual_weights(4 * window + length, 2 * window, length, window, order)
    interior_moments = (float(np.sum(interior ** 2)), float(np.sum(interior ** 3)))
    exclude = dc.copy()
    for _ in range(_MAX_REFITS):
        baseline = savgol_baseline(mean, window, order, exclude=exclude)
        delta = coadd(mean, starts, length) / coadd(baseline, starts, length) - 1.0
        s2, s3 = _block_moments(n_bins, starts, length, window, order, exclude, interior_moments)
        u = delta * np.sqrt(n_slices / s2)
        shape = n_slices * s2 ** 3 / s3 ** 2  # the Gamma whose first three cumulants match
        z = gaussian_equivalent(u, shape)
        above = z > z_local_threshold
        quiet = ~_dilate(above, 1)
        scale = _robust_scale(z[quiet]) if quiet.sum() >= 8 else 1.0
        guard = 1.0 + _NOISE_GUARD_SIGMAS * _MAD_SCALE_ERROR / np.sqrt(max(quiet.sum(), 1))
        applied = scale if scale > guard else 1.0
        if applied != 1.0:
            # The data behave as if they held N/scale**2 independent slices.
            z = gaussian_equivalent(u / applied, shape / applied ** 2)
            above = z > z_local_threshold
        new_exclude = dc.copy()
        for a in np.flatnonzero(_dilate(above, 1)):
            new_exclude[starts[a]:starts[a] + length] = True
        if np.array_equal(new_exclude, exclude):
            break
        exclude = new_exclude

    frequency = frequency_axis_hz(n_bins, sample_rate_hz, settings.lo_frequency_hz)
    z_global = global_significance(z, n_trials)
    result = SearchResult(n_slices, bin_width, settings.lo_frequency_hz, window, order, length,
                          frequency, baseline, exclude, starts, delta, u, z, z_global,
                          settings.candidate_threshold_sigma, z_local_threshold, scale, applied)
    result.candidates = _clusters(result, mean, above)
    return result


def _clusters(result: SearchResult, mean: np.ndarray, above: np.ndarray) -> list[Candidate]:
    """One candidate per run of above-threshold blocks (adjacent, or one block apart)."""
    idx = np.flatnonzero(above)
    if idx.size == 0:
        return []
    starts, length = result.block_start, result.block_len
    groups = np.split(idx, np.flatnonzero((np.diff(idx) > 2) | (np.diff(starts[idx]) > 2 * length)) + 1)
    block_freq = result.block_frequency_hz
    p_block = coadd(mean, starts, length)
    b_block = coadd(result.baseline, starts, length)
    out = []
    for g in groups:
        peak = g[np.argmax(result.local_significance[g])]
        out.append(Candidate(
            bin=int(starts[peak]), frequency_hz=float(block_freq[peak]),
            significance=float(result.significance[peak]),
            local_significance=float(result.local_significance[peak]),
            power=float(np.sum(p_block[g] - b_block[g]) * result.bin_width_hz),
            psd=float(p_block[peak] / length), baseline_psd=float(b_block[peak] / length),
            n_blocks=int(g.size)))
    return sorted(out, key=lambda c: -c.significance)


def _block_moments(n_bins: int, starts: np.ndarray, length: int, window: int, order: int,
                   exclude: np.ndarray, interior: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """sum(r**2), sum(r**3) of each block's residual weights; the interior values unless an
    excluded bin lies within reach of the block's baseline. Cached: the mask rarely changes."""
    return _block_moments_cached(n_bins, starts.tobytes(), length, window, order,
                                 np.packbits(exclude).tobytes(), interior)


@lru_cache(maxsize=64)
def _block_moments_cached(n_bins: int, starts_bytes: bytes, length: int, window: int, order: int,
                          exclude_bits: bytes, interior: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    starts = np.frombuffer(starts_bytes, dtype=np.int64)
    exclude = np.unpackbits(np.frombuffer(exclude_bits, np.uint8))[:n_bins].astype(bool)
    s2 = np.full(starts.size, interior[0])
    s3 = np.full(starts.size, interior[1])
    half = window // 2
    reach = np.concatenate(([0], np.cumsum(exclude)))
    lo = np.clip(starts - 2 * half, 0, n_bins)  # the fit at the block uses bins within half;
    hi = np.clip(starts + length + 2 * half, 0, n_bins)  # a bridge reaches to its anchors
    for k in np.flatnonzero(reach[hi] - reach[lo] > 0):
        r = residual_weights(n_bins, int(starts[k]), length, window, order, exclude)
        s2[k], s3[k] = np.sum(r ** 2), np.sum(r ** 3)
    s2.flags.writeable = s3.flags.writeable = False
    return s2, s3


def _robust_scale(z: np.ndarray) -> float:
    """Standard deviation of normal-ish values from their median absolute deviation."""
    return float(_MAD_TO_SIGMA * np.median(np.abs(z - np.median(z))))


def _dilate(mask: np.ndarray, by: int) -> np.ndarray:
    out = mask.copy()
    for shift in range(1, by + 1):
        out[shift:] |= mask[:-shift]
        out[:-shift] |= mask[shift:]
    return out


def _bridge(values: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    """values with the excluded entries replaced by linear interpolation from the kept ones."""
    if exclude is None or not exclude.any():
        return values
    if exclude.shape != values.shape:
        raise ValueError(f"exclude mask {exclude.shape} does not match the spectrum {values.shape}")
    if exclude.all():
        raise ValueError("every bin is excluded from the baseline fit")
    idx = np.arange(values.size)
    out = values.copy()
    out[exclude] = np.interp(idx[exclude], idx[~exclude], values[~exclude])
    return out


@lru_cache(maxsize=16)
def _savgol_weights(window_bins: int, polyorder: int) -> np.ndarray:
    """Smoothing weights of an interior point, in window order (symmetric); read-only, cached."""
    weights = scipy.signal.savgol_coeffs(window_bins, polyorder, use="dot")
    weights.flags.writeable = False
    return weights
