"""The tables' RocksDB store: one memory budget per process, shared by every table database."""

from __future__ import annotations

import numpy as np
import pytest
import rocksdict

from quax_faust.stream import malloc, table_store


def test_one_budget_per_caps_shared_by_every_database(tmp_path):
    budget = table_store.memory_budget(4 << 20, 2 << 20)
    assert table_store.memory_budget(4 << 20, 2 << 20) is budget
    assert budget in table_store.budgets_in_use()
    # Each database alone would keep 64 MiB of memtables: only the shared budget flushes them.
    options = table_store.BudgetedRocksDBOptions(budget, write_buffer_size=64 << 20, max_write_buffer_number=2)
    dbs = [options.open(tmp_path / f"db{k}") for k in range(3)]
    value = np.arange(6144, dtype="<f8").tobytes()  # one file's spectrum, 49 KB
    for k in range(200):
        dbs[k % 3][f"run/{k:010d}".encode()] = value
    used = budget.usage()
    in_memtables = sum(db.property_int_value("rocksdb.cur-size-all-mem-tables") for db in dbs)
    # Three databases' memtables are charged to the one budget (200 x 49 KB = 9.4 MB were written),
    # which flushed them when they reached it.
    assert 0 < used["memtables"] <= budget.memtable_budget_bytes + (1 << 20), used
    assert in_memtables <= budget.memtable_budget_bytes + (1 << 20), in_memtables
    assert dbs[0][b"run/0000000000"] == value
    for db in dbs:
        db.close()


def test_non_positive_caps_are_refused():
    with pytest.raises(ValueError, match="must be positive"):
        table_store.memory_budget(0, 1 << 20)


def test_the_heap_counts_and_trim_are_glibc_s():
    heap = malloc.heap_bytes()
    assert heap is not None and heap["in_use"] > 0 and heap["free"] >= 0
    assert malloc.release_free_memory() is True
    assert isinstance(rocksdict.Cache(1 << 20).get_usage(), int)
