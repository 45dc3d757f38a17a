"""What bench/campaign.py records while files flow: folded files, worker RSS, disk; checks and plots.

A ``Watch`` thread samples every ``interval_s``: each worker's ``quax_files_folded_total`` (from
its /metrics) and RSS (psutil), and every ``disk_every`` samples the RocksDB stores
(var/workers/K) and the broker's log directories per topic. ``rss_check`` is the week's memory
criterion; ``plot`` draws the three figures into one PNG.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

MIB, GIB = 2**20, 2**30


def folded_total(url: str) -> float | None:
    """quax_files_folded_total of the worker at url (None if it does not answer)."""
    try:
        text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    except OSError:
        return None
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "quax_files_folded"
               for s in f.samples if s.name == "quax_files_folded_total")


def dir_bytes(path: Path) -> int:
    """Bytes allocated on disk under path (st_blocks: Kafka's preallocated sparse index files count
    for what they really take, not their 10 MiB size)."""
    total = 0
    for p in Path(path).rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_blocks * 512
        except OSError:  # RocksDB and Kafka delete files while we walk
            pass
    return total


def topic_bytes(log_dir: Path) -> dict[str, int]:
    """Bytes on disk per topic in a broker's log directory (folders TOPIC-PARTITION)."""
    sizes: dict[str, int] = {}
    for d in Path(log_dir).iterdir() if Path(log_dir).is_dir() else []:
        topic, _, partition = d.name.rpartition("-")
        if d.is_dir() and partition.isdigit():
            sizes[topic] = sizes.get(topic, 0) + dir_bytes(d)
    return sizes


class Watch(threading.Thread):
    """Samples until stop(); ``samples`` is a list of dicts (t, folded per worker, rss per worker[, disk])."""

    def __init__(self, urls: dict[int, str], pids: Callable[[], dict[int, int]], store_dirs: dict[int, Path],
                 broker_log_dir: Path, interval_s: float = 2.0, disk_every: int = 10):
        super().__init__(name="campaign-watch", daemon=True)
        self.urls, self.pids, self.store_dirs, self.broker_log_dir = urls, pids, store_dirs, broker_log_dir
        self.interval_s, self.disk_every = interval_s, disk_every
        self.samples: list[dict] = []
        self._done = threading.Event()

    def sample(self, with_disk: bool) -> dict:
        row: dict = {"t": time.time(), "folded": {}, "rss_mib": {}}
        for k, url in self.urls.items():
            row["folded"][k] = folded_total(url)
        for k, pid in self.pids().items():
            try:
                row["rss_mib"][k] = round(psutil.Process(pid).memory_info().rss / MIB, 1)
            except psutil.Error:
                row["rss_mib"][k] = None
        if with_disk:
            row["store_bytes"] = {k: dir_bytes(d) for k, d in self.store_dirs.items()}
            row["topic_bytes"] = topic_bytes(self.broker_log_dir)
        return row

    def run(self) -> None:
        n = 0
        while not self._done.is_set():
            self.samples.append(self.sample(with_disk=n % self.disk_every == 0))
            n += 1
            self._done.wait(self.interval_s)

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.samples.append(self.sample(with_disk=True))


def folded_series(samples: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(seconds since the first sample, files folded by all workers together)."""
    t = np.array([s["t"] for s in samples]) - samples[0]["t"]
    # The counter lives where fold_spectra runs (the run-table owner); a restarted worker starts at 0,
    # so the figure is the running sum of each worker's increments.
    total, last, out = 0.0, {}, []
    for s in samples:
        for k, v in s["folded"].items():
            if v is not None:
                prev = last.get(k, 0.0)
                total += v - prev if v >= prev else v
                last[k] = v
        out.append(total)
    return t, np.array(out)


def files_per_s(t: np.ndarray, folded: np.ndarray, window_s: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """Rate over a window centred on each sample time (files/s)."""
    rates = []
    for ti in t:
        i = int(np.searchsorted(t, ti - window_s / 2))
        j = min(int(np.searchsorted(t, ti + window_s / 2, side="right")) - 1, len(t) - 1)
        rates.append((folded[j] - folded[i]) / (t[j] - t[i]) if t[j] > t[i] else np.nan)
    return t, np.array(rates)


def rss_check(samples: list[dict], limit_mib: float = 1024.0, growth_limit: float = 0.05,
              window: float = 0.1) -> dict:
    """Per worker: peak RSS, and growth over the second half = median RSS of the last `window` of
    the samples over the median of the `window` around the half-way point (medians: RSS swings
    with heap trims and compactions). OK if every peak < limit_mib and every growth < growth_limit."""
    out = {}
    workers = sorted({k for s in samples for k in s["rss_mib"]})
    for k in workers:
        rss = np.array([s["rss_mib"].get(k) or np.nan for s in samples], dtype=float)
        n = len(rss)
        w = max(1, int(window * n))
        mid = np.nanmedian(rss[n // 2 - w // 2: n // 2 + w - w // 2])
        end = np.nanmedian(rss[n - w:])
        out[k] = {"peak_mib": float(np.nanmax(rss)), "mid_mib": float(mid), "end_mib": float(end),
                  "growth_second_half": float(end / mid - 1)}
    ok = all(v["peak_mib"] < limit_mib and v["growth_second_half"] < growth_limit for v in out.values())
    return {"workers": out, "ok": ok, "limit_mib": limit_mib, "growth_limit": growth_limit}


def plot(samples: list[dict], out: Path, title: str, marks: list[tuple[str, float]] = ()) -> Path:
    """files/s, RSS per worker and disk over time; marks: (phase name, time.time() it began)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, folded = folded_series(samples)
    _, rate = files_per_s(t, folded)
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(t / 60, rate)
    axes[0].set_ylabel("files/s (15 s window)")
    axes[0].set_title(title)
    for k in sorted({k for s in samples for k in s["rss_mib"]}):
        axes[1].plot(t / 60, [s["rss_mib"].get(k) or np.nan for s in samples], label=f"worker {k}")
    axes[1].axhline(1024, color="red", ls="--", lw=0.8, label="1 GiB")
    axes[1].set_ylabel("RSS (MiB)")
    axes[1].legend(fontsize=8)
    disk = [(s["t"] - samples[0]["t"], s) for s in samples if "store_bytes" in s]
    td = np.array([d[0] for d in disk]) / 60
    axes[2].plot(td, [sum(s["store_bytes"].values()) / GIB for _, s in disk], label="RocksDB stores (all workers)")
    axes[2].plot(td, [sum(s["topic_bytes"].values()) / GIB for _, s in disk], label="broker logs (all topics)")
    axes[2].set_ylabel("GiB")
    axes[2].set_xlabel("minutes")
    axes[2].legend(fontsize=8)
    for name, at in marks:
        for ax in axes:
            ax.axvline((at - samples[0]["t"]) / 60, color="grey", lw=0.6, ls=":")
        axes[0].annotate(name, ((at - samples[0]["t"]) / 60, 0.98), xycoords=("data", "axes fraction"),
                         rotation=90, va="top", fontsize=7, color="grey")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
