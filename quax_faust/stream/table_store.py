"""The tables' RocksDB store, with one memory budget per worker process.

Faust's own ``rocksdb://`` store gives every partition database its own block cache and its own
memtables, so a worker's RocksDB memory grows with the number of tables and partitions it opens
(seven databases: 4 × 32 MiB worst case for ``files`` alone with our old options), and the index and
filter blocks of its SST files sit outside any cache, growing with the data kept (a week-long run
writes ~7 GB to ``file_spectra``). This store is Faust's, with every database of the process
sharing two caps:

- one ``WriteBufferManager``: all memtables of all tables together stay under
  ``memtable_budget_bytes``. RocksDB flushes the memtable of the database being written as they
  near it; and before any write, a store whose process has reached the budget flushes the
  memtables of every database of the process (``MemoryBudget.make_room``), so the cap holds up to
  one write batch. RocksDB's own hard cap (``allow_stall``) is off: a stalled write waits for
  flushes of the database it writes to, while the memory may be held by others that are not
  written any more (a table recovery writes one partition database after another), and then
  it waits forever (seen here: a worker joining during a backlog hung in its recovery, its event
  loop blocked in a database write for minutes; facebook/rocksdb#11780);
- one LRU block cache of ``block_cache_budget_bytes`` that also holds the index and filter blocks.

So RocksDB's memory is bounded by construction, whatever the run length or the partitions a worker
owns (docs/reliability.md, "Memory"). Faust finds the store by the URL scheme ``quax-rocksdb://``
through the ``faust.stores`` entry point declared in pyproject.toml.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import rocksdict
from faust.stores import rocksdb as faust_rocksdb

URL_SCHEME = "quax-rocksdb"


@dataclass(frozen=True)
class MemoryBudget:
    """The RocksDB objects shared by every table database of one process, and their caps (bytes)."""

    memtable_budget_bytes: int
    block_cache_budget_bytes: int
    write_buffers: Any  # rocksdict.WriteBufferManager
    block_cache: Any  # rocksdict.Cache
    stores: weakref.WeakSet = field(default_factory=weakref.WeakSet, compare=False)
    """The table stores drawing on this budget (their open databases are flushed by make_room)."""
    flushes: list[int] = field(default_factory=lambda: [0], compare=False)
    """[databases flushed by make_room so far] (a one-item list: the dataclass is frozen)."""

    def usage(self) -> dict[str, int]:
        """Bytes in use now: {"memtables": ..., "block_cache": ...}."""
        return {"memtables": int(self.write_buffers.get_usage()),
                "block_cache": int(self.block_cache.get_usage())}

    def make_room(self, databases: Iterable[Any]) -> int:
        """If the memtables of the process have reached ``memtable_budget_bytes``, flush those of
        ``databases`` (rocksdict.Rdict; every open one of the process) and wait for the flushes.
        Returns how many databases were flushed (0: there was room)."""
        if self.write_buffers.get_usage() < self.memtable_budget_bytes:
            return 0
        flushed = 0
        for db in list(databases):
            db.flush(wait=True)
            flushed += 1
        self.flushes[0] += flushed
        return flushed

    def open_databases(self) -> Iterator[Any]:
        """Every database the stores of this budget hold open now (lazily: make_room looks only
        when the budget is full)."""
        for store in list(self.stores):
            yield from list(store._dbs.values())


@lru_cache(maxsize=None)
def memory_budget(memtable_budget_bytes: int, block_cache_budget_bytes: int) -> MemoryBudget:
    """The process's shared budget for these caps (made on first use, then reused by every table)."""
    if memtable_budget_bytes <= 0 or block_cache_budget_bytes <= 0:
        raise ValueError(f"RocksDB budgets must be positive: memtables {memtable_budget_bytes} B, "
                         f"block cache {block_cache_budget_bytes} B")
    budget = MemoryBudget(memtable_budget_bytes, block_cache_budget_bytes,
                          rocksdict.WriteBufferManager(memtable_budget_bytes, False),  # no stall: make_room
                          rocksdict.Cache(block_cache_budget_bytes))
    _made.append(budget)
    return budget


_made: list[MemoryBudget] = []


def budgets_in_use() -> list[MemoryBudget]:
    """Every budget this process has made (one in a worker), for the memory metrics."""
    return list(_made)


class BudgetedRocksDBOptions(faust_rocksdb.RocksDBOptions):
    """Faust's RocksDB options, with the memtables and block cache of the shared budget."""

    def __init__(self, budget: MemoryBudget, **options: Any):
        super().__init__(**options)
        self.budget = budget

    def as_options(self) -> rocksdict.Options:
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        if self.max_open_files is not None:
            opts.set_max_open_files(self.max_open_files)
        opts.set_write_buffer_size(self.write_buffer_size)
        opts.set_max_write_buffer_number(self.max_write_buffer_number)
        opts.set_target_file_size_base(self.target_file_size_base)
        opts.set_write_buffer_manager(self.budget.write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(self.budget.block_cache)
        # Index and filter blocks are charged to the cache instead of growing with the data kept.
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        opts.set_block_based_table_factory(table)
        return opts

    def open(self, path: Path, *, read_only: bool = False) -> rocksdict.Rdict:
        db = rocksdict.Rdict(str(path), options=self.as_options(),
                             access_type=rocksdict.AccessType.read_write())
        db.set_read_options(rocksdict.ReadOptions())
        return db


class Store(faust_rocksdb.Store):
    """Faust's RocksDB table store whose databases share the process's memory budget.

    Table options (``app.Table(..., options=...)``): ``memtable_budget_bytes`` and
    ``block_cache_budget_bytes`` (the process-wide caps), plus Faust's own RocksDB options
    (``write_buffer_size``, ``max_write_buffer_number``, ``target_file_size_base``...).
    """

    def __init__(self, url, app, table, *, options: Mapping[str, Any] | None = None, **kwargs: Any):
        own = dict(options or {})  # a copy: Faust pops keys from the dict it is given
        try:
            caps = (int(own.pop("memtable_budget_bytes")), int(own.pop("block_cache_budget_bytes")))
        except KeyError as exc:
            raise ValueError(f"table {getattr(table, 'name', table)!r}: the {URL_SCHEME} store needs "
                             f"{exc.args[0]} in the table's options") from None
        own.setdefault("driver", "rocksdict")
        super().__init__(url, app, table, options=own, **kwargs)
        self.rocksdb_options = BudgetedRocksDBOptions(memory_budget(*caps), **self.options)
        self.rocksdb_options.budget.stores.add(self)

    def _db_for_partition(self, partition: int) -> Any:
        """The partition's database (Faust calls this before each write), after making room in the
        process's memtable budget if it is full."""
        budget = self.rocksdb_options.budget
        budget.make_room(budget.open_databases())
        return super()._db_for_partition(partition)
