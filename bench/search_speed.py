"""Milliseconds per candidate search (analysis.search_spectrum, 3072 bins) against the run's N.

The workers search the run average after every file, so a week-long run (up to 144,000 files of
2730 slices) needs a search whose cost does not grow with N. Two spectra:

- nonavg: a spectrum that does not average down: the mean of one synthetic file's 8 slices
  (synth's passband, fine structure the baseline does not follow) searched as if it were the mean
  of N slices, so more and more blocks deviate as N grows (the noise-scale guard turns on);
- white: the synthetic passband times Gamma(N, 1/N) per bin (pure noise of N slices).

Each N is searched 7 times at N, N+1, ... (white: N+7, N+8, ...; a new N every search, as live,
so no tail table is reused);
the median is printed. Columns: this tree ("now"), the exact tail block by block ("exact",
analysis._exact_local_significance, what the fast path approximates), and with --compare DIR the
same search in another checkout (e.g. the tree before the exact tail). The versions are loaded
side by side in one process (each checkout's package under its own name) and take turns on every
search, so a busy machine slows them alike. "error": the search raised (printed below).

    .venv/bin/python bench/search_speed.py [--compare /tmp/oldtree ...] [--repeats 7]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_VALUES = (8, 1208, 2408, 3608, 6008, 9608, 2730 * 10, 2730 * 1000, 2730 * 144_000)
FS = 2e6
L = 3072


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_analysis(package_dir: Path, alias: str, links: Path):
    """quax_faust/search/analysis.py of a checkout, imported as package ``alias`` (a symlink in links)."""
    (links / alias).symlink_to(package_dir.resolve(), target_is_directory=True)
    return importlib.import_module(f"{alias}.analysis")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="DIR", action="append", default=[],
                        help="another checkout to measure side by side (repeatable)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        links = Path(tmp)
        sys.path.insert(0, str(links))
        versions = {"now": load_analysis(here / "quax_faust", "qf_now", links),
                    "exact": load_analysis(here / "quax_faust", "qf_exact", links)}
        versions["exact"]._local_significance = versions["exact"]._exact_local_significance
        for k, directory in enumerate(args.compare):
            versions[Path(directory).name or f"compare{k}"] = load_analysis(
                Path(directory) / "quax_faust", f"qf_compare{k}", links)
        synth = importlib.import_module("qf_now.synth")
        dsp = importlib.import_module("qf_now.dsp")
        settings = importlib.import_module("qf_now.settings").Settings()

        samples = synth.synth_file(0, L * 8, synth.SynthModel())
        sums = dsp.power_sums(samples.reshape(8, L), FS)
        nonavg = sums.power_sum / sums.n_slices
        gain = synth.passband_power_gain(dsp.frequency_axis_hz(L, FS), synth.SynthModel()) * 2 / FS
        rng = np.random.default_rng(1)
        for analysis in versions.values():
            analysis.search_spectrum(nonavg, 8, FS, settings)  # imports, caches of the weights

        print(f"ms per search, 3072 bins, median of {args.repeats}; {cpu_name()}, "
              f"python {platform.python_version()}")
        print(f"{'N':>12}" + "".join(f"{s + ' ' + v:>18}" for s in ("nonavg", "white") for v in versions))
        errors = set()
        for n in N_VALUES:
            cells = []
            for spectrum in ("nonavg", "white"):
                times: dict[str, list[float]] = {v: [] for v in versions}
                for k in range(args.repeats):
                    nk = n + k + (args.repeats if spectrum == "white" else 0)  # a new N each time
                    mean = nonavg if spectrum == "nonavg" else gain * rng.gamma(nk, 1.0 / nk, L)
                    for name, analysis in versions.items():
                        start = time.perf_counter()
                        try:
                            analysis.search_spectrum(mean, nk, FS, settings)
                        except ValueError as e:
                            errors.add(str(e))
                            times[name].append(np.nan)
                            continue
                        times[name].append(time.perf_counter() - start)
                for name in versions:
                    median = float(np.median(times[name]))
                    cells.append(f"{'error':>18}" if np.isnan(median) else f"{1e3 * median:18.1f}")
            print(f"{n:>12}" + "".join(cells), flush=True)
        for message in sorted(errors):
            print("error:", message)


if __name__ == "__main__":
    main()
