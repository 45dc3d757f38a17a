"""The measured phases of `quax bench` on a running stack: what is sent (the plan and its
synthetic real-size files), throughput at max pace, latency at real-time pace, resources, machine.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

from quax_faust.core import daq, synth
from quax_faust.settings import Settings
from quax_faust.tools.bench_ceiling import message_bytes
from quax_faust.tools.bench_stack import CpuWindow, Stack, dir_bytes, peak_rss_bytes

SAMPLES_PER_FILE = 1 << 23  # a real DAQ file: 4.194 s at 2 MS/s


@dataclass
class BenchPlan:
    daq_files: int = 8
    """Distinct synthetic real-size pairs (67 MB each), sent in loops with new file numbers."""
    throughput_files: int = 96
    latency_s: float = 120.0
    fft_repeats: int = 20
    scrape_interval_s: float = 1.0
    ceiling_mb: float = 2000.0
    """MB produced, then consumed, for the box's ceiling (bench_ceiling.py), and again for the pass-through (bench_passthrough.py)."""

    @classmethod
    def quick(cls) -> "BenchPlan":
        return cls(daq_files=4, throughput_files=16, latency_s=25.0, fft_repeats=5, ceiling_mb=300.0)


def prepare_daq(directory: Path, n_files: int, settings: Settings) -> Path:
    """Real-size synthetic pairs (made once, kept for later runs)."""
    directory.mkdir(parents=True, exist_ok=True)
    model = synth.SynthModel(sample_rate_hz=settings.sample_rate_hz, tones=((250_000.0, 0.02),))
    for k in tqdm(range(n_files), desc="synthetic DAQ files", unit="pair", leave=False):
        pair = daq.pair_paths(directory, k)
        if not (pair.i_path.exists() and pair.q_path.exists()
                and pair.q_path.stat().st_size == 4 * SAMPLES_PER_FILE):
            daq.write_pair(directory, k, synth.synth_file(k, SAMPLES_PER_FILE, model, seed=2026))
    return directory


def file_data_s(doc: dict, settings: Settings) -> float:
    return (doc["n_slices"] * settings.slice_len + doc["tail_samples"]) / settings.sample_rate_hz


