"""The candidate search: is there a localised excess in a run's average spectrum, and how significant?

Pure numpy/scipy, no Kafka. The method (docs/analysis.md), in the HAYSTAC style:

1. *Baseline*: the passband of the run mean ``P`` is smooth; a local polynomial fit
   (Savitzky-Golay: order ``baseline_polyorder`` over ``baseline_window_hz``) follows it.
   ``savgol_baseline`` is that fit over the whole spectrum (what the dashboard draws);
   ``normalised_excess`` is ``delta*sqrt(N)`` with ``delta = (P - B)/B``, standard normal for pure
   noise once divided by the fit's residual variance ``1 - c0``.
2. *The search statistic*: for each block (one bin, or adjacent bins co-added to the expected line
   width), the same local polynomial is fitted to the window around the block *leaving the block
   and one block-width each side out*, so a line never lifts its own baseline. The block's excess
   over that fit is a fixed linear combination of the ``P_j``: its variance and skewness follow
   exactly from the weights (a mean of N exponential periodograms is Gamma(N, 1/N) per bin).
3. *Significance*: the excess becomes a Gaussian-equivalent local significance through its exact
   noise distribution (``excess_significance``: the ratio of a Gamma-distributed block mean to a
   weighted sum of Gamma-distributed fit bins, tail by exact Laplace inversion; the skewness
   2/sqrt(N) and the baseline's noise both matter at 5-6 sigma), then a global one over the
   number of blocks searched (look-elsewhere: P_global = 1 - (1 - p)**n_trials).
4. *Candidates*: runs of adjacent blocks above the global threshold, one candidate each, reported
   at the peak. Their bins are left out of every other block's fit (one re-fit), so a strong line
   does not drag the baseline of its neighbours.

Searched: baseband |f| <= search_band_fraction * fs/2 (off the anti-alias roll-off), not within
dc_exclude_hz of 0 Hz (the I/Q mixer's DC spike, also left out of every fit).
Frequencies in Hz (baseband, or plus the LO where said), power spectral densities in V**2/Hz per
bin, powers in V**2, spectra fftshifted as everywhere else (bin slice_len//2 is 0 Hz).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.interpolate
from collections import OrderedDict
import scipy.signal
from scipy import special

from quax_faust.core.dsp import frequency_axis_hz
from quax_faust.settings import Settings

# The standard error of a MAD-based scale estimate of n normal values is 1.166/sqrt(n) (relative).
_MAD_TO_SIGMA = 1.4826
_MAD_SCALE_ERROR = 1.166
# The measured scatter must exceed 1 by this many of its own standard errors before it replaces theory.
_NOISE_GUARD_SIGMAS = 3.0
# Re-fits after leaving what was found out of its neighbours' fits (converges in one or two).
_MAX_REFITS = 4
# The exact tail integral runs over +-this many widths of its bell (the integrand is < 1e-30 there).
_TAIL_INTEGRAL_SPAN = 10.5
# The interior blocks' significance is interpolated in a table of exact values (``_TailTable``) over
# v = log(P_block/B) * sqrt(N / sum r**2) (about u; the log keeps the far tails smooth): nodes every
# _TABLE_STEP within |v| <= _TABLE_INNER, then spaced by a factor _TABLE_RATIO out to _TABLE_OUTER.
_TABLE_STEP = 0.5
_TABLE_INNER = 8.0
_TABLE_RATIO = 1.05
_TABLE_OUTER = 1e5
_TABLE_CACHE_SIZE = 8
# Blocks whose interpolated significance is this close to the local threshold are recomputed
# exactly, so every decision at the threshold is the exact one (the table is ~1e-5 sigma off there
# for N >= 12, 1e-3 at N = 3); ten times wider below N = 3 (only a guarded N/scale**2 gets there:
# the map bends sharply and the table is up to 0.025 sigma off near 2.5-8 sigma).
_EXACT_MARGIN_SIGMA = 0.01
_SMALL_N = 3.0
# Blocks next to DC or a candidate (other weights) take the interior table within this |u|, where
# no threshold is (error < 0.003 sigma); beyond, they are computed one by one.
_SPECIAL_DIRECT_U = 2.0


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
    Returns z with P_gamma(U > u) = P_normal(Z > z) (the lower tail likewise), exactly: through
    the regularised incomplete Gamma function, and in log space where the tail probability is
    below 1e-300 (|z| > 37). For K -> infinity, z -> u.
    """
    u = np.asarray(standardised, dtype=np.float64)
    k = np.broadcast_to(np.asarray(shape, dtype=np.float64), u.shape)
    y = k * np.maximum(1.0 + u / np.sqrt(k), 1e-300)  # the Gamma variate, in units of its scale
    upper = u > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(upper, special.gammaincc(k, y), special.gammainc(k, y))
        z = np.where(upper, -special.ndtri(p), special.ndtri(p))
    far = np.flatnonzero(~(p > 1e-300) & np.isfinite(u))
    if far.size:
        z = np.array(z, dtype=np.float64)
        kf, yf, up = k.flat[far], y.flat[far], upper.flat[far]
        log_p = np.where(up, _log_gamma_upper_tail(kf, np.where(up, yf, kf + 2)),
                         _log_gamma_lower_tail(kf, np.where(up, kf / 2, yf)))
        z.flat[far] = np.where(up, -special.ndtri_exp(log_p), special.ndtri_exp(log_p))
    return z if z.ndim else float(z)


