"""Look-elsewhere: from a block's local significance to the band's, per search and per run.

Pure numpy/scipy. docs/analysis.md step 4 and "False alarms in a growing run": the threshold is set
on the global significance over every block searched (``local_threshold``, ``global_significance``);
``repeated_look_crossing`` is the chance that a noise block passes it at some search of a growing
run (a search after every file). Significances are Gaussian-equivalent, in sigma.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
from scipy import special


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
