"""Soak: thousands of small files through the real stack; worker memory must plateau.

    .venv/bin/python bench/soak.py --files 3000 --workers 2

Starts its own broker and workers on free ports, sends small synthetic files in rounds, and prints
worker RSS after each round plus the run's counts (every slice once). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import psutil

from quax_faust import daq, synth
from quax_faust.launch import Broker, Workers, free_port, wait_for_run
from quax_faust.producer import produce_directory
from quax_faust.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--round", type=int, default=250, help="files per measurement round")
    parser.add_argument("--slices", type=int, default=8, help="slices per file")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="quax-soak-"))
    broker = Broker(port=free_port(2), data_dir=tmp / "kafka").start()
    settings = Settings().replace(broker=broker.bootstrap, var_dir=tmp / "var", workers=args.workers,
                                  web_port_base=free_port(args.workers), slices_per_message=args.slices)
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
            rss = [psutil.Process(p.pid).memory_info().rss / 2**20 for p in workers.procs.values()]
            rows.append({"files": stop, "slices": summary["n_slices"], "rss_mib": [round(r, 1) for r in rss],
                         "elapsed_s": round(time.monotonic() - started, 1)})
            print(json.dumps(rows[-1]), flush=True)
        expected = args.files * args.slices
        print(f"slices counted {rows[-1]['slices']} of {expected}: "
              f"{'OK' if rows[-1]['slices'] == expected else 'MISMATCH'}")
    finally:
        workers.stop()
        broker.stop()


if __name__ == "__main__":
    main()
