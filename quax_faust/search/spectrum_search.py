"""The candidate search of one spectrum: is there a localised excess in a run's average, how significant?

Pure numpy/scipy, no Kafka, no settings: the knobs come in a ``SearchConfig``. The method
(docs/analysis.md), in the HAYSTAC style:

1. *Baseline* (``baseline.py``): the passband of the run mean ``P`` is smooth; a local polynomial
   fit (Savitzky-Golay: order ``baseline_polyorder`` over ``baseline_window_hz``) follows it.
2. *The search statistic*: for each block (one bin, or adjacent bins co-added to the expected line
   width), the same local polynomial is fitted to the window around the block *leaving the block
   and one block-width each side out*, so a line never lifts its own baseline. The block's excess
   over that fit is a fixed linear combination of the ``P_j``: its variance and skewness follow
   exactly from the weights (a mean of N exponential periodograms is Gamma(N, 1/N) per bin).
3. *Significance* (``exact_tail.py``): the excess becomes a Gaussian-equivalent local
   significance through its exact noise distribution, then (``look_elsewhere.py``) a global one
   over the number of blocks searched (look-elsewhere: P_global = 1 - (1 - p)**n_trials).
4. *Candidates* (here): runs of adjacent blocks above the global threshold, one candidate each,
   reported at the peak. Their bins are left out of every other block's fit (one re-fit), so a
   strong line does not drag the baseline of its neighbours.

Searched: baseband |f| <= search_band_fraction * fs/2 (off the anti-alias roll-off), not within
dc_exclude_hz of 0 Hz (the I/Q mixer's DC spike, also left out of every fit).
Frequencies in Hz (baseband, or plus the LO where said), power spectral densities in V**2/Hz per
bin, powers in V**2, spectra fftshifted as everywhere else (bin slice_len//2 is 0 Hz).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quax_faust.core.dsp import frequency_axis_hz
from quax_faust.search import exact_tail
from quax_faust.search.baseline import (block_weights, coadd, coadd_bins, fit_offsets, savgol_baseline,
                                        window_bins)
from quax_faust.search.look_elsewhere import global_significance, local_threshold

# The standard error of a MAD-based scale estimate of n normal values is 1.166/sqrt(n) (relative).
_MAD_TO_SIGMA = 1.4826
_MAD_SCALE_ERROR = 1.166
# The measured scatter must exceed 1 by this many of its own standard errors before it replaces theory.
_NOISE_GUARD_SIGMAS = 3.0
# Re-fits after leaving what was found out of its neighbours' fits (converges in one or two).
_MAX_REFITS = 4


@dataclass(frozen=True)
class SearchConfig:
    """The knobs of the search, all given (no defaults here: the settings of the same names hold
    them, ``candidate_threshold_sigma`` for threshold_sigma); quax_faust/search_settings.py makes
    one from a Settings object."""

    baseline_window_hz: float
    """Savitzky-Golay window of the passband fit (Hz): far wider than a line."""
    baseline_polyorder: int
    line_width_hz: float
    """Expected line width: adjacent bins are co-added in blocks this wide (Hz; 0 = single bins)."""
    search_band_fraction: float
    """Searched baseband |f| <= this fraction of sample_rate_hz/2."""
    dc_exclude_hz: float
    """Bins within this distance of 0 Hz baseband are not searched, and left out of every fit."""
    threshold_sigma: float
    """Global significance a candidate must exceed, after the look-elsewhere correction."""
    lo_frequency_hz: float
    """Local-oscillator frequency added to the reported frequencies (Hz)."""
    persist_searches: int
    """A candidate is persistent once above threshold in this many consecutive searches (used by
    candidates.py, which follows candidates from search to search)."""


@dataclass(frozen=True)
class Candidate:
    """A localised excess: a run of adjacent blocks above the threshold, reported at its peak."""

    bin: int
    """First bin of the peak block in the fftshifted spectrum."""
    frequency_hz: float
    """Centre of the peak block, plus the LO frequency (Hz)."""
    significance: float
    """Global (look-elsewhere-corrected) Gaussian-equivalent significance, sigma."""
    local_significance: float
    power: float
    """Excess power over the baseline summed over the candidate's blocks (V**2; a tone
    A*exp(2j*pi*f*t) in the centre of a bin gives A**2)."""
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
    baseline: np.ndarray  # (n_bins,) V**2/Hz: savgol_baseline with the left-out bins bridged
    excluded: np.ndarray  # (n_bins,) bool: left out of every fit (DC and candidates)
    block_start: np.ndarray  # (n_trials,) int: first bin of each searched block
    block_baseline: np.ndarray  # (n_trials,) V**2/Hz: each block's leave-out baseline
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
    dc: the excluded DC bins, also left out of every baseline fit.
    """
    if not 0 < band_fraction <= 1:
        raise ValueError(f"search band fraction must be in (0, 1], got {band_fraction}")
    f = frequency_axis_hz(slice_len, sample_rate_hz)
    dc = np.abs(f) <= dc_exclude_hz
    return (np.abs(f) <= band_fraction * sample_rate_hz / 2) & ~dc, dc


