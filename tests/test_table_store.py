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
        budget.make_room(dbs)  # as the store does before each write (Store._db_for_partition)
        dbs[k % 3][f"run/{k:010d}".encode()] = value
    used = budget.usage()
    in_memtables = sum(db.property_int_value("rocksdb.cur-size-all-mem-tables") for db in dbs)
    # Three databases' memtables are charged to the one budget (200 x 49 KB = 9.4 MB were written),
    # which flushed them when they reached it (RocksDB alone let them reach 12 MB).
    assert 0 < used["memtables"] <= budget.memtable_budget_bytes + (1 << 20), used
    assert in_memtables <= budget.memtable_budget_bytes + (1 << 20), in_memtables
    assert dbs[0][b"run/0000000000"] == value
    assert budget.flushes[0] > 0
    for db in dbs:
        db.close()


RECOVERY_PATTERN = """
import json, sys
import rocksdict
from quax_faust.stream import table_store
budget = table_store.memory_budget(4 << 20, 2 << 20)
options = table_store.BudgetedRocksDBOptions(budget, write_buffer_size=64 << 20, max_write_buffer_number=2)
dbs = [options.open(f"{sys.argv[1]}/db{k}") for k in range(4)]
value = bytes(48 << 10)
seen = []
for k, db in enumerate(dbs * 2):  # one 2.2 MB batch per database, one database after the other
    if sys.argv[2] == "make_room":
        budget.make_room(dbs)
    batch = rocksdict.WriteBatch(raw_mode=True)
    for j in range(45):
        batch.put(f"{k}/{j}".encode(), value)
    db.write(batch)
    seen.append(budget.usage()["memtables"])
print(json.dumps({"memtables": seen, "flushed": budget.flushes[0]}))
"""


@pytest.mark.parametrize("make_room", ["make_room", "rocksdb_alone"])
def test_writes_to_one_database_after_another_never_wait_forever(tmp_path, make_room):
    """Table recovery writes a large batch to each partition database in turn: the memory of the
    budget is then held by databases that are not written any more. With RocksDB's own stall a
    write to the next database waited forever for flushes that never came (a worker hung in its
    recovery); now such writes go through, and make_room (what the store calls before each
    write) flushes every database once the budget is full, so the cap holds up to one batch."""
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", RECOVERY_PATTERN, str(tmp_path), make_room],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert len(result["memtables"]) == 8
    if make_room == "make_room":
        batch_bytes = 45 * (48 << 10)
        assert result["flushed"] > 0
        assert max(result["memtables"]) <= (4 << 20) + batch_bytes + (1 << 20), result


def test_non_positive_caps_are_refused():
    with pytest.raises(ValueError, match="must be positive"):
        table_store.memory_budget(0, 1 << 20)


def test_the_heap_counts_and_trim_are_glibc_s():
    heap = malloc.heap_bytes()
    assert heap is not None and heap["in_use"] > 0 and heap["free"] >= 0
    assert malloc.release_free_memory() is True
    assert isinstance(rocksdict.Cache(1 << 20).get_usage(), int)
