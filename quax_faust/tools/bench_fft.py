"""The FFT stage of `quax bench` alone: dsp.power_sums against pure pyfftw on the same slices.

Measured before the stack starts, while the box is quiet; the ratio is one row of the summary.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from quax_faust.core import daq, dsp, wire
from quax_faust.settings import Settings


def fft_stage(samples: np.ndarray, settings: Settings, repeats: int) -> dict:
    """Median ms per real-size file: dsp.power_sums vs pure pyfftw on the same message batches.

    Each batch is the read-only view a worker decodes from a slice message. "pyfftw" is a planned
    pyfftw.builders.fft called on that view (it copies into its aligned input, then transforms);
    "fftw_execute" is the bare transform of the same slices already in aligned memory (a floor).
    """
    import pyfftw

    slices = daq.whole_slices(samples, settings.slice_len)
    views = []
    for first in range(0, slices.shape[0], settings.slices_per_message):
        part = slices[first:first + settings.slices_per_message]
        batch = wire.SliceBatch("bench", 0, first, slices.shape[0], 0, settings.sample_rate_hz, 0.0, part)
        views.append(wire.decode_slice_batch(wire.encode_slice_batch(batch)).samples)
    builders = {v.shape: pyfftw.builders.fft(pyfftw.empty_aligned(v.shape, np.complex64), axis=1,
                                             threads=settings.fft_threads, planner_effort="FFTW_MEASURE")
                for v in views}
    aligned = []
    for v in views:
        a = pyfftw.empty_aligned(v.shape, np.complex64)
        a[:] = v
        aligned.append(a)
    executes = {a.shape: pyfftw.FFTW(pyfftw.empty_aligned(a.shape, np.complex64),
                                     pyfftw.empty_aligned(a.shape, np.complex64), axes=(1,),
                                     flags=("FFTW_MEASURE",), threads=settings.fft_threads)
                for a in aligned}

    def stage():
        for v in views:
            dsp.power_sums(v, settings.sample_rate_hz, block_rows=settings.fft_block_rows,
                           threads=settings.fft_threads)

    def pure_pyfftw():
        for v in views:
            builders[v.shape](v)

    def fftw_execute():
        for a in aligned:
            plan = executes[a.shape]
            plan.update_arrays(a, plan.output_array)
            plan.execute()

    runs = {"stage": stage, "pyfftw": pure_pyfftw, "fftw_execute": fftw_execute}
    for run in runs.values():  # plans made, caches warm
        run()
    times = {name: [] for name in runs}
    for _ in tqdm(range(repeats), desc="FFT stage vs pyfftw", unit="round", leave=False):
        for name, run in runs.items():  # interleaved, so load changes hit all three alike
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    file_s = samples.shape[0] / settings.sample_rate_hz
    return {"slices_per_file": int(slices.shape[0]), "batches_per_file": len(views),
            "stage_ms_per_file": ms["stage"], "pyfftw_ms_per_file": ms["pyfftw"],
            "fftw_execute_ms_per_file": ms["fftw_execute"],
            "ratio_stage_to_pyfftw": ms["stage"] / ms["pyfftw"],
            "ratio_stage_to_fftw_execute": ms["stage"] / ms["fftw_execute"],
            "stage_fraction_of_real_time": ms["stage"] / 1e3 / file_s, "repeats": repeats}
