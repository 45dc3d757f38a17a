"""`quax bench`: how fast the whole chain runs on this machine, measured in one run.

Starts the real stack on free 127.0.0.1 ports — an Apache Kafka broker, four Faust workers,
Prometheus — and the real producer (`quax produce` in its own process), then measures:

1. the FFT stage alone (dsp.power_sums on message-sized batches, exactly as a worker gets them)
   against pure pyfftw on the same slices, as a ratio (measured first, while the box is quiet);
2. the box's ceiling on the same broker, before the chain runs: produce-only MB/s with librdkafka
   and consume-only MB/s with aiokafka for messages of the chain's size; the chain's MB/s is
   quoted as a fraction of the smaller (the ratio to compare across boxes); then the pass-through,
   librdkafka producing while one aiokafka reader process per partition reads at once (the
   transport alone), and the chain's fraction of it;
3. throughput: the real-time factor with the producer at max pace over enough files to reach
   steady state, and slices/s and MB/s (from the per-file times in the workers' tables);
4. latency: file latency p50/p99 with the producer at real-time pace, read from Prometheus (the
   histogram the Grafana dashboard shows), and per file from the tables;
5. resources: CPU per process, peak memory per worker, the broker's disk use per hour of data.

Results: a summary table, bench/results/bench-<time>.json and a PNG of latency over time.
docs/performance.md keeps the latest figures. ``--quick`` is a short smoke run (minutes).
"""
# (The docstring above is the --help text.) This module is the command: `register`, the run order
# and the results files. The parts: bench_fft.py (the FFT stage alone), bench_stack.py (broker,
# workers, Prometheus, producer), bench_phases.py (the plan, what is sent and measured),
# bench_report.py (the summary table and the latency plot).

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

from quax_faust.core import daq
from quax_faust.tools.bench_ceiling import ceiling_phase
from quax_faust.tools.bench_passthrough import passthrough_phase
from quax_faust.tools.bench_fft import fft_stage
from quax_faust.tools.bench_phases import (SAMPLES_PER_FILE, BenchPlan, latency_phase, machine, prepare_daq,
                                           resources, throughput_phase)
from quax_faust.tools.bench_report import ORIGINAL, TARGETS, format_table, plot_latency, summary_rows
from quax_faust.tools.bench_stack import Stack
from quax_faust.settings import Settings

RESULTS_DIR = Path("bench") / "results"  # of the working directory (the checkout: make bench)


