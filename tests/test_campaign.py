"""The week in an hour, scaled down: 1,500 tiny files through 2 workers (bench/campaign.py's checks).

Files of 2 slices with distinct noise each (bench/campaign_feed.py) flow through the real producer
and two workers with the candidate search on, while every worker's RSS is sampled. Then:
- every slice is counted once: the run holds files 0..N-1, each once, and N x 2 slices;
- RSS stays under 1 GiB and flat after warm-up: the median over the last tenth of the samples
  exceeds the median around the half-way point by at most what RocksDB may still fill (the
  memtable and block-cache caps, 8 MiB each here) plus 12 MiB of slack (Python objects, client
  state, allocator granularity: tests/test_memory.py's reasoning). Medians, because RSS swings
  with heap trims and compactions. (The bench's own criterion, < 5 % over the second half of a
  week, is for bench/campaign.py.)
- recovery: the run-table owner (holder of the spectra partition, from /quax/health/) is killed
  -9, its store deleted and restarted; its views answer with the whole run again (from the
  changelog or the worker that took the tables over), and 20 more files join the run, each slice once.
"""

from __future__ import annotations

import sys
from pathlib import Path

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


def test_a_campaign_of_tiny_files_counts_every_slice_once_in_flat_memory(make_stack, broker, tmp_path):
    settings, workers = make_stack(workers=2, slices_per_message=SLICES_PER_FILE, heap_trim_interval_s=1.0,
                                   table_memtable_budget_bytes=CAP_BYTES, table_block_cache_budget_bytes=CAP_BYTES)
    watch = Watch({k: settings.worker_url(k) for k in workers.procs},
                  lambda: {k: p.pid for k, p in workers.procs.items()},
                  {k: Path(settings.var_dir) / "workers" / str(k) for k in workers.procs},
                  broker.data_dir / "log", interval_s=0.5, disk_every=10**9)
    watch.start()
    try:
        feed = run_feed(settings, tmp_path / "daq", "camp", 0, N_FILES, SLICES_PER_FILE, chunk=500,
                        report=lambda doc: None)
        wait_for_run(settings, "camp", N_FILES, timeout_s=300)
    finally:
        watch.stop()
    assert feed["files_sent"] == N_FILES
    counted = phases.check_run(settings, "camp", N_FILES, SLICES_PER_FILE)
    assert counted["ok"], counted

    rss = rss_check(watch.samples)
    print("producer:", feed, "RSS:", rss)
    bound_mib = 2 * CAP_BYTES / MIB + SLACK_MIB
    for k, w in rss["workers"].items():
        assert w["peak_mib"] < 1024, f"worker {k}: RSS peaked at {w['peak_mib']:.0f} MiB"
        assert w["end_mib"] - w["mid_mib"] <= bound_mib, (
            f"worker {k}: RSS grew {w['end_mib'] - w['mid_mib']:.1f} MiB over the second half "
            f"(bound {bound_mib:.0f} MiB: caps + slack); {rss}")

    recovered = phases.recover_owner(workers, "camp", N_FILES, lose_store=True, timeout_s=180)
    print("recovery:", recovered)
    run_feed(settings, tmp_path / "daq", "camp", N_FILES, EXTRA_FILES, SLICES_PER_FILE, report=lambda doc: None)
    wait_for_run(settings, "camp", N_FILES + EXTRA_FILES, timeout_s=120)
    counted = phases.check_run(settings, "camp", N_FILES + EXTRA_FILES, SLICES_PER_FILE)
    assert counted["ok"], counted
