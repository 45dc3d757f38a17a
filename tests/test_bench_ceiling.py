"""`quax bench`'s ceiling of the box (tools/bench_ceiling.py, bench_passthrough.py): the sizes it
counts, its report rows, its CPU windows, and one small round of each on the real broker."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from quax_faust.connection import partition_counts
from quax_faust.core import daq
from quax_faust.settings import Settings
from quax_faust.ingest.sender import file_messages
from quax_faust.tools import bench_ceiling, bench_passthrough
from quax_faust.tools.bench_phases import wire_bytes
from quax_faust.tools.bench_report import ceiling_rows, passthrough_rows
from quax_faust.tools.bench_stack import CpuWindow
from tests.conftest import stack_settings, wait_until


@pytest.mark.parametrize("changes", [{}, {"slices_per_message": 4, "slice_len": 1024}])
def test_the_ceiling_counts_the_bytes_the_chain_sends(changes):
    settings = Settings().replace(**changes)
    channel = np.zeros(2730 * settings.slice_len + 2048, np.float32)  # a real file's whole slices and tail
    sent = [message.nbytes for message, _ in file_messages("bench-max", 7, channel, channel, settings)]
    assert bench_ceiling.message_bytes(settings) == max(sent)  # a full message
    n_slices = daq.SliceLayout(channel.shape[0], settings.slice_len).n_slices
    assert wire_bytes(np.array([n_slices, n_slices]), settings) == 2 * sum(sent)


def test_the_report_quotes_the_chain_as_a_fraction_of_the_ceiling():
    result = {"ceiling": {"produce": {"mb_per_s": 180.0}, "consume": {"mb_per_s": 240.0}, "ceiling_mb_per_s": 180.0},
              "throughput": {"wire_mb_per_s_steady": 150.0, "fraction_of_ceiling": 150.0 / 180.0,
                             "realtime_factor_steady": 9.0, "cpu_cores": {"producer": 0.18}}}
    rows = {what.strip(): measured for what, measured, _, _ in ceiling_rows(result)}
    assert rows["box ceiling: produce-only (librdkafka) / consume-only (aiokafka)"] == "180 / 240 MB/s"
    assert rows["chain MB/s on the wire / ceiling"] == "150 MB/s = 0.83 of 180"
    assert rows["producer CPU per second of data (max pace)"] == "20.0 core-ms"
    assert ceiling_rows({"throughput": {}}) == []  # results from before the ceiling


@pytest.mark.broker
def test_a_small_ceiling_round_on_the_real_broker(broker, tmp_path):
    settings = stack_settings(broker, tmp_path / "var", slices_per_message=16)
    result = bench_ceiling.ceiling_phase(settings, total_mb=12.0)
    size = bench_ceiling.message_bytes(settings)
    assert result["message_bytes"] == size and result["messages"] == round(12e6 / size)
    n, warmup = result["messages"], result["warmup_messages"]
    assert warmup == n // 10 >= 1, "the first 10 % untimed, on both sides"
    assert result["consume"]["keys"] == [warmup, warmup + n - 1, n], "read: exactly the timed messages"
    assert result["produce"]["mb"] == result["consume"]["mb"] == round(result["messages"] * size / 1e6, 1)
    for side in ("produce", "consume"):
        assert result[side]["mb_per_s"] > 0 and result[side]["wall_s"] > 0
    assert result["ceiling_mb_per_s"] == min(result["produce"]["mb_per_s"], result["consume"]["mb_per_s"])
    wait_until(lambda: bench_ceiling.TOPIC not in asyncio.run(partition_counts(settings, [bench_ceiling.TOPIC])),
               30, "its topic deleted afterwards", interval_s=0.5)


def test_the_pass_through_splits_messages_over_partitions_as_the_producer_sends_them():
    # message k goes to partition k % parts: each reader knows how many are its own
    for total, parts in [(63, 4), (64, 4), (3, 4), (10, 1)]:
        counts = [bench_passthrough._count(total, parts, p) for p in range(parts)]
        assert counts == [sum(1 for k in range(total) if k % parts == p) for p in range(parts)]


def test_the_report_quotes_the_chain_as_a_fraction_of_the_pass_through():
    result = {"passthrough": {"mb_per_s": 300.0, "box_busy_cores": 1.6},
              "throughput": {"fraction_of_passthrough": 225.0 / 300.0}}
    rows = {what.strip(): measured for what, measured, _, _ in passthrough_rows(result)}
    assert rows["pass-through: librdkafka in, aiokafka out, at once"] == "300 MB/s, box busy 1.60 cores"
    assert rows["chain MB/s on the wire / pass-through"] == "0.75"
    assert passthrough_rows({"throughput": {}}) == []  # results from before it


class _Proc:
    def __init__(self, pid: int):
        self.pid = pid


class _Stack:
    """A stand-in for bench_stack.Stack: named processes and their CPU seconds (pure logic)."""

    def __init__(self):
        self.processes, self.seconds = {"broker": _Proc(1), "producer": _Proc(2)}, {"broker": 10.0, "producer": 16.0}

    def cpu_seconds(self):
        return dict(self.seconds)


def test_a_process_started_during_a_cpu_window_counts_from_zero():
    stack = _Stack()
    window = CpuWindow(stack)
    stack.processes["producer"], stack.seconds = _Proc(3), {"broker": 10.5, "producer": 0.4}
    window.t0 -= 1.0  # one second of window (and a little more, for the time this took)
    cores = window.cores()
    assert 0.45 < cores["broker"] <= 0.5
    assert 0.35 < cores["producer"] <= 0.4, "the new producer's own 0.4 s, not 0.4 - 16"


@pytest.mark.broker
def test_a_small_pass_through_round_on_the_real_broker(broker, tmp_path):
    settings = stack_settings(broker, tmp_path / "var", slices_per_message=16)
    result = bench_passthrough.passthrough_phase(settings, total_mb=12.0)
    size = bench_ceiling.message_bytes(settings)
    n, warmup = result["messages"], result["warmup_messages"]
    assert n == round(12e6 / size) and warmup == max(settings.partitions, n // 10)
    assert result["keys"] == [warmup, warmup + n - 1, n], "read: exactly the timed messages, each once"
    assert result["mb"] == round(n * size / 1e6, 1)
    assert result["mb_per_s"] > 0 and result["wall_s"] > 0 and result["consumer_cores"] > 0
    wait_until(lambda: bench_passthrough.TOPIC not in asyncio.run(partition_counts(settings, [bench_passthrough.TOPIC])),
               30, "its topic deleted afterwards", interval_s=0.5)
