"""Injection recovery on demo-sized files: when does an injected line become a candidate?

Synthetic files of the real size (2**23 samples = 2730 slices = 4.194 s at 2 MS/s), a line at
+250 kHz (the demo's) of several amplitudes, the run average searched after each file exactly as
the live agent does. Prints the figures behind docs/analysis.md and draws
docs/img/injection_recovery.png (matplotlib: ``.venv/bin/pip install matplotlib`` if missing).

    .venv/bin/python bench/injection_recovery.py [--files 32] [--out docs/img/injection_recovery.png]

Also replays the demo's loop (ops/demo/produce.sh sends 8 files over and over with new numbers)
to show what the search makes of repeated data.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from quax_faust.search import candidates
from quax_faust.search.baseline import block_baseline_weights, block_moments, window_bins
from quax_faust.search.exact_tail import gaussian_equivalent
from quax_faust.search.spectrum_search import search_spectrum
from quax_faust.search_settings import config_from_settings

from quax_faust.core import dsp, synth
from quax_faust.settings import REPO_DIR, Settings

TONE_HZ = 250_000.0
AMPLITUDES = (0.02, 0.005, 0.0035, 0.002)  # V; noise is 1 V rms per channel; 0.02 is the demo's


def tone(file_index: int, n_samples: int, freq_hz: float, amplitude: float, rate: float) -> np.ndarray:
    """synth.synth_file's line: A*exp(2j*pi*f*t), phase continuous across files."""
    t = (np.arange(n_samples, dtype=np.float64) + file_index * n_samples) / rate
    return (amplitude * np.exp(2j * np.pi * freq_hz * t)).astype(np.complex64)


def file_mean(samples: np.ndarray, settings: Settings) -> tuple[np.ndarray, int]:
    n = samples.size // settings.slice_len
    sums = dsp.power_sums(samples[: n * settings.slice_len].reshape(n, settings.slice_len),
                          settings.sample_rate_hz)
    return sums.power_sum / sums.n_slices, sums.n_slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--samples", type=int, default=1 << 23)
    parser.add_argument("--out", type=Path, default=REPO_DIR / "docs" / "img" / "injection_recovery.png")
    args = parser.parse_args()
    settings = Settings()
    config = config_from_settings(settings)
    rate, model = settings.sample_rate_hz, synth.SynthModel()
    file_s = args.samples / rate

    started = time.perf_counter()
    means = {a: [] for a in AMPLITUDES}
    counts = []
    for k in range(args.files):
        noise = synth.synth_file(k, args.samples, model, seed=1)
        if k == 0:  # the tone added here is exactly synth's
            with_tone = synth.synth_file(0, args.samples, synth.SynthModel(tones=((TONE_HZ, 0.02),)), seed=1)
            assert np.allclose(with_tone, noise + tone(0, args.samples, TONE_HZ, 0.02, rate), atol=1e-5)
        for a in AMPLITUDES:
            mean, n = file_mean(noise + tone(k, args.samples, TONE_HZ, a, rate), settings)
            means[a].append(mean)
        counts.append(n)
    counts = np.array(counts)
    print(f"synthesised and transformed {args.files} files x {len(AMPLITUDES)} amplitudes "
          f"in {time.perf_counter() - started:.0f} s")

    bin_hz = settings.bin_width_hz
    gain = synth.passband_power_gain(np.array([TONE_HZ]), model)[0]
    curves = {}
    n_total = np.cumsum(counts)
    window = window_bins(settings.baseline_window_hz, bin_hz)
    s2, s3 = block_moments(block_baseline_weights(1, window, settings.baseline_polyorder), 1)
    print(f"\nline at +{TONE_HZ / 1e3:.0f} kHz, {counts[0]} slices ({file_s:.3f} s) per file; "
          f"threshold {settings.candidate_threshold_sigma:g} sigma global")
    print(f"{'amplitude_V':>11} {'snr/slice':>10} {'sigma_1file':>11} {'expect_file':>11} "
          f"{'first_seen':>10} {'persistent':>10} {'final_sigma':>11} {'final_local':>11}")
    last_result = {}
    for a in AMPLITUDES:
        snr = a ** 2 * settings.slice_len / (2 * gain)
        # Expected local significance: snr*sqrt(N/sum r**2), through the same Gamma tail as the search.
        expected = gaussian_equivalent(snr * np.sqrt(n_total / s2), n_total * s2 ** 3 / s3 ** 2)
        doc, local = None, []
        power_sum = np.zeros(settings.slice_len)
        for k in range(args.files):
            power_sum += means[a][k] * counts[k]
            result = search_spectrum(power_sum / n_total[k], int(n_total[k]), rate, config=config)
            doc, _ = candidates.update_candidates(doc, result, "bench", k, k + 1, settings.persist_searches)
            b = int(np.argmin(np.abs(result.block_frequency_hz - TONE_HZ)))
            local.append(result.local_significance[b])
        last_result[a] = result
        curves[a] = (np.array(local), expected, result.local_threshold_sigma)
        found = [c for c in doc["candidates"] if abs(c["frequency_hz"] - TONE_HZ) <= bin_hz]
        cross = np.flatnonzero(expected > result.local_threshold_sigma)
        expect_file = f"{cross[0]}" if cross.size else f">{args.files - 1}"
        others = len(doc["candidates"]) - len(found)
        print(f"{a:11.4f} {snr:10.4f} {expected[0]:11.2f} {expect_file:>11} "
              f"{found[0]['first_seen_file'] if found else '-':>10} "
              f"{str(found[0]['persistent']).lower() if found else '-':>10} "
              f"{found[0]['significance'] if found else float('nan'):11.1f} {local[-1]:11.1f}"
              + (f"   ({others} other candidates!)" if others else ""))
    print("(expect_file: first file index at which the expected local significance passes the "
          f"local threshold {result.local_threshold_sigma:.2f}; one file = {file_s:.2f} s)")

    # The demo loops over its 8 files: after the first pass the average gains no new noise
    # averaging, but N keeps growing. The search's noise-scale guard sees that.
    print("\ndemo loop (8 files sent again and again, amplitude 0.02):")
    loop = 8 if args.files >= 8 else args.files
    power_sum = np.zeros(settings.slice_len)
    n = 0
    for k in range(3 * loop):
        power_sum += means[0.02][k % loop] * counts[k % loop]
        n += int(counts[k % loop])
        result = search_spectrum(power_sum / n, n, rate, config=config)
        if (k + 1) % loop == 0 or k == 0:
            found = [c for c in result.candidates if abs(c.frequency_hz - TONE_HZ) <= bin_hz]
            print(f"  after {k + 1:3d} files ({(k + 1) * file_s:6.1f} s): noise scale "
                  f"{result.noise_scale:.2f} (applied {result.noise_scale_applied:.2f}), "
                  f"{len(result.candidates)} candidates, tone {found[0].significance if found else float('nan'):.1f} sigma")

    plot(args, curves, last_result, counts, file_s, settings)