def _log_gamma_upper_tail(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log Q(a, y), the regularised upper incomplete Gamma function, for y > a + 1.

    Continued fraction (modified Lentz), with the prefactor y**a exp(-y)/Gamma(a) in log space.
    """
    tiny = 1e-300
    b = y + 1.0 - a
    c = np.full_like(y, 1.0 / tiny)
    d = 1.0 / b
    h = d.copy()
    for i in range(1, 2000):
        an = -i * (i - a)
        b = b + 2.0
        d = an * d + b
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = b + an / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        step = d * c
        h = h * step
        if np.all(np.abs(step - 1.0) < 1e-15):
            break
    return -y + a * np.log(y) - special.gammaln(a) + np.log(h)


def _log_gamma_lower_tail(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log P(a, y), the regularised lower incomplete Gamma function, for y < a (series)."""
    term = 1.0 / a
    total = term.copy()
    for n in range(1, 100_000):
        term = term * y / (a + n)
        total = total + term
        if np.all(term < total * 1e-16):
            break
    return -y + a * np.log(y) - special.gammaln(a) + np.log(total)


def excess_tail_log_probability(ratio: np.ndarray, weights: np.ndarray, length: int,
                                n_slices: float, upper: np.ndarray | bool) -> np.ndarray:
    """log P(P_block > ratio * B) (upper) or log P(P_block < ratio * B) (lower), exactly, for noise.

    The search's statistic is the ratio of a block's mean P_block to its leave-out baseline
    B = sum_j w_j P_j, where, for white Gaussian noise, P_block is Gamma(length*N, 1/(length*N))
    and each fit bin P_j is Gamma(N, 1/N), all independent (the fit bins never include the block).
    So P_block - ratio*B is a linear combination of independent Gammas with a known moment
    generating function, and its tail is the inverse Laplace integral
    P(X > 0) = (1/2 pi i) * integral of exp(K(s))/s ds along Re s = tau,
    evaluated at the saddle point tau of exp(K(s))/|s| (the integrand is then a positive bell and
    the trapezoid rule converges exponentially: relative error below 1e-6, checked against the F
    distribution, which is the case of one fit bin). No Gaussian or cumulant approximation; the
    noise of the baseline in the denominator is included (it adds up to +14 % at 3.5 sigma for
    N=170 slices, +25 % at 6.35 sigma for N=2730, which a three-cumulant Gamma of the numerator
    alone misses).

    ratio: (k,) values of P_block/B (= 1 + delta); weights: (n_fit,) or (k, n_fit) baseline
    weights (zeros allowed); n_slices: N (may be fractional: the noise-scale guard's N/scale**2);
    upper: (k,) bool or one bool, which tail. Returns (k,) float64, natural log.
    """
    weights = np.asarray(weights, dtype=np.float64)
    return _tail_log_probability(ratio, weights, np.ones(weights.shape[-1]), length, n_slices, upper)


def _fold_weights(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct nonzero weights, how many fit bins carry each): the tail depends on the weights
    only as a multiset (independent Gammas), and m bins of weight w are one Gamma of shape m*N.
    The interior weights are symmetric, so this halves the cost of each exact evaluation."""
    w = np.sort(weights[weights != 0])
    # Mirror-image weights agree to rounding only: weights within 1e-12 (relative) are one.
    first = np.concatenate(([True], np.diff(w) > 1e-12 * np.abs(w).max()))
    group = np.cumsum(first) - 1
    counts = np.bincount(group).astype(np.float64)
    return np.bincount(group, weights=w) / counts, counts


def _tail_log_probability(ratio: np.ndarray, weights: np.ndarray, counts: np.ndarray, length: int,
                          n_slices: float, upper: np.ndarray | bool) -> np.ndarray:
    """excess_tail_log_probability with fit weight j carried by counts[j] bins (shape counts[j]*N)."""
    ratio = np.atleast_1d(np.asarray(ratio, dtype=np.float64))
    upper = np.broadcast_to(np.asarray(upper, dtype=bool), ratio.shape)
    coef = ratio[:, None] * weights  # X = P_block - sum coef_j P_j
    m = np.asarray(counts, dtype=np.float64)
    n, mn = float(n_slices), float(length * n_slices)
    with np.errstate(divide="ignore"):  # the Laplace transform exists for lo < s < hi
        hi = np.minimum(mn, np.min(np.where(coef < 0, n / -coef, np.inf), axis=1))
        lo = np.max(np.where(coef > 0, -n / coef, -np.inf), axis=1)
    left, right = np.where(upper, 0.0, lo), np.where(upper, hi, 0.0)
    # The integral is exact along any Re s = tau in (lo, hi); the saddle point of exp(K(s))/|s|
    # (K'(s) = 1/s) only makes the integrand a narrow bell, so a few Newton steps from the
    # Gaussian guess will do, kept inside the domain.
    mean, var = 1.0 - coef @ m, 1.0 / mn + (coef ** 2) @ m / n
    root = np.sqrt(mean ** 2 + 4 * var)
    tau = np.where(upper, (root - mean) / (2 * var), -(root + mean) / (2 * var))
    tau = np.where(upper, np.minimum(tau, 0.9 * hi), np.maximum(tau, 0.9 * lo))  # (the guess is never 0)
    for _ in range(6):
        fit_re = 1 + tau[:, None] * coef / n
        slope = 1 / (1 - tau / mn) - (coef / fit_re) @ m - 1 / tau
        curve = (1 / mn) / (1 - tau / mn) ** 2 + (coef ** 2 / n / fit_re ** 2) @ m + 1 / tau ** 2
        newton = tau - slope / curve
        tau = np.where((newton > left) & (newton < right), newton,
                       0.5 * (tau + np.where(newton <= left, left, right)))
    block_re = 1 - tau / mn  # (k,): the factors of the transform at s = tau + i*y: re + i*im
    fit_re = 1 + tau[:, None] * coef / n  # (k, n_fit)
    curvature = (1 / mn) / block_re ** 2 + (coef ** 2 / n / fit_re ** 2) @ m + 1 / tau ** 2
    width = 1 / np.sqrt(curvature)  # of the bell along the imaginary direction
    step = 0.7  # relative error of the tail below 2e-5 (checked against the F distribution)
    y = width[:, None] * np.arange(0.0, _TAIL_INTEGRAL_SPAN + step / 2, step)[None, :]  # (k, n_t)
    # K(s) - K(tau) = -mN log(1 - s/mN)/(1 - tau/mN) - N sum_j log(1 + s c_j/N)/(1 + tau c_j/N),
    # in real arithmetic (log of the modulus, argument by arctan2: the principal branch is right,
    # every factor has a positive real part).
    block_im = -y / mn / block_re[:, None]
    fit_im = y[:, :, None] * (coef / n / fit_re)[:, None, :]  # (k, n_t, n_fit)
    log_mod = (-0.5 * mn * np.log1p(block_im ** 2)
               - 0.5 * n * (np.log1p(fit_im ** 2) @ m))
    arg = -mn * np.arctan(block_im) - n * (np.arctan(fit_im) @ m)
    # times tau/s = 1/(1 + i y/tau)
    ratio_im = y / tau[:, None]
    bell = np.exp(log_mod) * (np.cos(arg) + ratio_im * np.sin(arg)) / (1 + ratio_im ** 2)
    integral = step * (bell[:, 0] / 2 + bell[:, 1:].sum(axis=1))
    k_tau = -mn * np.log(block_re) - n * (np.log(fit_re) @ m)
    return k_tau - np.log(np.abs(tau)) + np.log(width / np.pi * integral)


def excess_significance(delta: np.ndarray, weights: np.ndarray, length: int,
                        n_slices: float) -> np.ndarray:
    """Gaussian-equivalent local significance of block excesses delta = P_block/B - 1, exactly.

    P_noise(excess above delta) = P_normal(Z > z) for delta above the noise median, the lower
    tail likewise below it (``excess_tail_log_probability``, in log space: no overflow at any
    significance). weights: (n_fit,) or (k, n_fit), as there. Returns (k,) sigma.
    """
    delta = np.atleast_1d(np.asarray(delta, dtype=np.float64))
    upper = delta >= 0
    log_p = excess_tail_log_probability(1.0 + delta, weights, length, n_slices, upper)
    z = special.ndtri_exp(np.minimum(log_p, -1e-300))  # either tail, even past the median
    return np.where(upper, -z, z)


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


def repeated_look_crossing(local_sigma: float, n_searches: int, dx: float = 0.01) -> np.ndarray:
    """P(one noise block's local significance passes local_sigma in some search up to the K-th),
    K = 1..n_searches, in a run searched after each of n_searches equal files: (n_searches,).

    A block's excess after K files is the sum of K independent per-file excesses, so its local
    significance is S_K/sqrt(K), S a random walk; each search alone passes with Phi(-local_sigma)
    (exact: z is Gaussian-equivalent), the repeated looks are modelled as a Gaussian walk (the
    per-file skewness is ignored in the dependence between looks; bench/false_alarms.py measures
    the result). The density of S_K on the paths that have not passed yet is propagated file by
    file; the mass passing at file K is the previous density against the Gaussian tail beyond the
    boundary, exact in the far tail. The per-run false-alarm probability of n_trials blocks is
    about 1 - (1 - crossing)**n_trials (blocks nearly independent).
    """
    top = local_sigma * np.sqrt(n_searches)
    x = dx * np.arange(-int((12 * np.sqrt(n_searches) + 8) / dx), int(top / dx) + 2)  # 0 on the grid
    steps = dx * np.arange(-int(9 / dx), int(9 / dx) + 1)
    kernel = special.ndtr(steps + dx / 2) - special.ndtr(steps - dx / 2)
    density = (x == 0).astype(np.float64)  # probability per grid cell; S_0 = 0
    crossed, total = [], 0.0
    for k in range(1, n_searches + 1):
        boundary = local_sigma * np.sqrt(k)
        total += float(np.sum(density * special.ndtr(x - boundary)))
        crossed.append(total)
        density = scipy.signal.fftconvolve(density, kernel, mode="same")
        density[x > boundary] = 0.0
    return np.array(crossed)


# --- blocks and their baselines ------------------------------------------------------------------

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


# --- the search ----------------------------------------------------------------------------------

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


def search_spectrum(mean: np.ndarray, n_slices: int, sample_rate_hz: float,
                    settings: Settings) -> SearchResult:
    """Search a run mean for localised excesses.

    mean: (slice_len,) float, the run's mean periodogram (V**2/Hz, fftshifted) over n_slices
    slices; sample_rate_hz of the data. Knobs from settings: baseline_window_hz,
    baseline_polyorder, line_width_hz, search_band_fraction, dc_exclude_hz,
    candidate_threshold_sigma, lo_frequency_hz (added to reported frequencies).
    About 5-10 ms for 3072 bins.
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
    starts = block_starts(searched, length)
    if starts.size == 0:
        raise ValueError(f"no block of {length} bins fits in the searched band")
    offsets = fit_offsets(length, window)
    if starts[0] + offsets[0] < 0 or starts[-1] + offsets[-1] >= n_bins:
        raise ValueError(f"search band fraction {settings.search_band_fraction} reaches within "
                         f"{-offsets[0]} bins (half the baseline window plus a block) of the band "
                         "edge: narrow the band or the window")
    if not np.all(np.isfinite(mean)) or np.any(mean[searched] <= 0):
        raise ValueError("the run mean must be finite, and positive in the searched band")
    n_trials = starts.size
    z_local_threshold = local_threshold(settings.candidate_threshold_sigma, n_trials)
    p_block = coadd(mean, starts, length) / length
    fit_values = mean[starts[:, None] + offsets[None, :]]  # (n_trials, n_fit)

    excluded = dc.copy()
    for _ in range(_MAX_REFITS):
        weights, s2, special_fit = _block_weights(n_bins, starts, length, window, order, excluded)
        b_block = np.einsum("ij,ij->i", fit_values, weights)
        delta = p_block / b_block - 1.0
        u = delta * np.sqrt(n_slices / s2)
        z = _local_significance(delta, u, weights, s2, special_fit, length, n_slices,
                                z_local_threshold)
        above = z > z_local_threshold
        quiet = ~_dilate(above, 4)  # the noise scale from blocks well away from candidates
        scale = _robust_scale(z[quiet]) if quiet.sum() >= 8 else 1.0
        guard = 1.0 + _NOISE_GUARD_SIGMAS * _MAD_SCALE_ERROR / np.sqrt(max(quiet.sum(), 1))
        applied = scale if scale > guard else 1.0
        if applied != 1.0:
            # The data behave as if they held N/scale**2 independent slices.
            z = _local_significance(delta, u / applied, weights, s2, special_fit, length,
                                    n_slices / applied ** 2, z_local_threshold)
            above = z > z_local_threshold
        new_excluded = dc.copy()
        for a in np.flatnonzero(above):  # the block and its hole, as in its own fit
            new_excluded[max(starts[a] - length, 0):starts[a] + 2 * length] = True
        if np.array_equal(new_excluded, excluded):
            break
        excluded = new_excluded

    frequency = frequency_axis_hz(n_bins, sample_rate_hz, settings.lo_frequency_hz)
    baseline = savgol_baseline(mean, window, order, exclude=excluded)
    result = SearchResult(n_slices, bin_width, settings.lo_frequency_hz, window, order, length,
                          frequency, baseline, excluded, starts, b_block, delta, u, z,
                          global_significance(z, n_trials), settings.candidate_threshold_sigma,
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


def _block_weights(n_bins: int, starts: np.ndarray, length: int, window: int, order: int,
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


def _local_significance(delta: np.ndarray, u: np.ndarray, weights: np.ndarray, s2: np.ndarray,
                        special_fit: np.ndarray, length: int, n_slices: float,
                        threshold: float) -> np.ndarray:
    """excess_significance of every block, at a bounded cost whatever the spectrum.

    The blocks with the interior weights (all but those next to DC or a candidate) share one
    monotone map ratio -> z, interpolated in a table of exact values (``_TailTable``, cached per N
    and weights; only the nodes around the blocks' values are evaluated). The other blocks are
    computed one by one where |u| > 2; within 2 sigma they take the interior map at their own
    standardised excess (s2: each block's sum r**2; their weights differ a little: below 0.003
    sigma for N = 170, where no threshold is). Every block whose interpolated z lies within
    _EXACT_MARGIN_SIGMA of the local threshold (10 times that below N = 3) is recomputed
    exactly, so what passes the threshold is decided by the exact tail.
    """
    z = np.empty_like(delta)
    direct = special_fit & (np.abs(u) > _SPECIAL_DIRECT_U)
    if special_fit.all():
        direct[:] = True
    shared = ~direct
    if shared.any():
        first = np.flatnonzero(~special_fit)[0]
        # The interior-equivalent excess of a special block: the same log ratio in its own units.
        log_ratio = np.log1p(delta[shared]) * np.sqrt(s2[first] / s2[shared])
        table = _tail_table(weights[first], length, n_slices)
        z[shared] = table.significance(np.expm1(log_ratio))
        # (and NaN: a value the table could not give)
        margin = _EXACT_MARGIN_SIGMA * (1 if n_slices >= _SMALL_N else 10)
        direct |= shared & ~(np.abs(z - threshold) >= margin)
    if direct.any():  # one call: each costs ~0.2 ms before its first block
        z[direct] = excess_significance(delta[direct], weights[direct], length, n_slices)
    return z


def _exact_local_significance(delta: np.ndarray, u: np.ndarray, weights: np.ndarray,
                              s2: np.ndarray, special_fit: np.ndarray, length: int, n_slices: float,
                              threshold: float) -> np.ndarray:
    """What ``_local_significance`` approximates: excess_significance of every block, one by one
    (for the tests and bench/search_speed.py)."""
    return excess_significance(delta, weights, length, n_slices)


class _TailTable:
    """z(ratio) of blocks with one set of baseline weights and N, interpolated in exact values.

    Nodes are fixed in v = log(ratio) * sqrt(N / sum r**2): every _TABLE_STEP within
    |v| <= _TABLE_INNER, geometric (factor _TABLE_RATIO) beyond, to _TABLE_OUTER. A node's exact
    z (excess_significance, the weights folded: ``_fold_weights``) is computed the first time a
    value falls in one of its neighbouring intervals, so a table costs a few dozen exact
    evaluations however many blocks use it, and later searches at the same N reuse it. z between
    nodes: monotone cubic (PCHIP; its slopes at a node use only the two neighbours, all computed).
    Interpolation error against excess_significance (docs/analysis.md, tests/test_analysis.py),
    N = 12.8 ... 4e8: below 2e-4 sigma for |z| <= 10 (1.5e-5, the exact tail's own smoothness,
    for N >= 2730), below 2e-3 of z out to 60 sigma. Values outside the table are computed
    exactly.
    """

    _v_nodes: np.ndarray | None = None

    def __init__(self, weights: np.ndarray, length: int, n_slices: float):
        self.values, self.counts = _fold_weights(weights)
        self.length, self.n_slices = length, n_slices
        self.v_per_log_ratio = np.sqrt(n_slices / block_moments(weights, length)[0])
        self.nodes = self.v_nodes()
        self.z = np.full(self.nodes.size, np.nan)
        self.known = np.zeros(self.nodes.size, bool)

    @classmethod
    def v_nodes(cls) -> np.ndarray:
        if cls._v_nodes is None:
            inner = np.arange(-_TABLE_INNER, _TABLE_INNER + _TABLE_STEP / 2, _TABLE_STEP)
            n_outer = int(np.ceil(np.log(_TABLE_OUTER / _TABLE_INNER) / np.log(_TABLE_RATIO)))
            outer = _TABLE_INNER * _TABLE_RATIO ** np.arange(1, n_outer + 1)
            cls._v_nodes = np.concatenate((-outer[::-1], inner, outer))
        return cls._v_nodes

    def exact(self, log_ratio: np.ndarray) -> np.ndarray:
        upper = log_ratio >= 0
        log_p = _tail_log_probability(np.exp(log_ratio), self.values, self.counts, self.length,
                                      self.n_slices, upper)
        z = special.ndtri_exp(np.minimum(log_p, -1e-300))
        return np.where(upper, -z, z)

    def significance(self, delta: np.ndarray) -> np.ndarray:
        log_ratio = np.log1p(delta)
        v = log_ratio * self.v_per_log_ratio
        nodes = self.nodes
        inside = (v > nodes[1]) & (v < nodes[-2])
        right = np.searchsorted(nodes, v[inside])  # the interval [right-1, right]
        need = np.zeros(nodes.size, bool)
        for shift in (-2, -1, 0, 1):
            need[right + shift] = True
        todo = np.flatnonzero(need & ~self.known)
        if todo.size:
            self.z[todo] = self.exact(nodes[todo] / self.v_per_log_ratio)
            self.known[todo] = True
        z = np.empty_like(v)
        ok = np.flatnonzero(self.known & np.isfinite(self.z))
        if ok.size >= 2:
            z[inside] = scipy.interpolate.PchipInterpolator(nodes[ok], self.z[ok])(v[inside])
        else:
            z[inside] = np.nan
        stencil_ok = np.ones(right.size, bool)
        for shift in (-2, -1, 0, 1):
            stencil_ok &= np.isfinite(self.z[right + shift])
        redo = np.flatnonzero(inside)[~stencil_ok]
        far = np.concatenate((np.flatnonzero(~inside), redo))
        if far.size:
            z[far] = self.exact(log_ratio[far])
        return z


_TABLES: OrderedDict = OrderedDict()


def _tail_table(weights: np.ndarray, length: int, n_slices: float) -> _TailTable:
    """The cached _TailTable of these weights and N (a few recent ones: N changes every file)."""
    key = (weights.tobytes(), length, float(n_slices))
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = _TailTable(weights, length, n_slices)
        if len(_TABLES) > _TABLE_CACHE_SIZE:
            _TABLES.popitem(last=False)
    else:
        _TABLES.move_to_end(key)
    return table


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
    if abs(weights.sum() - 1) > 1e-6:  # a smoother must keep a constant; scipy's fit can fail
        raise ValueError(f"Savitzky-Golay weights for a {window_bins}-bin window of order {polyorder} "
                         f"are numerically unstable (they sum to {weights.sum():.3g}, not 1): "
                         "lower the order or the window")
    weights.flags.writeable = False
    return weights