def block_starts(searched: np.ndarray, length: int) -> np.ndarray:
    """Starts of the blocks of ``length`` searched bins, half-overlapping.

    Each contiguous searched segment (one each side of DC) is covered from its first bin in steps
    of max(1, length // 2), so a line of the expected width always has at least 3/4 of its power
    in one block (non-overlapping blocks could split it in halves). Single bins (length 1) are
    independent trials; overlapping blocks are correlated, which makes the count of trials used
    for the look-elsewhere correction conservative.
    """
    step = max(1, length // 2)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], searched.astype(np.int8), [0]))))
    starts = [np.arange(a, b - length + 1, step) for a, b in zip(edges[0::2], edges[1::2])]
    return np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)


def search_spectrum(mean: np.ndarray, n_slices: int, sample_rate_hz: float, *,
                    config: SearchConfig) -> SearchResult:
    """Search a run mean for localised excesses.

    mean: (slice_len,) float, the run's mean periodogram (V**2/Hz, fftshifted) over n_slices
    slices; sample_rate_hz of the data. Knobs from config: baseline_window_hz,
    baseline_polyorder, line_width_hz, search_band_fraction, dc_exclude_hz, threshold_sigma,
    lo_frequency_hz (added to reported frequencies).
    About 5-10 ms for 3072 bins.
    """
    mean = np.asarray(mean, dtype=np.float64)
    if mean.ndim != 1 or mean.size < 8:
        raise ValueError(f"search_spectrum expects a 1-D spectrum, got shape {mean.shape}")
    if n_slices < 1:
        raise ValueError(f"search_spectrum needs at least one slice, got n_slices={n_slices}")
    n_bins = mean.size
    bin_width = sample_rate_hz / n_bins
    window = window_bins(config.baseline_window_hz, bin_width)
    order = config.baseline_polyorder
    length = coadd_bins(config.line_width_hz, bin_width)
    searched, dc = searched_bins(n_bins, sample_rate_hz, config.search_band_fraction,
                                 config.dc_exclude_hz)
    starts = block_starts(searched, length)
    if starts.size == 0:
        raise ValueError(f"no block of {length} bins fits in the searched band")
    offsets = fit_offsets(length, window)
    if starts[0] + offsets[0] < 0 or starts[-1] + offsets[-1] >= n_bins:
        raise ValueError(f"search band fraction {config.search_band_fraction} reaches within "
                         f"{-offsets[0]} bins (half the baseline window plus a block) of the band "
                         "edge: narrow the band or the window")
    if not np.all(np.isfinite(mean)) or np.any(mean[searched] <= 0):
        raise ValueError("the run mean must be finite, and positive in the searched band")
    n_trials = starts.size
    z_local_threshold = local_threshold(config.threshold_sigma, n_trials)
    p_block = coadd(mean, starts, length) / length
    fit_values = mean[starts[:, None] + offsets[None, :]]  # (n_trials, n_fit)

    excluded = dc.copy()
    for _ in range(_MAX_REFITS):
        weights, s2, special_fit = block_weights(n_bins, starts, length, window, order, excluded)
        b_block = np.einsum("ij,ij->i", fit_values, weights)
        delta = p_block / b_block - 1.0
        u = delta * np.sqrt(n_slices / s2)
        z = exact_tail.local_significance(delta, u, weights, s2, special_fit, length, n_slices,
                                          z_local_threshold)
        above = z > z_local_threshold
        quiet = ~_dilate(above, 4)  # the noise scale from blocks well away from candidates
        scale = _robust_scale(z[quiet]) if quiet.sum() >= 8 else 1.0
        guard = 1.0 + _NOISE_GUARD_SIGMAS * _MAD_SCALE_ERROR / np.sqrt(max(quiet.sum(), 1))
        applied = scale if scale > guard else 1.0
        if applied != 1.0:
            # The data behave as if they held N/scale**2 independent slices.
            z = exact_tail.local_significance(delta, u / applied, weights, s2, special_fit, length,
                                              n_slices / applied ** 2, z_local_threshold)
            above = z > z_local_threshold
        new_excluded = dc.copy()
        for a in np.flatnonzero(above):  # the block and its hole, as in its own fit
            new_excluded[max(starts[a] - length, 0):starts[a] + 2 * length] = True
        if np.array_equal(new_excluded, excluded):
            break
        excluded = new_excluded

    frequency = frequency_axis_hz(n_bins, sample_rate_hz, config.lo_frequency_hz)
    baseline = savgol_baseline(mean, window, order, exclude=excluded)
    result = SearchResult(n_slices, bin_width, config.lo_frequency_hz, window, order, length,
                          frequency, baseline, excluded, starts, b_block, delta, u, z,
                          global_significance(z, n_trials), config.threshold_sigma,
                          z_local_threshold, scale, applied)
    result.candidates = _candidates(result, mean, p_block, above)
    return result


