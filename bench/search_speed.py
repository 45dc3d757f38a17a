"""Milliseconds per candidate search (spectrum_search.search_spectrum, 3072 bins) against the run's N.

The workers search the run average after every file, so a week-long run (up to 144,000 files of
2730 slices) needs a search whose cost does not grow with N. Two spectra:

- nonavg: a spectrum that does not average down: the mean of one synthetic file's 8 slices
  (synth's passband, fine structure the baseline does not follow) searched as if it were the mean
  of N slices, so more and more blocks deviate as N grows (the noise-scale guard turns on);
- white: the synthetic passband times Gamma(N, 1/N) per bin (pure noise of N slices).

Each N is searched 7 times at N, N+1, ... (white: N+7, N+8, ...; a new N every search, as live,
so no tail table is reused);
the median is printed. Columns: this tree ("now"), the exact tail block by block ("exact",
exact_tail.exact_local_significance, what the fast path approximates), and with --compare DIR the
same search in another checkout (e.g. the tree before the exact tail). Every version runs in a
subprocess of its own (cwd and sys.path its tree, its own default settings; the layouts before and
after the tiers are both understood), timed there, and is sent the same spectra; they take turns
on every search, so a busy machine slows them alike. (Measured in this process instead, this tree
came out 1-2 ms faster than the same tree in a subprocess: all are measured alike.) "error": the
search raised (printed below).

    .venv/bin/python bench/search_speed.py [--compare /tmp/oldtree ...] [--repeats 7]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from quax_faust.core import dsp, synth
from quax_faust.tools.bench_phases import cpu_name

N_VALUES = (8, 1208, 2408, 3608, 6008, 9608, 2730 * 10, 2730 * 1000, 2730 * 144_000)
FS = 2e6
L = 3072

# Runs in a subprocess with a checkout's tree first on sys.path (argv: tree, "exact" or "fast"):
# reads {"n": N, "bins": k} lines, each followed by k float64 values (the run mean), and answers
# {"s": seconds} or {"error": text}.
WORKER = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from quax_faust.settings import Settings
try:  # the tiers with an explicit SearchConfig
    from quax_faust.search.spectrum_search import search_spectrum
    from quax_faust.search_settings import config_from_settings
    if sys.argv[2] == "exact":
        from quax_faust.search import exact_tail
        exact_tail.local_significance = exact_tail.exact_local_significance
    config = config_from_settings(Settings())
    search = lambda mean, n: search_spectrum(mean, n, %r, config=config)
except ImportError:
    try:  # the tiers, search/analysis.py taking the settings
        from quax_faust.search.analysis import search_spectrum
    except ImportError:  # before the tiers
        from quax_faust.analysis import search_spectrum
    if sys.argv[2] == "exact":
        raise SystemExit("the exact column is measured on this tree only")
    settings = Settings()
    search = lambda mean, n: search_spectrum(mean, n, %r, settings)
print(json.dumps({"module": sys.modules[search_spectrum.__module__].__file__}), flush=True)
for line in sys.stdin.buffer:
    request = json.loads(line)
    mean = np.frombuffer(sys.stdin.buffer.read(8 * request["bins"]), dtype=np.float64)
    start = time.perf_counter()
    try:
        search(mean, request["n"])
    except ValueError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        continue
    print(json.dumps({"s": time.perf_counter() - start}), flush=True)
""" % (FS, FS)


class Checkout:
    """search_spectrum of a checkout, in a subprocess of its own (exact: every block through the
    exact tail)."""

    def __init__(self, directory: Path, exact: bool = False):
        directory = directory.resolve()
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(directory),
                                      "exact" if exact else "fast"], cwd=directory,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        module = json.loads(self.proc.stdout.readline())["module"]
        if not Path(module).resolve().is_relative_to(directory):
            self.close()
            raise RuntimeError(f"{directory}: the search came from {module}, not from that checkout")

    def __call__(self, mean: np.ndarray, n_slices: int) -> float:
        mean = np.ascontiguousarray(mean, dtype=np.float64)
        self.proc.stdin.write(json.dumps({"n": int(n_slices), "bins": mean.size}).encode() + b"\n")
        self.proc.stdin.write(mean.tobytes())
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            raise ValueError(answer["error"])
        return answer["s"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def measure(versions: dict[str, "Checkout"], repeats: int) -> None:
    samples = synth.synth_file(0, L * 8, synth.SynthModel())
    sums = dsp.power_sums(samples.reshape(8, L), FS)
    nonavg = sums.power_sum / sums.n_slices
    gain = synth.passband_power_gain(dsp.frequency_axis_hz(L, FS), synth.SynthModel()) * 2 / FS
    rng = np.random.default_rng(1)
    for search in versions.values():
        search(nonavg, 8)  # imports, caches of the weights

    print(f"ms per search, 3072 bins, median of {repeats}; {cpu_name()}, "
          f"python {platform.python_version()}")
    print(f"{'N':>12}" + "".join(f"{s + ' ' + v:>18}" for s in ("nonavg", "white") for v in versions))
    errors = set()
    for n in N_VALUES:
        cells = []
        for spectrum in ("nonavg", "white"):
            times: dict[str, list[float]] = {v: [] for v in versions}
            for k in range(repeats):
                nk = n + k + (repeats if spectrum == "white" else 0)  # a new N each time
                mean = nonavg if spectrum == "nonavg" else gain * rng.gamma(nk, 1.0 / nk, L)
                for name, search in versions.items():
                    try:
                        times[name].append(search(mean, nk))
                    except ValueError as e:
                        errors.add(str(e))
                        times[name].append(np.nan)
            for name in versions:
                median = float(np.median(times[name]))
                cells.append(f"{'error':>18}" if np.isnan(median) else f"{1e3 * median:18.1f}")
        print(f"{n:>12}" + "".join(cells), flush=True)
    for message in sorted(errors):
        print("error:", message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="DIR", action="append", default=[],
                        help="another checkout to measure side by side (repeatable)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    here = Path(__file__).resolve().parent.parent
    versions: dict[str, Checkout] = {}
    try:
        versions["now"] = Checkout(here)
        versions["exact"] = Checkout(here, exact=True)
        for k, directory in enumerate(args.compare):
            versions[Path(directory).name or f"compare{k}"] = Checkout(Path(directory))
        measure(versions, args.repeats)
    finally:
        for checkout in versions.values():
            checkout.close()

if __name__ == "__main__":
    main()
