"""The campaign's DAQ side: tiny file pairs written ahead in a thread, sent by the real producer.

    .venv/bin/python bench/campaign_feed.py --dir DIR --run RUN --files N [--first K]   (QUAX_* settings)

Run by bench/campaign.py and tests/test_campaign.py in a process of its own (its CPU and rate are
its own). A writer thread writes chunks of ``--chunk`` pairs (distinct noise per file:
``synth.synth_file(k, ...)`` seeds each file from its index; identical files would make every
search of the run degenerate) into DIR/chunk-NNNNNN/, at most two chunks ahead; the main thread
sends each chunk with ``produce_directory`` at max pace and deletes it (144,000 pairs of 2 slices
are 7 GB). It prints one JSON line per chunk and a summary line: the producer's own rate (files
per second of its busy time) and how long it waited for the writer (> 0: the writer was the
bottleneck, not the chain).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import shutil
import threading
import time
from pathlib import Path

from quax_faust.core import daq, synth
from quax_faust.ingest.producer import produce_directory
from quax_faust.settings import Settings

SEED = 20261130


def write_chunk(directory: Path, indices: range, n_samples: int) -> float:
    """Write pairs ``indices`` (distinct noise through the passband) into directory; seconds spent."""
    started = time.perf_counter()
    model = synth.SynthModel()
    directory.mkdir(parents=True, exist_ok=True)
    for k in indices:
        daq.write_pair(directory, k, synth.synth_file(k, n_samples, model, seed=SEED))
    return time.perf_counter() - started


def chunks(first: int, n_files: int, chunk: int) -> list[range]:
    return [range(a, min(a + chunk, first + n_files)) for a in range(first, first + n_files, chunk)]


def run_feed(settings: Settings, root: Path, run: str, first: int, n_files: int, slices_per_file: int,
             chunk: int = 1000, report=print) -> dict:
    """Write and send files first .. first+n_files-1 of run; report(dict) per chunk; the summary."""
    n_samples = settings.slice_len * slices_per_file
    ready: queue.Queue = queue.Queue(maxsize=2)
    stats = {"write_s": 0.0}

    def writer() -> None:
        try:
            for indices in chunks(first, n_files, chunk):
                directory = root / f"chunk-{indices.start:06d}"
                stats["write_s"] += write_chunk(directory, indices, n_samples)
                ready.put((directory, indices))
        finally:
            ready.put(None)

    thread = threading.Thread(target=writer, name="campaign-writer", daemon=True)
    started = time.monotonic()
    thread.start()
    sent = send_s = wait_s = 0.0
    while True:
        t0 = time.monotonic()
        item = ready.get()
        wait_s += time.monotonic() - t0
        if item is None:
            break
        directory, indices = item
        t0 = time.monotonic()
        produced = asyncio.run(produce_directory(settings, directory, run, "max", progress=False,
                                                 checkpoint=False))
        send_s += time.monotonic() - t0
        sent += produced.files_sent
        if produced.skipped:
            raise RuntimeError(f"{directory}: producer skipped {produced.skipped[:3]}")
        shutil.rmtree(directory)
        report({"t": time.time(), "files_sent": int(sent), "last_index": indices[-1]})
    thread.join()
    wall = time.monotonic() - started
    summary = {"files_sent": int(sent), "wall_s": round(wall, 2), "send_s": round(send_s, 2),
               "producer_files_per_s": round(sent / send_s, 1) if send_s else None,
               "waited_for_writer_s": round(wait_s, 2), "write_s": round(stats["write_s"], 2),
               "writer_files_per_s": round(n_files / stats["write_s"], 1) if stats["write_s"] else None}
    report({"summary": summary})
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--files", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--slices", type=int, default=2, help="slices per file")
    parser.add_argument("--chunk", type=int, default=1000, help="pairs per directory sent at once")
    args = parser.parse_args()
    settings = Settings.from_env()
    run_feed(settings, args.dir, args.run, args.first, args.files, args.slices, args.chunk,
             report=lambda doc: print(json.dumps(doc), flush=True))


if __name__ == "__main__":
    main()
