"""The running stack of `quax bench`: broker, four workers and Prometheus on free ports, the
producer started in its own process, and what the phases read from them (the workers' tables over
HTTP, CPU seconds and peak memory per process, disk use).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from tqdm import tqdm

from quax_faust.tools.launch import Broker, Workers, free_port, settings_env
from quax_faust.tools.prometheus import Prometheus
from quax_faust.settings import Settings


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
    last_cpu_s: dict[str, float] = field(default_factory=dict)
    """Each process's latest CPU seconds (cpu_seconds), kept after it exits."""

    @classmethod
    def make(cls, base: Settings, work_dir: Path, scrape_interval_s: float) -> "Stack":
        port = free_port(2)
        settings = base.replace(broker=f"127.0.0.1:{port}", web_port_base=free_port(base.workers),
                                producer_metrics_port=free_port(), prometheus_port=free_port(),
                                var_dir=work_dir / "var", app_id="quax-bench")
        stack = cls(settings, work_dir, scrape_interval_s)
        stack.broker = Broker(port=port, data_dir=work_dir / "kafka", heap="-Xmx1g -Xms512m",
                              lib_dir=Path(settings.kafka_lib_dir))
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
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes["producer"] = psutil.Process(proc.pid)
        self.last_cpu_s.pop("producer", None)  # the previous producer's reading is not this one's
        return proc

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds of each process so far; a process that has exited keeps its last reading
        (wait_files reads them 4 times a second: the producer often exits before the phase ends,
        and its CPU was then counted as "others")."""
        for name, proc in self.processes.items():
            try:
                times = proc.cpu_times()
                self.last_cpu_s[name] = times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return {name: self.last_cpu_s[name] for name in self.processes if name in self.last_cpu_s}

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
        """The run's finished files, from the runs list: the run's own view would JSON-encode its
        spectra at every poll (4 a second), ~15 % of the run table's worker at max pace."""
        try:
            runs = self.get_json("/quax/runs/")["runs"]
            return next((int(r["n_files"]) for r in runs if r["run"] == run), 0)
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
                self.cpu_seconds()  # the latest reading of each process, kept if it exits
                self.check_alive()
                if producer.poll() not in (None, 0):
                    raise RuntimeError(f"the producer exited with {producer.returncode}; "
                                       f"see {self.work_dir}/producer-{run}.log")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run {run}: {done} of {n_files} files after {timeout_s:.0f} s")
                time.sleep(0.25)
            bar.update(n_files - bar.n)


def peak_rss_bytes(proc: psutil.Process) -> int | None:
    """Peak resident set size (VmHWM) of a running process."""
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def dir_bytes(path: Path) -> int:
    """Disk space used (allocated blocks: Kafka's preallocated, sparse index files count as used)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def system_busy_s() -> float:
    """CPU seconds the whole box has been busy since boot, all cores together (psutil)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


class CpuWindow:
    """CPU used by each of our processes, and by everything else on the box, over a phase."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.ours0 = stack.cpu_seconds()
        self.pids0 = {name: proc.pid for name, proc in stack.processes.items()}
        self.busy0 = system_busy_s()
        self.t0 = time.monotonic()

    def _same(self, name: str) -> bool:
        return self.pids0.get(name) == self.stack.processes[name].pid

    def cores(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        ours = self.stack.cpu_seconds()
        # A process started during the window (the phase's producer) counts from 0, not from the
        # reading of the one that had its name before (that gave the latency phase -0.47 cores).
        used = {name: (ours[name] - (self.ours0.get(name, 0.0) if self._same(name) else 0.0)) / wall
                for name in ours}
        workers = sum(v for k, v in used.items() if k.startswith("worker"))
        busy = (system_busy_s() - self.busy0) / wall
        return {**{k: round(v, 3) for k, v in used.items()}, "workers_total": round(workers, 3),
                "box_busy": round(busy, 3), "others": round(max(0.0, busy - sum(used.values())), 3)}
