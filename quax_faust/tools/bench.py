"""`quax bench`: how fast the whole chain runs on this machine, measured in one run.

Starts the real stack on free 127.0.0.1 ports — an Apache Kafka broker, four Faust workers,
Prometheus — and the real producer (`quax produce` in its own process), then measures:

1. the FFT stage alone (dsp.power_sums on message-sized batches, exactly as a worker gets them)
   against pure pyfftw on the same slices, as a ratio (measured first, while the box is quiet);
2. throughput: the real-time factor with the producer at max pace over enough files to reach
   steady state, and slices/s and MB/s (from the per-file times in the workers' tables);
3. latency: file latency p50/p99 with the producer at real-time pace, read from Prometheus (the
   histogram the Grafana dashboard shows), and per file from the tables;
4. resources: CPU per process, peak memory per worker, the broker's disk use per hour of data.

Results: a summary table, bench/results/bench-<time>.json and a PNG of latency over time.
docs/performance.md keeps the latest figures. ``--quick`` is a short smoke run (minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

from quax_faust.core import daq, dsp, synth, wire
from quax_faust.tools.launch import Broker, Workers, free_port, settings_env
from quax_faust.tools.prometheus import Prometheus
from quax_faust.settings import REPO_DIR, Settings

SAMPLES_PER_FILE = 1 << 23  # a real DAQ file: 4.194 s at 2 MS/s
RESULTS_DIR = REPO_DIR / "bench" / "results"
ORIGINAL = {"realtime_factor": 0.25, "producer_messages_per_s": 165, "spark_slices_per_s": 250,
            "machine": "4 VMs, 16 vCPUs (Kafka + Spark Structured Streaming)"}
TARGETS = {"realtime_factor": 10.0, "latency_p99_s": 1.0, "fft_ratio": 1.5}


@dataclass
class BenchPlan:
    daq_files: int = 8
    """Distinct synthetic real-size pairs (67 MB each), sent in loops with new file numbers."""
    throughput_files: int = 96
    latency_s: float = 120.0
    fft_repeats: int = 20
    scrape_interval_s: float = 1.0

    @classmethod
    def quick(cls) -> "BenchPlan":
        return cls(daq_files=4, throughput_files=16, latency_s=25.0, fft_repeats=5)


# ---------------------------------------------------------------------------------------------
# The FFT stage alone

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


# ---------------------------------------------------------------------------------------------
# The stack

@dataclass
class Stack:
    """Broker + workers + Prometheus of one benchmark, on free ports under work_dir."""

    settings: Settings
    work_dir: Path
    scrape_interval_s: float
    broker: Broker | None = None
    workers: Workers | None = None
    prometheus: Prometheus | None = None
    processes: dict[str, psutil.Process] = field(default_factory=dict)

    @classmethod
    def make(cls, base: Settings, work_dir: Path, scrape_interval_s: float) -> "Stack":
        port = free_port(2)
        settings = base.replace(broker=f"127.0.0.1:{port}", web_port_base=free_port(base.workers),
                                producer_metrics_port=free_port(), prometheus_port=free_port(),
                                var_dir=work_dir / "var", app_id="quax-bench")
        stack = cls(settings, work_dir, scrape_interval_s)
        stack.broker = Broker(port=port, data_dir=work_dir / "kafka", heap="-Xmx1g -Xms512m")
        return stack

    def start(self) -> "Stack":
        self.broker.start()
        self.processes["broker"] = psutil.Process(int((self.work_dir / "kafka.pid").read_text()))
        self.workers = Workers(self.settings, self.work_dir / "logs").start()
        self.workers.wait_assigned(timeout_s=240)
        for k, proc in self.workers.procs.items():
            self.processes[f"worker{k}"] = psutil.Process(proc.pid)
        self.prometheus = Prometheus(self.settings, self.work_dir / "prometheus",
                                     scrape_interval_s=self.scrape_interval_s).start()
        self.processes["prometheus"] = psutil.Process(self.prometheus.proc.pid)
        self.processes["bench"] = psutil.Process()
        return self

    def stop(self) -> None:
        for part in (self.prometheus, self.workers, self.broker):
            if part is not None:
                try:
                    part.stop()
                except Exception as exc:  # keep stopping the rest
                    print(f"[bench] stopping {type(part).__name__}: {exc}", file=sys.stderr)

    def produce(self, source: Path, run: str, pace: str, loops: int) -> subprocess.Popen:
        """`quax produce` in its own process, serving its /metrics on producer_metrics_port."""
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        log = open(self.work_dir / f"producer-{run}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "quax_faust.tools.cli", "produce", "--source", str(source),
                                 "--run", run, "--pace", pace, "--loop", str(loops), "--no-checkpoint"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_DIR)
        self.processes["producer"] = psutil.Process(proc.pid)
        return proc

    def cpu_seconds(self) -> dict[str, float]:
        out = {}
        for name, proc in self.processes.items():
            try:
                times = proc.cpu_times()
                out[name] = times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return out

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.settings.worker_url(0) + path, timeout=30) as r:
            return json.loads(r.read())

    def files_of(self, run: str) -> list[dict]:
        """Every finished file of the run, with its producer/completion times (no spectra)."""
        files, start = [], 0
        while True:
            page = self.get_json(f"/quax/runs/{run}/files/?start={start}&limit=1000")["files"]
            files += page
            if len(page) < 1000:
                return files
            start = page[-1]["file_index"] + 1

    def n_files(self, run: str) -> int:
        try:
            return int(self.get_json(f"/quax/runs/{run}/")["n_files"])
        except (OSError, ValueError, KeyError):
            return 0

    def check_alive(self) -> None:
        """Raise if the broker or a worker has died (the run would only time out)."""
        broker = self.processes["broker"]
        if not broker.is_running() or broker.status() == psutil.STATUS_ZOMBIE:
            raise RuntimeError(f"the broker died; see {self.work_dir}/kafka/stdout.log")
        for k, proc in self.workers.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"worker {k} exited with {proc.returncode}; see {self.work_dir}/logs/worker-{k}.log")

    def wait_files(self, run: str, n_files: int, producer: subprocess.Popen, desc: str,
                   timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with tqdm(total=n_files, desc=desc, unit="file") as bar:
            while (done := self.n_files(run)) < n_files:
                bar.update(done - bar.n)
                self.check_alive()
                if producer.poll() not in (None, 0):
                    raise RuntimeError(f"the producer exited with {producer.returncode}; "
                                       f"see {self.work_dir}/producer-{run}.log")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run {run}: {done} of {n_files} files after {timeout_s:.0f} s")
                time.sleep(0.25)
            bar.update(n_files - bar.n)


def _peak_rss_bytes(proc: psutil.Process) -> int | None:
    """Peak resident set size (VmHWM) of a running process."""
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _dir_bytes(path: Path) -> int:
    """Disk space used (allocated blocks: Kafka's preallocated, sparse index files count as used)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def _system_busy_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


class CpuWindow:
    """CPU used by each of our processes, and by everything else on the box, over a phase."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.ours0 = stack.cpu_seconds()
        self.busy0 = _system_busy_s()
        self.t0 = time.monotonic()

    def cores(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        ours = self.stack.cpu_seconds()
        used = {name: (ours[name] - self.ours0.get(name, 0.0)) / wall for name in ours}
        workers = sum(v for k, v in used.items() if k.startswith("worker"))
        busy = (_system_busy_s() - self.busy0) / wall
        return {**{k: round(v, 3) for k, v in used.items()}, "workers_total": round(workers, 3),
                "box_busy": round(busy, 3), "others": round(max(0.0, busy - sum(used.values())), 3)}


# ---------------------------------------------------------------------------------------------
# The phases

def file_data_s(doc: dict, settings: Settings) -> float:
    return (doc["n_slices"] * settings.slice_len + doc["tail_samples"]) / settings.sample_rate_hz


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
    total_bytes = _dir_bytes(log_dir)
    hours = data_s_sent / 3600
    peaks = {name: _peak_rss_bytes(p) for name, p in stack.processes.items() if name != "producer"}
    return {
        "peak_rss_bytes": peaks,
        "broker_slices_topic_bytes": slices_bytes, "broker_log_bytes": total_bytes,
        "data_hours_sent": hours,
        "broker_gb_per_data_hour": slices_bytes / hours / 1e9 if hours else None,
        "broker_all_topics_gb_per_data_hour": total_bytes / hours / 1e9 if hours else None,
    }


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


# ---------------------------------------------------------------------------------------------
# Report

def summary_rows(r: dict) -> list[tuple[str, str, str, str]]:
    """(what, measured here, target, the original) rows of the summary table."""
    t, lat, fft, res = r["throughput"], r["latency"], r["fft"], r["resources"]
    workers = {k: v for k, v in res["peak_rss_bytes"].items() if k.startswith("worker")}
    fmt = lambda x, spec: "n/a" if x is None else format(x, spec)  # noqa: E731
    return [
        ("real-time factor, steady (max pace)", f"{t['realtime_factor_steady']:.1f}x",
         f">= {TARGETS['realtime_factor']:.0f}x", f"{ORIGINAL['realtime_factor']}x"),
        ("real-time factor, whole run", f"{t['realtime_factor_run']:.1f}x ({t['files']} files)", "", ""),
        ("slices/s (steady)", f"{t['slices_per_s_steady']:.0f}", ">= 6510", f"<= {ORIGINAL['spark_slices_per_s']}"),
        ("MB/s of samples (steady)", f"{t['mb_per_s_steady']:.0f}", ">= 160", ""),
        ("file latency p50, real-time pace (Prometheus)", f"{fmt(lat['prometheus_p50_s'], '.3f')} s", "", ""),
        ("file latency p99, real-time pace (Prometheus)", f"{fmt(lat['prometheus_p99_s'], '.3f')} s",
         f"<= {TARGETS['latency_p99_s']:.0f} s", ""),
        ("  last slice sent -> spectrum, p50 / p99 / max (per file)",
         f"{lat['to_spectrum_p50_s']:.3f} / {lat['to_spectrum_p99_s']:.3f} / {lat['to_spectrum_max_s']:.3f} s", "", ""),
        ("  first slice sent -> spectrum, p50 / p99 (per file)",
         f"{lat['whole_file_p50_s']:.3f} / {lat['whole_file_p99_s']:.3f} s", "", ""),
        ("FFT stage / pure pyfftw", f"{fft['ratio_stage_to_pyfftw']:.2f}x", f"<= {TARGETS['fft_ratio']}x", ""),
        ("FFT stage / bare FFTW execute", f"{fft['ratio_stage_to_fftw_execute']:.2f}x", "", ""),
        ("FFT stage per 4.19 s file", f"{fft['stage_ms_per_file']:.1f} ms", "", ""),
        ("peak memory per worker", ", ".join(f"{v / 2**20:.0f}" for v in workers.values()) + " MiB", "", ""),
        ("broker disk per hour of data (slices)", f"{fmt(res['broker_gb_per_data_hour'], '.1f')} GB", "", ""),
        ("CPU cores at max pace: broker/workers/producer/others",
         "{broker:.2f} / {workers_total:.2f} / {producer:.2f} / {others:.2f}".format(**{
             "producer": 0.0, **t["cpu_cores"]}), "2 cores", ""),
    ]


def format_table(rows) -> str:
    head = ("", "measured", "target", "original (16 vCPUs)")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, rows)])


def plot_latency(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = r["latency"]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    per_file = np.array(lat["per_file"]) if lat["per_file"] else np.zeros((0, 4))
    if per_file.size:
        ax.plot(per_file[:, 1], per_file[:, 2], ".", color="0.3", label="each file: last slice sent -> spectrum")
        ax.plot(per_file[:, 1], per_file[:, 3], "x", color="0.6", ms=4, label="each file: first slice sent -> spectrum")
    t0 = r["latency_started_at_s"]
    for name, style in (("p50", "-"), ("p99", "--")):
        values = np.array(lat["prometheus_series"].get(name) or np.zeros((0, 2)))
        if values.size:
            ax.plot(values[:, 0] - t0, values[:, 1], style, label=f"{name}, 1-min window (Prometheus)")
    ax.axhline(TARGETS["latency_p99_s"], color="red", lw=0.8, label="target p99")
    ax.set_xlabel("time since the real-time phase started (s)")
    ax.set_ylabel("file latency (s)")
    ax.set_title(f"quax-stream file latency at real-time pace — {r['machine']['cores']} cores, {r['started']}")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The command

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
        results["throughput"] = throughput_phase(stack, daq_dir, plan)
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
    for name in ("daq_files", "throughput_files", "latency_s", "fft_repeats"):
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
    p.add_argument("--daq-dir", help="where the synthetic pairs are kept (default var/bench-daq)")
    p.add_argument("--work-dir", help="broker/worker/Prometheus data (default var/bench/<time>)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="results folder (default bench/results)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (broker log, worker stores)")
    p.set_defaults(func=cmd_bench)
