"""Soak: thousands of small files through the real stack; worker memory must plateau.

    .venv/bin/python bench/soak.py --files 3000 --workers 2

Starts its own broker and workers on free ports, sends small synthetic files in rounds, and prints
after each round each worker's idle RSS (the minimum over a few seconds, so after a heap trim), its
glibc heap in use and the tables' RocksDB memory against their caps, plus the run's counts (every
slice once). Not part of `make test`; tests/test_memory.py is the short version that asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from quax_faust.core import daq, synth
from quax_faust.tools.launch import Broker, Workers, free_port, wait_for_run
from quax_faust.ingest.producer import produce_directory
from quax_faust.settings import Settings


def idle_rss_mib(pid: int, trim_interval_s: float) -> float:
    """Minimum RSS over 2.5 heap-trim periods (at least 3 s) of an idle worker (MiB)."""
    proc, samples = psutil.Process(pid), []
    end = time.monotonic() + max(2.5 * trim_interval_s, 3.0)
    while time.monotonic() < end:
        samples.append(proc.memory_info().rss)
        time.sleep(0.25)
    return round(min(samples) / 2**20, 1)


def worker_memory_mib(url: str) -> dict[str, float]:
    """The worker's quax_worker_heap_bytes{state="in_use"} and quax_table_memory_bytes{measure="used"} (MiB)."""
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == "quax_worker_heap_bytes" and sample.labels["state"] == "in_use":
                out["heap_in_use"] = round(sample.value / 2**20, 1)
            elif family.name == "quax_table_memory_bytes" and sample.labels["measure"] == "used":
                out[sample.labels["kind"]] = round(sample.value / 2**20, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--round", type=int, default=250, help="files per measurement round")
    parser.add_argument("--slices", type=int, default=8, help="slices per file")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trim-interval", type=float, default=Settings.heap_trim_interval_s,
                        help="heap_trim_interval_s of the workers (s; 0: never trim)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="quax-soak-"))
    broker = Broker(port=free_port(2), data_dir=tmp / "kafka").start()
    settings = Settings().replace(broker=broker.bootstrap, var_dir=tmp / "var", workers=args.workers,
                                  web_port_base=free_port(args.workers), slices_per_message=args.slices,
                                  heap_trim_interval_s=args.trim_interval)
    workers = Workers(settings, tmp / "logs").start()
    try:
        workers.wait_assigned()
        x = synth.synth_file(0, settings.slice_len * args.slices, synth.SynthModel())
        for k in range(args.files):
            daq.write_pair(tmp / "daq", k, x)
        rows = []
        started = time.monotonic()
        for stop in range(args.round, args.files + 1, args.round):
            asyncio.run(produce_directory(settings, tmp / "daq", "soak", "max", progress=False,
                                          indices=range(stop - args.round, stop), checkpoint=False))
            summary = wait_for_run(settings, "soak", stop, timeout_s=600)
            elapsed = time.monotonic() - started
            rss = [idle_rss_mib(p.pid, settings.heap_trim_interval_s) for p in workers.procs.values()]
            memory = [worker_memory_mib(settings.worker_url(k)) for k in workers.procs]
            rows.append({"files": stop, "slices": summary["n_slices"], "idle_rss_mib": rss,
                         "heap_in_use_mib": [m.get("heap_in_use") for m in memory],
                         "memtables_mib": [m.get("memtables") for m in memory],
                         "block_cache_mib": [m.get("block_cache") for m in memory],
                         "elapsed_s": round(elapsed, 1)})
            print(json.dumps(rows[-1]), flush=True)
        expected = args.files * args.slices
        print(f"slices counted {rows[-1]['slices']} of {expected}: "
              f"{'OK' if rows[-1]['slices'] == expected else 'MISMATCH'}")
    finally:
        workers.stop()
        broker.stop()


if __name__ == "__main__":
    main()
