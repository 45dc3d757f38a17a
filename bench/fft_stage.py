"""Milliseconds per real-size file for the FFT stage (dsp.power_sums) against pure pyfftw.

One synthetic file of 2^23 complex samples (4.19 s at 2 MS/s, 2730 slices of 3072), cut as a worker
gets it: message batches of slices_per_message slices, each the read-only view decode_slice_batch
returns (into the record's bytes, not aligned for SIMD). Timed on the same views, side by side:

- pyfftw: a planned pyfftw.builders.fft per batch shape called on the view (it copies into its
  aligned input and transforms the whole batch): the FFT alone, the figure to compare with;
- old: dsp.power_sums as it was before the per-block fusion (commit 9425048, copied below as the
  reference): each block copied and transformed, then |X|**2 into a file-sized float32 array, its
  squares into another, each summed pairwise over all rows;
- new: dsp.power_sums of this tree at settings.fft_block_rows; with --block-rows also at others.

The same with the whole file as one (2730, 3072) array ("file" rows). The runs take turns in every
round, so load from elsewhere slows them alike; medians over the rounds are printed.

    .venv/bin/python bench/fft_stage.py [--repeats 40] [--block-rows 8,16,32,64,128]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import time
from functools import lru_cache

import numpy as np
import pyfftw

from quax_faust.core import dsp, wire
from quax_faust.settings import Settings
from quax_faust.tools.bench_phases import cpu_name

FILE_SAMPLES = 1 << 23


# --- the reference: dsp.power_sums and its plan as of commit 9425048 ------------------------------

class _OldPlan:
    def __init__(self, block_rows: int, slice_len: int, threads: int):
        self.inp = pyfftw.empty_aligned((block_rows, slice_len), dtype=np.complex64)
        self.out = pyfftw.empty_aligned((block_rows, slice_len), dtype=np.complex64)
        self.fft = pyfftw.FFTW(self.inp, self.out, axes=(1,), direction="FFTW_FORWARD",
                               flags=("FFTW_MEASURE",), threads=threads)
        self.inp[:] = 0
        self.power = np.empty((block_rows, slice_len), dtype=np.float32)
        self.scratch = np.empty((block_rows, slice_len), dtype=np.float32)

    def block_power(self, rows: int, out: np.ndarray | None = None) -> np.ndarray:
        power = self.power[:rows] if out is None else out
        scratch = self.scratch[:rows]
        np.square(self.out[:rows].real, out=power)
        np.square(self.out[:rows].imag, out=scratch)
        return np.add(power, scratch, out=power)


@lru_cache(maxsize=8)
def _old_plan(block_rows: int, slice_len: int, threads: int) -> _OldPlan:
    return _OldPlan(block_rows, slice_len, threads)


def old_power_sums(slices: np.ndarray, sample_rate_hz: float, *, counted: np.ndarray | None = None,
                   block_rows: int = 64, threads: int = 1) -> dsp.PowerSums:
    n, slice_len = slices.shape
    plan = _old_plan(block_rows, slice_len, threads)
    power = np.empty((n if counted is None else int(np.count_nonzero(counted)), slice_len), np.float32)
    n_counted = 0
    for start in range(0, n, block_rows):
        rows = min(block_rows, n - start)
        keep = None if counted is None else counted[start:start + rows]
        if keep is not None and not keep.any():
            continue
        plan.inp[:rows] = slices[start:start + rows]
        plan.fft()
        if keep is None:
            plan.block_power(rows, out=power[n_counted:n_counted + rows])
            n_counted += rows
        else:
            kept = plan.block_power(rows)[keep]
            power[n_counted:n_counted + kept.shape[0]] = kept
            n_counted += kept.shape[0]
    if n_counted == 0:
        return dsp.PowerSums(np.zeros(slice_len), np.zeros(slice_len), 0)
    squares = np.square(power)
    scale = dsp.psd_scale(slice_len, sample_rate_hz)
    acc = _old_sum_rows_pairwise(power).astype(np.float64)
    acc_sq = _old_sum_rows_pairwise(squares).astype(np.float64)
    return dsp.PowerSums(np.fft.fftshift(acc * scale), np.fft.fftshift(acc_sq * scale * scale), n_counted)


def _old_sum_rows_pairwise(block: np.ndarray) -> np.ndarray:
    n = block.shape[0]
    while n > 1:
        half = n // 2
        block[:half] += block[n - half:n]
        n -= half
    return block[0]


# --- the measurement ------------------------------------------------------------------------------

def decoded_views(slices: np.ndarray, per_message: int, sample_rate_hz: float) -> list[np.ndarray]:
    """The slices as a worker sees them: read-only views into encoded slice messages."""
    views = []
    for first in range(0, slices.shape[0], per_message):
        batch = wire.SliceBatch("bench", 0, first, slices.shape[0], 0, sample_rate_hz, 0.0,
                                slices[first:first + per_message])
        views.append(wire.decode_slice_batch(wire.encode_slice_batch(batch)).samples)
    return views


def accuracy(slices: np.ndarray, sample_rate_hz: float) -> dict[str, tuple[float, float]]:
    """Largest relative error per bin of the file's sums, old and new, against numpy's float64 FFT."""
    power = np.abs(np.fft.fft(slices.astype(np.complex128), axis=1)) ** 2
    power *= dsp.psd_scale(slices.shape[1], sample_rate_hz)
    ref = np.fft.fftshift(power.sum(axis=0)), np.fft.fftshift((power * power).sum(axis=0))
    del power
    errors = {}
    for name, stage in (("old", old_power_sums), ("new", dsp.power_sums)):
        sums = stage(slices, sample_rate_hz)
        errors[name] = tuple(float(np.max(np.abs(got - want) / want))
                             for got, want in zip((sums.power_sum, sums.power_sumsq), ref))
    return errors


def time_rounds(runs: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each run, the runs taking turns in every round (after one warm-up)."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: float(np.median(t)) for name, t in times.items()}


def measure(batches: list[np.ndarray], settings: Settings, block_rows: list[int], repeats: int) -> dict:
    fs, threads = settings.sample_rate_hz, settings.fft_threads
    builders = {b.shape: pyfftw.builders.fft(pyfftw.empty_aligned(b.shape, np.complex64), axis=1,
                                             threads=threads, planner_effort="FFTW_MEASURE")
                for b in batches}
    old_rows = 64  # what the workers used before
    runs = {"pyfftw": lambda: [builders[b.shape](b) for b in batches],
            f"old (block_rows={old_rows})": lambda: [old_power_sums(b, fs, block_rows=old_rows,
                                                                    threads=threads) for b in batches]}
    for rows in block_rows:
        dsp.plan_fft(settings.slice_len, rows, threads)
        runs[f"new (block_rows={rows})"] = (
            lambda rows=rows: [dsp.power_sums(b, fs, block_rows=rows, threads=threads) for b in batches])
    return time_rounds(runs, repeats)


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40, help="rounds (default 40)")
    parser.add_argument("--block-rows", default=str(settings.fft_block_rows),
                        help="comma-separated block sizes of the new stage "
                             f"(default settings.fft_block_rows = {settings.fft_block_rows})")
    args = parser.parse_args()
    block_rows = [int(r) for r in args.block_rows.split(",")]

    rng = np.random.default_rng(2026)
    n_slices = FILE_SAMPLES // settings.slice_len
    slices = (rng.standard_normal((n_slices, settings.slice_len), np.float32)
              + 1j * rng.standard_normal((n_slices, settings.slice_len), np.float32)).astype(np.complex64)
    layouts = {f"{settings.slices_per_message}-slice messages":
               decoded_views(slices, settings.slices_per_message, settings.sample_rate_hz),
               "whole file": decoded_views(slices, n_slices, settings.sample_rate_hz)}
    errors = accuracy(slices, settings.sample_rate_hz)

    print(f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0))} cores usable; "
          f"numpy {np.__version__}, pyfftw {pyfftw.__version__}, fft_threads {settings.fft_threads}")
    print(f"one file: {n_slices} slices of {settings.slice_len} ({FILE_SAMPLES / settings.sample_rate_hz:.2f} s); "
          f"{args.repeats} rounds, medians")
    print("largest relative error per bin against numpy in float64 (sum, sum of squares): "
          + ", ".join(f"{name} {e[0]:.2e}, {e[1]:.2e}" for name, e in errors.items()))
    for layout, batches in layouts.items():
        ms = {name: 1e3 * s for name, s in measure(batches, settings, block_rows, args.repeats).items()}
        print(f"\n{layout} ({len(batches)} per file)")
        old = next(value for name, value in ms.items() if name.startswith("old"))
        print(f"  {'':28s} {'ms/file':>8s} {'/ pyfftw':>9s} {'/ old':>7s}")
        for name, value in ms.items():
            vs_old = f"{value / old:6.2f}x" if name.startswith("new") else ""
            print(f"  {name:28s} {value:8.2f} {value / ms['pyfftw']:8.2f}x {vs_old:>7s}")


if __name__ == "__main__":
    main()
