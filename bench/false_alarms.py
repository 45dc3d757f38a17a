"""False alarms of the candidate search in a growing run: per search, and per run.

The workers search the run average after every file, so a run of M files is M looks at the same,
slowly changing noise. The threshold (5 sigma global, look-elsewhere corrected over the ~2600
bins) is a per-search false-alarm probability; the probability that a pure-noise run shows a
candidate at *some* search is larger. This measures both by Monte Carlo and compares them with

- per search: Phi(-T) for a global threshold of T sigma (what the threshold promises);
- per run: n_trials * q(t), q(t) the chance that one bin's local significance crosses the local
  threshold t at any of the M searches. One bin's sequence of significances is (up to the
  skewness) the normalised partial sum S_k/sqrt(k) of independent per-file excesses, a Gaussian
  random walk; q(t) is computed exactly for that walk by propagating its density file by file
  (``look_elsewhere.repeated_look_crossing``). The repeated-look factor q(t)/Phi(-t) is taken
  from the walk, the per-look tail from the search's own exact statistics.

Spectra: each file's mean periodogram is drawn from its exact distribution for Gaussian noise,
the synthetic passband times Gamma(n, 1/n) per bin (n slices per file, 2730 by default: one real
file), with the real 3072 bins; the run average is the slice-weighted mean, searched with the
default settings exactly as the live agent does after each file.

    .venv/bin/python bench/false_alarms.py [--runs 200] [--files 100] [--slices-per-file 2730]

About 1.5 s per run of 100 files on one core (7 ms per search). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np
import scipy.optimize
import scipy.stats

from quax_faust.search import look_elsewhere
from quax_faust.search.spectrum_search import search_spectrum
from quax_faust.search_settings import config_from_settings

from quax_faust.core import dsp, synth
from quax_faust.settings import Settings

GLOBAL_THRESHOLDS = (1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)
RECORD_GLOBAL_SIGMA = 0.5  # keep every block above the local equivalent of this, per search
PERSIST = 3  # consecutive searches, as settings.persist_searches


def simulate(runs: int, files: int, slices_per_file: int, seed: int, settings: Settings):
    """Per run and search: the blocks above the recording level, as (bin, local sigma) arrays."""
    rate, n_bins = settings.sample_rate_hz, settings.slice_len
    gain = synth.passband_power_gain(dsp.frequency_axis_hz(n_bins, rate), synth.SynthModel()) * 2 / rate
    rng = np.random.default_rng(seed)
    config = config_from_settings(settings)
    record = []
    n_trials = local_record = None
    for _ in range(runs):
        power_sum = np.zeros(n_bins)
        searches = []
        for k in range(files):
            power_sum += gain * rng.gamma(slices_per_file, 1.0, size=n_bins)  # sum of n exponentials
            n = (k + 1) * slices_per_file
            result = search_spectrum(power_sum / n, n, rate, config=config)
            if n_trials is None:
                n_trials = result.n_trials
                local_record = look_elsewhere.local_threshold(RECORD_GLOBAL_SIGMA, n_trials)
            keep = result.local_significance > local_record
            searches.append((result.block_start[keep], result.local_significance[keep],
                             result.local_significance.max()))
        record.append(searches)
    return record, n_trials


def persistent(searches, local_sigma: float) -> bool:
    """A bin (within 2 bins) above local_sigma in PERSIST consecutive searches."""
    streak: dict[int, int] = {}
    for bins, z, _ in searches:
        now = {}
        for b in bins[z > local_sigma]:
            near = [c for c in streak if abs(c - b) <= 2]
            now[int(b)] = (streak[near[0]] if near else 0) + 1
            if now[int(b)] >= PERSIST:
                return True
        streak = now
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--slices-per-file", type=int, default=2730)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    settings = Settings()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"{datetime.date.today()}, {cpu}, one process")
    started = time.perf_counter()
    record, n_trials = simulate(args.runs, args.files, args.slices_per_file, args.seed, settings)
    elapsed = time.perf_counter() - started
    n_searches = args.runs * args.files
    print(f"{args.runs} pure-noise runs x {args.files} files of {args.slices_per_file} slices, "
          f"{n_trials} bins searched, a search after every file: {n_searches} searches in "
          f"{elapsed:.0f} s ({1e3 * elapsed / n_searches:.1f} ms per search)\n")

    max_z = np.array([[s[2] for s in run] for run in record])  # (runs, files)
    checkpoints = [k for k in (10, 30, args.files) if k <= args.files]
    print("per search: fraction of searches with a candidate (expected Phi(-T)); per run: fraction "
          "of runs with a candidate at some search up to file K (measured, and predicted n_trials*q)")
    header = (f"{'T_global':>8} {'t_local':>7} {'per_search':>10} {'expected':>9}"
              + "".join(f" {'run@' + str(k):>9} {'pred@' + str(k):>9}" for k in checkpoints)
              + f" {'factor@' + str(args.files):>10} {'persist@' + str(args.files):>11}")
    print(header)
    for big_t in GLOBAL_THRESHOLDS:
        t = look_elsewhere.local_threshold(big_t, n_trials)
        per_search = np.mean(max_z > t)
        expected = scipy.stats.norm.sf(big_t)
        walk = look_elsewhere.repeated_look_crossing(t, args.files)
        p_local = scipy.stats.norm.sf(t)
        cells = ""
        for k in checkpoints:
            measured = np.mean((max_z[:, :k] > t).any(axis=1))
            predicted = -np.expm1(n_trials * np.log1p(-walk[k - 1]))
            cells += f" {measured:9.4f} {predicted:9.3g}"
        n_persist = sum(persistent(run, t) for run in record)
        print(f"{big_t:8.1f} {t:7.3f} {per_search:10.2e} {expected:9.2e}{cells} "
              f"{walk[-1] / p_local:10.1f} {n_persist / args.runs:11.4f}")
    print(f"\n(one run = {args.runs} trials: a measured fraction f has a binomial standard error "
          f"sqrt(f(1-f)/{args.runs}); per search, {n_searches} correlated trials)")
    print("factor: q(t)/Phi(-t), the repeated-look factor of one bin over the whole run (Gaussian walk)")
    t5 = look_elsewhere.local_threshold(settings.candidate_threshold_sigma, n_trials)
    walk = look_elsewhere.repeated_look_crossing(t5, max(args.files, 1000))
    print(f"\nat the configured {settings.candidate_threshold_sigma:g} sigma global "
          f"(t = {t5:.3f} local): per search {scipy.stats.norm.sf(settings.candidate_threshold_sigma):.2e}; "
          "predicted per run:")
    for k in (1, 10, 30, 100, 300, 1000):
        if k <= walk.size:
            per_run = -np.expm1(n_trials * np.log1p(-walk[k - 1]))
            print(f"  {k:5d} files ({k * args.slices_per_file * settings.slice_len / settings.sample_rate_hz / 60:6.1f} min): "
                  f"{per_run:.2e} = {scipy.stats.norm.isf(per_run):.2f} sigma, "
                  f"factor {walk[k - 1] / scipy.stats.norm.sf(t5):.1f}")
    print(f"  (measured: {np.mean((max_z > t5).any(axis=1)):.3f} of {args.runs} runs of {args.files} files)")
    target = scipy.stats.norm.sf(settings.candidate_threshold_sigma)
    for k in (100, 1000):
        def excess(big_t):
            local = look_elsewhere.local_threshold(big_t, n_trials)
            crossing = look_elsewhere.repeated_look_crossing(local, k)[-1]
            return np.log(-np.expm1(n_trials * np.log1p(-crossing))) - np.log(target)
        big_t = scipy.optimize.brentq(excess, settings.candidate_threshold_sigma, 6.5, xtol=1e-3)
        print(f"a per-run {settings.candidate_threshold_sigma:g} sigma over {k} files needs "
              f"candidate_threshold_sigma = {big_t:.2f} per search "
              f"({look_elsewhere.local_threshold(big_t, n_trials):.2f} local)")


if __name__ == "__main__":
    main()
