"""The exact noise tail of the search statistic, and the cached tables that make it cheap.

Pure numpy/scipy. docs/analysis.md step 3: a block's excess over its leave-out baseline becomes a
Gaussian-equivalent local significance through its exact noise distribution. For white Gaussian
noise the block mean is Gamma-distributed and the baseline a weighted sum of Gamma-distributed fit
bins; the tail of their ratio is an exact Laplace inversion (``excess_tail_log_probability``,
``excess_significance``): the skewness 2/sqrt(N) and the baseline's own noise both matter at 5-6
sigma. ``local_significance`` gets the same values for every block of a search at a bounded cost:
the blocks with the interior weights are interpolated in a table of exact values (``_TailTable``,
the last few kept per N and weights), the rest and every value near the threshold computed exactly.
``gaussian_equivalent`` is the simpler map of a standardised Gamma-shaped excess (no fit noise).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import scipy.interpolate
from scipy import special

from quax_faust.search.baseline import block_moments

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


def local_significance(delta: np.ndarray, u: np.ndarray, weights: np.ndarray, s2: np.ndarray,
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


def exact_local_significance(delta: np.ndarray, u: np.ndarray, weights: np.ndarray,
                             s2: np.ndarray, special_fit: np.ndarray, length: int, n_slices: float,
                             threshold: float) -> np.ndarray:
    """What ``local_significance`` approximates: excess_significance of every block, one by one
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