def run_bench(settings: Settings, plan: BenchPlan, work_dir: Path, daq_dir: Path, out_dir: Path,
              label: str = "") -> dict:
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
                     "plan": plan.__dict__.copy(),
                     "settings": {k: str(v) for k, v in settings.__dict__.items()},
                     "original": ORIGINAL, "targets": TARGETS}
    prepare_daq(daq_dir, plan.daq_files, settings)
    file_s = SAMPLES_PER_FILE / settings.sample_rate_hz
    files = math.ceil(plan.throughput_files / plan.daq_files) * plan.daq_files + math.ceil(plan.latency_s / file_s) + plan.daq_files
    need = files * SAMPLES_PER_FILE * 8 * 1.1 + (2 << 30)
    work_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work_dir).free
    if free < need:
        raise RuntimeError(f"{work_dir}: {free / 1e9:.1f} GB free, the broker log of this run needs "
                           f"~{need / 1e9:.1f} GB; use --work-dir elsewhere or fewer --throughput-files")
    print("[bench] FFT stage vs pure pyfftw (before the stack starts)", flush=True)
    results["fft"] = fft_stage(daq.read_pair(daq.pair_paths(daq_dir, 0)), settings, plan.fft_repeats)
    stack = Stack.make(settings, work_dir, plan.scrape_interval_s)
    print(f"[bench] starting broker {stack.settings.broker}, {settings.workers} workers on ports "
          f"{stack.settings.web_port_base}.., Prometheus on :{stack.settings.prometheus_port}; "
          f"work dir {work_dir}", flush=True)
    try:
        stack.start()
        print(f"[bench] the box's ceiling: {plan.ceiling_mb:.0f} MB produced (librdkafka), read back (aiokafka)",
              flush=True)
        results["ceiling"] = ceiling_phase(stack.settings, plan.ceiling_mb)
        print(f"[bench] pass-through: {plan.ceiling_mb:.0f} MB produced (librdkafka) and read at once "
              f"({settings.partitions} aiokafka consumer processes)", flush=True)
        results["passthrough"] = passthrough_phase(stack.settings, plan.ceiling_mb)
        results["throughput"] = throughput_phase(stack, daq_dir, plan)
        results["throughput"]["fraction_of_ceiling"] = (results["throughput"]["wire_mb_per_s_steady"]
                                                        / results["ceiling"]["ceiling_mb_per_s"])
        results["throughput"]["fraction_of_passthrough"] = (results["throughput"]["wire_mb_per_s_steady"]
                                                            / results["passthrough"]["mb_per_s"])
        results["latency_started_at_s"] = time.time()
        results["latency"] = latency_phase(stack, daq_dir, plan)
        results["resources"] = resources(stack, results["throughput"]["data_s"] + results["latency"]["files"]
                                         * SAMPLES_PER_FILE / settings.sample_rate_hz)
    finally:
        stack.stop()
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "bench-" + time.strftime("%Y%m%d-%H%M%S") + label
    results["table"] = format_table(summary_rows(results))
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1))
    plot_latency(results, out_dir / f"{stem}.png")
    results["files"] = [str(out_dir / f"{stem}.json"), str(out_dir / f"{stem}.png")]
    return results


def cmd_bench(args, settings: Settings) -> int:
    plan = BenchPlan.quick() if args.quick else BenchPlan()
    for name in ("daq_files", "throughput_files", "latency_s", "fft_repeats", "ceiling_mb"):
        value = getattr(args, name)
        if value is not None:
            setattr(plan, name, value)
    work_dir = Path(args.work_dir or Path(settings.var_dir) / "bench" / time.strftime("%Y%m%d-%H%M%S"))
    if work_dir.exists() and any(work_dir.iterdir()):
        raise ValueError(f"work dir {work_dir} is not empty")
    for signum in (signal.SIGTERM, signal.SIGHUP):  # stop the stack on kill too, not only on Ctrl-C
        signal.signal(signum, _exit_on_signal)
    try:
        results = run_bench(settings, plan, work_dir, Path(args.daq_dir or Path(settings.var_dir) / "bench-daq"),
                            Path(args.out), label="-quick" if args.quick else "")
    finally:
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    m = results["machine"]
    print(f"\nquax bench on {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB); load average "
          f"{m['load_average_at_start']} at start, {m['load_average_at_end']} at end\n")
    print(results["table"])
    print("\nresults: " + "  ".join(results["files"]))
    return 0


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def register(sub, common) -> None:
    """Add `quax bench` to the quax command (cli.build_parser)."""
    p = sub.add_parser("bench", parents=[common], help="measure throughput, latency, FFT stage and resources",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run (16 files, 25 s real time)")
    p.add_argument("--daq-files", type=int, help="distinct synthetic pairs (default 8; quick 4)")
    p.add_argument("--throughput-files", type=int, help="files sent at max pace (default 96; quick 16)")
    p.add_argument("--latency-s", type=float, help="seconds of real-time-paced data (default 120; quick 25)")
    p.add_argument("--fft-repeats", type=int, help="rounds of the FFT comparison (default 20; quick 5)")
    p.add_argument("--ceiling-mb", type=float, help="MB produced and consumed for each of the box's ceilings: produce-only/consume-only, then pass-through (default 2000; quick 300)")
    p.add_argument("--daq-dir", help="where the synthetic pairs are kept (default var/bench-daq)")
    p.add_argument("--work-dir", help="broker/worker/Prometheus data (default var/bench/<time>)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="results folder (default bench/results)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (broker log, worker stores)")
    p.set_defaults(func=cmd_bench)