def plot(args, curves, last_result, counts, file_s, settings) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_spec, ax_growth) = plt.subplots(1, 2, figsize=(12, 4.4))
    a_show = 0.005
    result = last_result[a_show]
    f_khz = result.block_frequency_hz / 1e3
    ax_spec.plot(f_khz, result.local_significance, ".", ms=1.5, color="0.35", label="searched bins")
    ax_spec.axhline(result.local_threshold_sigma, color="k", ls="--", lw=1,
                    label=f"threshold: {result.threshold_sigma:g} sigma global = "
                          f"{result.local_threshold_sigma:.2f} local")
    for c in result.candidates:
        ax_spec.plot(c.frequency_hz / 1e3, c.local_significance, "o", mfc="none", mec="C3", ms=10,
                     label=f"candidate {c.frequency_hz / 1e3:.2f} kHz, {c.significance:.1f} sigma")
    ax_spec.set_xlabel("baseband frequency (kHz)")
    ax_spec.set_ylabel("local significance (sigma)")
    ax_spec.set_title(f"run average after {args.files} files ({args.files * file_s:.0f} s), "
                      f"line A = {a_show} V at +{TONE_HZ / 1e3:.0f} kHz", fontsize=10)
    ax_spec.legend(loc="upper left", fontsize=8)

    seconds = np.cumsum(counts) * settings.slice_len / settings.sample_rate_hz
    for i, (a, (local, expected, threshold)) in enumerate(curves.items()):
        positive = local > 0  # (a log axis: the few negative excesses of the weakest line are left out)
        ax_growth.plot(seconds[positive], local[positive], "o", ms=3, color=f"C{i}",
                       label=f"A = {a} V (measured)")
        ax_growth.plot(seconds, expected, "-", lw=1, color=f"C{i}")
    ax_growth.axhline(threshold, color="k", ls="--", lw=1, label=f"local threshold {threshold:.2f}")
    ax_growth.set_xscale("log")
    ax_growth.set_yscale("log")
    ax_growth.set_xlabel("seconds of data in the run average")
    ax_growth.set_ylabel("local significance of the line (sigma)")
    ax_growth.set_title("significance grows like sqrt(N) (lines: prediction from A)", fontsize=10)
    ax_growth.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
