"""The baseline fits of the candidate search: the passband under a spectrum, and under each block.

Pure numpy/scipy. Two fits of the same local polynomial (Savitzky-Golay: order ``polyorder`` over
``window_bins``), docs/analysis.md steps 1-2:

- the whole spectrum (``savgol_baseline``, what the dashboard draws) and the normalised excess
  ``delta*sqrt(N)``, ``delta = (P - B)/B``, over it (``normalised_excess``);
- each searched block's *leave-out* baseline: the polynomial fitted to the window around the block
  leaving the block and one block-width each side out, so a line never lifts its own baseline.
  It is a fixed linear combination of the fit bins (``block_baseline_weights``), whose moments
  (``block_moments``) give the block excess's noise; ``block_weights`` caches them per left-out mask.

Power spectral densities in V**2/Hz per bin, spectra fftshifted (bin slice_len//2 is 0 Hz).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.signal


# --- the whole spectrum: baseline and normalised excess ------------------------------------------

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
    if abs(weights.sum() - 1) > 1e-6:  # a smoother must keep a constant; scipy's fit can fail
        raise ValueError(f"Savitzky-Golay weights for a {window_bins}-bin window of order {polyorder} "
                         f"are numerically unstable (they sum to {weights.sum():.3g}, not 1): "
                         "lower the order or the window")
    weights.flags.writeable = False
    return weights


# --- blocks and their leave-out baselines --------------------------------------------------------

def coadd_bins(line_width_hz: float, bin_width_hz: float) -> int:
    """Bins per co-added block for an expected line width (Hz); at least 1."""
    return max(1, int(round(line_width_hz / bin_width_hz)))


def coadd(values: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Sum of values[start:start+length] for each block start: (n_blocks,) float64."""
    cums = np.concatenate(([0.0], np.cumsum(np.asarray(values, dtype=np.float64))))
    starts = np.asarray(starts, dtype=np.int64)
    return cums[starts + length] - cums[starts]


def fit_offsets(length: int, window_bins: int) -> np.ndarray:
    """Offsets, from a block's first bin, of the bins its baseline is fitted to.

    window_bins//2 bins on each side of the hole [-length, 2*length): the block and one block
    width each side (where a line's leakage lands) are left out. Shape (2*(window_bins//2),).
    """
    half = window_bins // 2
    return np.concatenate((np.arange(-length - half, -length), np.arange(2 * length, 2 * length + half)))


def block_baseline_weights(length: int, window_bins: int, polyorder: int,
                           dropped: np.ndarray | None = None) -> np.ndarray:
    """Weights w, over ``fit_offsets(length, window_bins)``, of a block's baseline.

    The baseline of the block is the mean over its bins of the least-squares polynomial of order
    polyorder through the fit bins: B_block = sum_j w_j P[start + offset_j]. dropped: optional
    bool mask over the offsets of bins left out (DC, other candidates; weight 0).
    Polynomials up to polyorder are reproduced exactly (sum w = 1, ...). Returns float64.
    """
    offsets = fit_offsets(length, window_bins)
    keep = np.ones(offsets.size, bool) if dropped is None else ~dropped
    if keep.sum() < 2 * (polyorder + 1):
        raise ValueError(f"only {keep.sum()} bins left to fit a polynomial of order {polyorder} "
                         f"around a {length}-bin block")
    centre = (length - 1) / 2
    scale = offsets.max() - centre
    t_fit = (offsets[keep] - centre) / scale
    t_block = (np.arange(length) - centre) / scale
    vander_fit = np.vander(t_fit, polyorder + 1)
    at_block = np.vander(t_block, polyorder + 1).mean(axis=0)
    weights = np.zeros(offsets.size)
    weights[keep] = at_block @ np.linalg.pinv(vander_fit)
    return weights


@lru_cache(maxsize=32)
def _interior_weights(length: int, window_bins: int, polyorder: int) -> np.ndarray:
    weights = block_baseline_weights(length, window_bins, polyorder)
    weights.flags.writeable = False
    return weights


def block_moments(weights: np.ndarray, length: int) -> tuple[float, float]:
    """(sum r**2, sum r**3) of the residual weights r of a block: +1/length on its bins, -w on
    its fit bins. For white noise of relative variance 1/N per bin, the block's relative excess
    has variance sum(r**2)/N and third cumulant 2*sum(r**3)/N**2."""
    return (1.0 / length + float(np.sum(weights ** 2)),
            1.0 / length ** 2 - float(np.sum(weights ** 3)))


def block_weights(n_bins: int, starts: np.ndarray, length: int, window: int, order: int,
                  excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Baseline weights (n_trials, n_fit), residual variances sum r**2 (n_trials,) and a mask
    (n_trials,) of the blocks whose weights are not the interior ones (an excluded bin among
    their fit bins). Cached by mask."""
    return _block_weights_cached(n_bins, starts.tobytes(), length, window, order,
                                 np.packbits(excluded).tobytes())


@lru_cache(maxsize=64)
def _block_weights_cached(n_bins: int, starts_bytes: bytes, length: int, window: int, order: int,
                          excluded_bits: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    starts = np.frombuffer(starts_bytes, dtype=np.int64)
    excluded = np.unpackbits(np.frombuffer(excluded_bits, np.uint8))[:n_bins].astype(bool)
    interior = _interior_weights(length, window, order)
    weights = np.tile(interior, (starts.size, 1))
    s2 = np.full(starts.size, block_moments(interior, length)[0])
    dropped = excluded[starts[:, None] + fit_offsets(length, window)[None, :]]
    special_fit = dropped.any(axis=1)
    for k in np.flatnonzero(special_fit):
        weights[k] = block_baseline_weights(length, window, order, dropped[k])
        s2[k] = block_moments(weights[k], length)[0]
    for array in (weights, s2, special_fit):
        array.flags.writeable = False
    return weights, s2, special_fit

