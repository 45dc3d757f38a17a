"""A worker's periodic work: the FFTW plan at start, heap trim and memory gauges, re-reading
skipped offsets, and the consumer lag (docs/metrics.md, docs/reliability.md)."""

from __future__ import annotations

import asyncio

from aiokafka.errors import IllegalStateError

from quax_faust.core import dsp
from quax_faust.stream import faust_fixes, malloc, metrics, table_store
from quax_faust.stream.chain import Chain


async def plan_fft(chain: Chain) -> None:
    """FFTW's plan is made when the worker starts, not inside the first file's latency."""
    s = chain.settings
    dsp.plan_fft(s.slice_len, s.fft_block_rows, s.fft_threads)


async def bound_memory(chain: Chain) -> None:
    """Free heap pages go back to the kernel (malloc.py); the heap and tables' memory is exported.
    A worker has one table memory budget (table_store.py)."""
    if chain.settings.heap_trim_interval_s > 0:
        malloc.release_free_memory()
    tables = {}
    for budget in table_store.budgets_in_use():
        usage = budget.usage()
        tables["memtables"] = (usage["memtables"], budget.memtable_budget_bytes)
        tables["block_cache"] = (usage["block_cache"], budget.block_cache_budget_bytes)
    metrics.set_memory(malloc.heap_bytes(), tables)


async def reread_skipped_offsets(chain: Chain) -> None:
    """Offsets the consumer skipped are read again after 5 s, a stalled partition after 20 s
    (faust_fixes.py)."""
    await faust_fixes.reread_holes(chain.app, older_than_s=5.0, stalled_s=20.0)


async def export_consumer_lag(chain: Chain) -> None:
    """For the partitions of the agents' source topics assigned to this worker, how many messages
    wait behind what it has processed (metrics.CONSUMER_LAG)."""
    app = chain.app
    sources = {chain.settings.slices_topic, chain.settings.spectra_topic}
    lags = {}
    for tp in app.consumer.assignment():
        if tp.topic not in sources:
            continue
        try:
            highwater = app.consumer.highwater(tp)  # from the last fetch response; None before one
            next_offset = faust_fixes.offsets.committable(tp)  # the first offset not processed here
            if highwater is not None and next_offset is None:  # not counted here (start unknown)
                next_offset = await asyncio.wait_for(app.consumer.position(tp), 1.0)
        except (AssertionError, IllegalStateError, asyncio.TimeoutError):  # a rebalance is under way
            continue
        if highwater is not None and next_offset is not None:
            lags[(tp.topic, tp.partition)] = highwater - next_offset
    metrics.set_consumer_lag(lags)
