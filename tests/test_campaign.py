"""The week in an hour, scaled down: 1,500 tiny files through 2 workers (bench/campaign.py's checks).

Files of 2 slices with distinct noise each (bench/campaign_feed.py) flow through the real producer
and two workers with the candidate search on, while every worker's RSS is sampled. Then:
- every slice is counted once: the run holds files 0..N-1, each once, and N x 2 slices;
- RSS stays under 1 GiB throughout, and flat: the files go in two halves, and after each half,
  once the run holds it, the workers idle a few seconds and their settled RSS is taken (the
  median of the samples in the last 2 s). The second half may add at most what RocksDB may still
  fill (the memtable and block-cache caps, 8 MiB each here) plus 12 MiB of slack (Python objects,
  client state, allocator granularity: tests/test_memory.py's reasoning). Settled, because while
  files flow a worker's RSS also holds its backlog (fetched records, stream buffers, table
  writes), which swings by ±50 MiB with how far behind it is: that is not growth. (The bench's
  own criterion, < 5 % over the second half of a week, is for bench/campaign.py.)
- recovery: the run-table owner (holder of the spectra partition, from /quax/health/) is killed
  -9, its store deleted and restarted; its views answer with the whole run again (from the
  changelog or the worker that took the tables over), and 20 more files join the run, each slice once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import campaign_phases as phases  # noqa: E402
from campaign_feed import run_feed  # noqa: E402
from campaign_watch import MIB, Watch, rss_check  # noqa: E402

from quax_faust.tools.launch import wait_for_run  # noqa: E402

pytestmark = [pytest.mark.broker, pytest.mark.slow]

N_FILES, EXTRA_FILES, SLICES_PER_FILE = 1500, 20, 2
CAP_BYTES = 8 * MIB
SLACK_MIB = 12


def settled_rss(watch: Watch, idle_s: float = 5.0, last_s: float = 2.0) -> dict[int, float]:
    """Per worker, MiB: the median RSS over the last last_s of idle_s seconds with no files coming
    (heap trims every second here, so the idle heap is trimmed)."""
    start = time.time()
    time.sleep(idle_s)
    rows = [s["rss_mib"] for s in watch.samples if s["t"] >= start + idle_s - last_s]
    assert rows, "no RSS sample while idle"
    return {k: float(np.nanmedian([r.get(k) or np.nan for r in rows])) for k in rows[-1]}


def test_a_campaign_of_tiny_files_counts_every_slice_once_in_flat_memory(make_stack, broker, tmp_path):
    settings, workers = make_stack(workers=2, slices_per_message=SLICES_PER_FILE, heap_trim_interval_s=1.0,
                                   table_memtable_budget_bytes=CAP_BYTES, table_block_cache_budget_bytes=CAP_BYTES)
    watch = Watch({k: settings.worker_url(k) for k in workers.procs},
                  lambda: {k: p.pid for k, p in workers.procs.items()},
                  {k: Path(settings.var_dir) / "workers" / str(k) for k in workers.procs},
                  broker.data_dir / "log", interval_s=0.5, disk_every=10**9)
    watch.start()
    try:
        half = N_FILES // 2
        feeds = [run_feed(settings, tmp_path / "daq", "camp", 0, half, SLICES_PER_FILE, chunk=500,
                          report=lambda doc: None)]
        wait_for_run(settings, "camp", half, timeout_s=300)
        mid = settled_rss(watch)
        feeds.append(run_feed(settings, tmp_path / "daq", "camp", half, N_FILES - half, SLICES_PER_FILE,
                              chunk=500, report=lambda doc: None))
        wait_for_run(settings, "camp", N_FILES, timeout_s=300)
        end = settled_rss(watch)
    finally:
        watch.stop()
    assert sum(feed["files_sent"] for feed in feeds) == N_FILES
    counted = phases.check_run(settings, "camp", N_FILES, SLICES_PER_FILE)
    assert counted["ok"], counted

    rss = rss_check(watch.samples)
    print("producer:", feeds, "RSS while files flow:", rss, "settled after each half:", mid, end)
    bound_mib = 2 * CAP_BYTES / MIB + SLACK_MIB
    for k, w in rss["workers"].items():
        assert w["peak_mib"] < 1024, f"worker {k}: RSS peaked at {w['peak_mib']:.0f} MiB"
        assert end[k] - mid[k] <= bound_mib, (
            f"worker {k}: settled RSS grew {end[k] - mid[k]:.1f} MiB over the second half "
            f"({mid[k]:.1f} -> {end[k]:.1f}; bound {bound_mib:.0f} MiB: caps + slack); while flowing: {rss}")

    recovered = phases.recover_owner(workers, "camp", N_FILES, lose_store=True, timeout_s=180)
    print("recovery:", recovered)
    run_feed(settings, tmp_path / "daq", "camp", N_FILES, EXTRA_FILES, SLICES_PER_FILE, report=lambda doc: None)
    wait_for_run(settings, "camp", N_FILES + EXTRA_FILES, timeout_s=120)
    counted = phases.check_run(settings, "camp", N_FILES + EXTRA_FILES, SLICES_PER_FILE)
    assert counted["ok"], counted