def wire_bytes(slices_per_file: np.ndarray, s: Settings) -> int:
    """Bytes of the slice messages of files with these whole-slice counts: samples and headers."""
    header = message_bytes(s) - s.slices_per_message * s.slice_len * 8
    messages = -(-slices_per_file // s.slices_per_message)
    return int(slices_per_file.sum() * s.slice_len * 8 + messages.sum() * header)


def throughput_phase(stack: Stack, source: Path, plan: BenchPlan) -> dict:
    """Producer at max pace over plan.throughput_files files; real-time factor from file times."""
    s = stack.settings
    loops = math.ceil(plan.throughput_files / plan.daq_files)
    n_files = loops * plan.daq_files
    cpu = CpuWindow(stack)
    producer = stack.produce(source, "bench-max", "max", loops)
    stack.wait_files("bench-max", n_files, producer, "throughput (max pace)", timeout_s=120 + 10 * n_files)
    cores = cpu.cores()
    producer.wait(120)
    files = sorted(stack.files_of("bench-max"), key=lambda d: d["completed_at_s"])
    done_at = np.array([d["completed_at_s"] for d in files])
    data_s = np.array([file_data_s(d, s) for d in files])
    slices = np.array([d["n_slices"] for d in files])
    # Steady state: from the completion of the file after the first 10% (warm-up: plans, caches,
    # the group settling) to the last one.
    k0 = max(2, n_files // 10)
    window_s = done_at[-1] - done_at[k0]
    steady_data_s = data_s[k0 + 1:].sum()
    run_s = done_at[-1] - min(d["first_produced_at_s"] for d in files)
    producer_log = (stack.work_dir / "producer-bench-max.log").read_text(errors="replace")
    return {
        "files": n_files, "data_s": float(data_s.sum()), "wall_s": float(run_s),
        "realtime_factor_run": float(data_s.sum() / run_s),
        "realtime_factor_steady": float(steady_data_s / window_s),
        "steady_files": int(n_files - k0 - 1), "steady_window_s": float(window_s),
        "slices_per_s_steady": float(slices[k0 + 1:].sum() / window_s),
        "mb_per_s_steady": float(slices[k0 + 1:].sum() * s.slice_len * 8 / window_s / 1e6),
        # As the ceiling counts them: the slice messages' bytes on the wire (samples and headers).
        "wire_mb_per_s_steady": float(wire_bytes(slices[k0 + 1:], s) / window_s / 1e6),
        "files_per_s_steady": float((n_files - k0 - 1) / window_s),
        "cpu_cores": cores,
        "producer_summary": next((line for line in producer_log.splitlines() if line.startswith("sent ")), None),
        "prometheus_realtime_factor": stack.prometheus.value(
            f"sum(increase(quax_data_seconds_total[{max(5, int(run_s) + 2)}s])) / {max(5, int(run_s) + 2)}"),
    }


def latency_phase(stack: Stack, source: Path, plan: BenchPlan) -> dict:
    """Producer at real-time pace for plan.latency_s; p50/p99 from Prometheus and per file."""
    s = stack.settings
    file_s = SAMPLES_PER_FILE / s.sample_rate_hz
    n_files = max(plan.daq_files, math.ceil(plan.latency_s / file_s / plan.daq_files) * plan.daq_files)
    time.sleep(3 * plan.scrape_interval_s)  # a scrape between the phases: windows start clean
    started = time.time()
    cpu = CpuWindow(stack)
    producer = stack.produce(source, "bench-realtime", "realtime", n_files // plan.daq_files)
    stack.wait_files("bench-realtime", n_files, producer, "latency (real-time pace)",
                     timeout_s=120 + 2 * n_files * file_s)
    cores = cpu.cores()
    producer.wait(120)
    time.sleep(3 * plan.scrape_interval_s)  # Prometheus has scraped the last observations
    ended = time.time()
    window = f"{int(math.ceil(ended - started))}s"
    prom = stack.prometheus
    quantile = lambda q: prom.value(  # noqa: E731
        f"histogram_quantile({q}, sum by (le) (increase(quax_file_latency_seconds_bucket[{window}])))", ended)
    files = stack.files_of("bench-realtime")
    transform_latency = np.array([d["latency_s"] for d in files])
    # The whole file: from its first message handed to the Kafka client (right after the producer
    # read it) to its spectrum; independent of how the client batches the file's messages.
    whole_file = np.array([d["completed_at_s"] - d["first_produced_at_s"] for d in files])
    series = {}
    for name, expr in (("p50", "quax:file_latency_seconds:p50_rate1m"),
                       ("p99", "quax:file_latency_seconds:p99_rate1m"),
                       ("realtime_factor", "quax:pipeline_realtime_factor:rate1m")):
        # The 1-minute windows of the recording rules reach into the max-pace phase for a minute.
        result = prom.query_range(expr, min(started + 60, ended), ended, plan.scrape_interval_s)
        series[name] = [[float(t), float(v)] for t, v in result[0]["values"]] if result else []
    return {
        "files": n_files, "duration_s": ended - started, "window": window,
        "prometheus_p50_s": quantile(0.5), "prometheus_p99_s": quantile(0.99),
        "prometheus_mean_s": prom.value(f"sum(increase(quax_file_latency_seconds_sum[{window}])) / "
                                        f"sum(increase(quax_file_latency_seconds_count[{window}]))", ended),
        "prometheus_count": prom.value(f"sum(increase(quax_file_latency_seconds_count[{window}]))", ended),
        "to_spectrum_p50_s": float(np.percentile(transform_latency, 50)),
        "to_spectrum_p99_s": float(np.percentile(transform_latency, 99)),
        "to_spectrum_max_s": float(transform_latency.max()),
        "whole_file_p50_s": float(np.percentile(whole_file, 50)),
        "whole_file_p99_s": float(np.percentile(whole_file, 99)),
        "per_file": [[d["file_index"], d["last_produced_at_s"] - started, d["latency_s"],
                      d["completed_at_s"] - d["first_produced_at_s"]] for d in files],
        "prometheus_series": series, "cpu_cores": cores,
    }


def resources(stack: Stack, data_s_sent: float) -> dict:
    s = stack.settings
    log_dir = stack.work_dir / "kafka" / "log"
    # The record batches themselves (segment .log files); the index files are small but
    # preallocated, which would dominate a --quick run.
    slices_bytes = sum(p.stat().st_size for p in log_dir.glob(f"{s.slices_topic}-*/*.log"))
    total_bytes = dir_bytes(log_dir)
    hours = data_s_sent / 3600
    peaks = {name: peak_rss_bytes(p) for name, p in stack.processes.items() if name != "producer"}
    return {
        "peak_rss_bytes": peaks,
        "broker_slices_topic_bytes": slices_bytes, "broker_log_bytes": total_bytes,
        "data_hours_sent": hours,
        "broker_gb_per_data_hour": slices_bytes / hours / 1e9 if hours else None,
        "broker_all_topics_gb_per_data_hour": total_bytes / hours / 1e9 if hours else None,
    }


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), which every benchmark figure names."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
