"""A worker's memory is bounded by construction (docs/reliability.md, "Memory").

What could grow with a run's length is capped: the tables' RocksDB memtables and block cache by
one budget per worker (quax_faust/stream/table_store.py), the heap's free pages by a periodic trim
(malloc.release_free_memory). The check cannot pass or fail by luck: RSS is read while the workers
are idle, as the minimum of several samples spread over more than one trim period, after each of
many rounds; after warm-up it must not grow by more than what the caps still allowed (about 22 MiB here,
while the tables take in 22.5 MiB more of file spectra), and its trend must stay below that bound
spread over the rounds. With the heap trim off the same test fails (+36.5 MiB).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quax_faust.core import daq, synth
from quax_faust.tools.launch import wait_for_run
from quax_faust.ingest.producer import produce_directory

pytestmark = [pytest.mark.broker, pytest.mark.slow]

MIB = 2**20
ROUNDS, FILES_PER_ROUND, WARMUP_ROUNDS = 12, 60, 4
SLICES_PER_FILE = 8
SLACK_BYTES = 12 * MIB  # Python objects, Kafka client state, allocator granularity
TRIM_INTERVAL_S = 1.0


def idle_rss_bytes(pid: int, trim_interval_s: float) -> int:
    """RSS of an idle process: the minimum of samples spread over 2.5 trim periods (each sample
    may fall just before a trim; at least two do not)."""
    proc = psutil.Process(pid)
    samples = []
    end = time.monotonic() + 2.5 * trim_interval_s
    while time.monotonic() < end:
        samples.append(proc.memory_info().rss)
        time.sleep(trim_interval_s / 8)
    return min(samples)


def table_memory(url: str) -> dict[tuple[str, str], float]:
    """{(kind, measure): bytes} of quax_table_memory_bytes from a worker's /metrics."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.labels["kind"], s.labels["measure"]): s.value
            for family in text_string_to_metric_families(text)
            if family.name == "quax_table_memory_bytes" for s in family.samples}


def test_worker_memory_is_bounded_by_its_caps(make_stack, tmp_path):
    memtable_cap, cache_cap = 8 * MIB, 8 * MIB
    settings, workers = make_stack(workers=2, slices_per_message=SLICES_PER_FILE,
                                   heap_trim_interval_s=TRIM_INTERVAL_S,
                                   table_memtable_budget_bytes=memtable_cap,
                                   table_block_cache_budget_bytes=cache_cap)
    n_files = ROUNDS * FILES_PER_ROUND
    daq_dir = tmp_path / "small"
    x = synth.synth_file(0, settings.slice_len * SLICES_PER_FILE, synth.SynthModel())
    for k in range(n_files):
        daq.write_pair(daq_dir, k, x)  # content does not matter here, only the count
    start_rss = {k: idle_rss_bytes(p.pid, TRIM_INTERVAL_S) for k, p in workers.procs.items()}

    rss = {k: [] for k in workers.procs}  # idle RSS after each round, bytes
    used_at_warmup = {}
    for r in range(ROUNDS):
        stop = (r + 1) * FILES_PER_ROUND
        asyncio.run(produce_directory(settings, daq_dir, "soak", "max", indices=range(stop - FILES_PER_ROUND, stop),
                                      progress=False, checkpoint=False))
        wait_for_run(settings, "soak", stop, timeout_s=300)
        for k, p in workers.procs.items():
            rss[k].append(idle_rss_bytes(p.pid, TRIM_INTERVAL_S))
        if r == WARMUP_ROUNDS - 1:
            used_at_warmup = {k: table_memory(settings.worker_url(k) + "/metrics") for k in workers.procs}
    summary = wait_for_run(settings, "soak", n_files)
    assert summary["n_slices"] == n_files * SLICES_PER_FILE
    final_tables = {k: table_memory(settings.worker_url(k) + "/metrics") for k in workers.procs}
    print("idle RSS (MiB) at start and after each round of", FILES_PER_ROUND, "files:",
          {k: [round(start_rss[k] / MIB)] + [round(v / MIB) for v in series] for k, series in rss.items()})
    print("table memory (bytes) at the end:", final_tables)

    files = np.arange(1, ROUNDS + 1) * FILES_PER_ROUND
    for k, series in rss.items():
        series = np.asarray(series, dtype=float)
        tables_end, tables_warm = final_tables[k], used_at_warmup[k]
        # The caps are what RocksDB may hold; the metrics show them honoured (soft caps: RocksDB
        # may pass them by one memtable block or cache entry, hence one MiB of room).
        assert tables_end[("memtables", "cap")] == memtable_cap
        assert tables_end[("block_cache", "cap")] == cache_cap
        assert tables_end[("memtables", "used")] <= memtable_cap + MIB, tables_end
        assert tables_end[("block_cache", "used")] <= cache_cap + MIB, tables_end
        # After warm-up, RSS may grow by what the caps still allowed then, plus a fixed slack; the
        # tables meanwhile received (ROUNDS - WARMUP_ROUNDS) * FILES_PER_ROUND more files' spectra.
        headroom = (memtable_cap - tables_warm.get(("memtables", "used"), 0.0)) + \
                   (cache_cap - tables_warm.get(("block_cache", "used"), 0.0))
        growth = series[WARMUP_ROUNDS:].max() - series[WARMUP_ROUNDS - 1]
        allowed = headroom + SLACK_BYTES
        seen = f"idle RSS (MiB) after each round: {np.round(series / MIB, 1).tolist()}"
        assert growth <= allowed, (
            f"worker {k}: idle RSS grew {growth / MIB:.1f} MiB after warm-up; the caps allowed "
            f"{headroom / MIB:.1f} MiB more, slack {SLACK_BYTES / MIB:.0f} MiB; {seen}")
        # The trend, robust to one odd sample (Theil-Sen: the median of the pairwise slopes), must
        # stay below what the caps allow spread over the files after warm-up: whatever grows with
        # the run would pass it over a longer run.
        x, y = files[WARMUP_ROUNDS:], series[WARMUP_ROUNDS:]
        slope = float(np.median([(y[j] - y[i]) / (x[j] - x[i])
                                 for i in range(len(x)) for j in range(i + 1, len(x))]))
        assert slope < allowed / (x[-1] - files[WARMUP_ROUNDS - 1]), (
            f"worker {k}: idle RSS grows {slope / 1024:.1f} KiB per file after warm-up; {seen}")
        # Absolute: the process after its first files (every code path loaded, every table open)
        # plus its caps plus the slack, whatever the run's length.
        assert series.max() <= series[0] + memtable_cap + cache_cap + SLACK_BYTES, (
            f"worker {k}: idle RSS {series.max() / MIB:.0f} MiB; {series[0] / MIB:.0f} MiB after "
            f"the first {FILES_PER_ROUND} files, caps {(memtable_cap + cache_cap) / MIB:.0f} MiB; {seen}")
