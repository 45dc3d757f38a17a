"""Milliseconds per candidate search (analysis.search_spectrum, 3072 bins) against the run's N.

The workers search the run average after every file, so a week-long run (up to 144,000 files of
2730 slices) needs a search whose cost does not grow with N. Two spectra:

- nonavg: a spectrum that does not average down: the mean of one synthetic file's 8 slices
  (synth's passband, fine structure the baseline does not follow) searched as if it were the mean
  of N slices, so more and more blocks deviate as N grows (the noise-scale guard turns on);
- white: the synthetic passband times Gamma(N, 1/N) per bin (pure noise of N slices).

Each N is searched 7 times at N, N+1, ... (a new N every search, as live: no table is reused);
the median is printed. Columns: this tree ("fast"), and the exact tail block by block ("exact",
analysis._exact_local_significance, what the fast path approximates); --compare DIR adds the same
measurement of another checkout (e.g. the tree before the exact tail). "error": the search
raised (printed once below the table).

    .venv/bin/python bench/search_speed.py [--compare /tmp/oldtree] [--repeats 7]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

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


def measure(repeats: int, exact: bool) -> dict[str, dict[int, float | str]]:
    """{spectrum: {N: median ms or an error message}} for the quax_faust on sys.path."""
    import numpy as np

    from quax_faust import analysis, dsp, synth
    from quax_faust.settings import Settings

    settings = Settings()
    if exact:
        analysis._local_significance = analysis._exact_local_significance
    samples = synth.synth_file(0, L * 8, synth.SynthModel())
    sums = dsp.power_sums(samples.reshape(8, L), FS)
    nonavg = sums.power_sum / sums.n_slices
    gain = synth.passband_power_gain(dsp.frequency_axis_hz(L, FS), synth.SynthModel()) * 2 / FS
    rng = np.random.default_rng(1)
    analysis.search_spectrum(nonavg, 8, FS, settings)  # imports, caches of the weights
    out: dict[str, dict[int, float | str]] = {"nonavg": {}, "white": {}}
    for n in N_VALUES:
        for name in out:
            times = []
            for k in range(repeats):
                mean = nonavg if name == "nonavg" else gain * rng.gamma(n + k, 1.0 / (n + k), L)
                start = time.perf_counter()
                try:
                    analysis.search_spectrum(mean, n + k, FS, settings)
                except ValueError as e:
                    out[name][n] = f"error: {e}"
                    break
                times.append(time.perf_counter() - start)
            else:
                out[name][n] = 1e3 * float(np.median(times))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="DIR", help="another checkout to measure the same way")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tree", help=argparse.SUPPRESS)  # (internal: measure this checkout)
    parser.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tree:
        sys.path.insert(0, args.tree)
        print(json.dumps(measure(args.repeats, args.exact)))
        return

    def run(tree: str, exact: bool = False) -> dict:
        cmd = [sys.executable, __file__, "--tree", tree, "--repeats", str(args.repeats)]
        done = subprocess.run(cmd + (["--exact"] if exact else []), capture_output=True, text=True,
                              check=True)
        return json.loads(done.stdout)

    here = str(__import__("pathlib").Path(__file__).resolve().parent.parent)
    columns = {"fast": run(here), "exact": run(here, exact=True)}
    if args.compare:
        columns["compare"] = run(args.compare)
    print(f"ms per search, 3072 bins, median of {args.repeats}; {cpu_name()}, "
          f"python {platform.python_version()}")
    header = "".join(f"{s + ' ' + c:>16}" for s in ("nonavg", "white") for c in columns)
    print(f"{'N':>12}{header}")
    errors = set()
    for n in N_VALUES:
        cells = []
        for spectrum in ("nonavg", "white"):
            for column in columns.values():
                value = column[spectrum][str(n)]
                if isinstance(value, str):
                    errors.add(value)
                    cells.append(f"{'error':>16}")
                else:
                    cells.append(f"{value:16.1f}")
        print(f"{n:>12}" + "".join(cells))
    for message in sorted(errors):
        print(message)


if __name__ == "__main__":
    main()