def _candidates(result: SearchResult, mean: np.ndarray, p_block: np.ndarray,
                above: np.ndarray) -> list[Candidate]:
    """One candidate per run of above-threshold blocks (overlapping, adjacent or one bin apart)."""
    idx = np.flatnonzero(above)
    if idx.size == 0:
        return []
    starts, length = result.block_start, result.block_len
    gaps = np.diff(starts[idx]) > length + 1
    block_freq = result.block_frequency_hz
    out = []
    for group in np.split(idx, np.flatnonzero(gaps) + 1):
        peak = group[np.argmax(result.local_significance[group])]
        # Power: every bin the group covers, once, over the peak block's (slowly varying) baseline.
        first, last = int(starts[group[0]]), int(starts[group[-1]]) + length
        excess_psd = np.sum(mean[first:last]) - (last - first) * result.block_baseline[peak]
        out.append(Candidate(
            bin=int(starts[peak]), frequency_hz=float(block_freq[peak]),
            significance=float(result.significance[peak]),
            local_significance=float(result.local_significance[peak]),
            power=float(excess_psd * result.bin_width_hz),
            psd=float(p_block[peak]), baseline_psd=float(result.block_baseline[peak]),
            n_blocks=int(group.size)))
    return sorted(out, key=lambda c: -c.significance)


def _robust_scale(z: np.ndarray) -> float:
    """Standard deviation of normal-ish values from their median absolute deviation."""
    return float(_MAD_TO_SIGMA * np.median(np.abs(z - np.median(z))))


def _dilate(mask: np.ndarray, by: int) -> np.ndarray:
    out = mask.copy()
    for shift in range(1, by + 1):
        out[shift:] |= mask[:-shift]
        out[:-shift] |= mask[shift:]
    return out
