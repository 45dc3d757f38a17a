"""The producer on a real broker: follow a live DAQ directory, resume from a checkpoint, quarantine."""

import asyncio
import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest

from quax_faust.core import daq, synth, wire

from quax_faust.stream import metrics
from quax_faust.ingest.feed import DirectoryFeed
from quax_faust.ingest.producer import produce_directory
from tests.conftest import stack_settings
from tests.kafka_io import read_topic

pytestmark = pytest.mark.broker
N = 3072 * 6 + 100  # 6 whole slices and a 100-sample tail


def sent_slices(settings) -> Counter:
    """(file_index, slice) -> times sent, read back from the slices topic."""
    counts = Counter()
    for record in read_topic(settings.broker, settings.slices_topic):
        b = wire.decode_slice_batch(record.value)
        for k in range(b.first_slice, b.first_slice + b.slice_count):
            counts[(b.file_index, k)] += 1
    return counts


def write_files(directory, indices):
    model = synth.SynthModel()
    for k in indices:
        daq.write_pair(directory, k, synth.synth_file(k, N, model))


def test_checkpoint_resumes_with_the_next_file(broker, tmp_path):
    settings = stack_settings(broker, tmp_path / "var", slices_per_message=4)
    write_files(tmp_path / "daq", range(3))
    first = asyncio.run(produce_directory(settings, tmp_path / "daq", "ck", "max", progress=False))
    assert first.files_sent == 3
    write_files(tmp_path / "daq", [3, 4])
    second = asyncio.run(produce_directory(settings, tmp_path / "daq", "ck", "max", progress=False))
    assert (second.files_sent, second.already_sent) == (2, 3)
    counts = sent_slices(settings)
    assert set(counts.values()) == {1}, "no file sent twice"
    assert sorted({f for f, _ in counts}) == [0, 1, 2, 3, 4]
    assert len(counts) == 5 * 6


class FollowingProducer:
    """``produce_directory(follow=True)`` in a thread, stopped by the test once it has seen what it
    waits for (no idle timer to outlast). ``scans`` counts the producer's looks at the directory."""

    def __init__(self, monkeypatch, settings, source, **options):
        self.scans = 0
        self._stop = threading.Event()
        self.error: BaseException | None = None
        looks = DirectoryFeed.ready

        def counted(feed, skip):
            result = looks(feed, skip)
            self.scans += 1
            return result

        monkeypatch.setattr(DirectoryFeed, "ready", counted)

        async def run():
            task = asyncio.ensure_future(produce_directory(settings, source, "fol", follow=True,
                                                           progress=False, **options))
            while not self._stop.is_set() and not task.done():
                await asyncio.sleep(0.05)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

        def main():
            try:
                asyncio.run(run())
            except BaseException as exc:  # shown by stop()
                self.error = exc

        self.thread = threading.Thread(target=main)
        self.thread.start()

    def wait_scans(self, n: int, timeout_s: float = 60.0) -> None:
        """Wait until the producer has looked at the directory n more times (fails after timeout_s)."""
        target = self.scans + n
        deadline = time.monotonic() + timeout_s
        while self.scans < target:
            assert time.monotonic() < deadline and self.thread.is_alive(), f"producer stopped scanning: {self.error!r}"
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        assert self.error is None, repr(self.error)


def poll(what: str, probe, timeout_s: float = 60.0):
    """probe() until it returns something true (returned); fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not (found := probe()):
        assert time.monotonic() < deadline, f"{what}: not seen within {timeout_s} s"
        time.sleep(0.2)
    return found


def test_follow_sends_each_pair_once_it_is_complete(broker, tmp_path, monkeypatch, caplog):
    settings = stack_settings(broker, tmp_path / "var", slices_per_message=4)
    live = tmp_path / "live"
    live.mkdir()
    caplog.set_level(logging.INFO, logger="quax_faust")
    settle_s = 5.0
    following = FollowingProducer(monkeypatch, settings, live, settle_s=settle_s, partner_timeout_s=3.0)
    following.wait_scans(1)  # connected and looking
    x = synth.synth_file(0, N, synth.SynthModel())
    pair = daq.pair_paths(live, 0)
    # The DAQ is half-way through both files; the producer looks at them twice, sees them grow, and
    # must send only the finished file. Premise: the pause is shorter than settle_s (measured).
    x.real[: N // 2].astype("<f4").tofile(pair.i_path)
    x.imag[: N // 2].astype("<f4").tofile(pair.q_path)
    paused_at = time.monotonic()
    following.wait_scans(2)
    with open(pair.i_path, "ab") as f:
        f.write(x.real[N // 2:].astype("<f4").tobytes())
    with open(pair.q_path, "ab") as f:
        f.write(x.imag[N // 2:].astype("<f4").tobytes())
    pause_s = time.monotonic() - paused_at
    assert pause_s < settle_s, f"the test's premise broke: the writer paused {pause_s:.1f} s >= settle_s"
    write_files(live, [1])
    (live / "duck_i_00002.dat").write_bytes(np.zeros(N, "<f4").tobytes())  # its partner never comes
    bad = daq.write_pair(live, 3, synth.synth_file(3, N, synth.SynthModel()))
    with open(bad.q_path, "ab") as f:
        f.write(b"\0\0")  # odd size
    quarantine = live / "quarantine"
    expected_quarantine = ["duck_i_00002.dat", "duck_i_00002.reason.txt", "duck_i_00003.dat",
                           "duck_i_00003.reason.txt", "duck_q_00003.dat"]
    poll("files 0 and 1 sent", lambda: {f for f, _ in sent_slices(settings)} >= {0, 1})
    poll("2 pairs quarantined", lambda: quarantine.is_dir() and sorted(p.name for p in quarantine.iterdir())
         == expected_quarantine)
    following.wait_scans(10)  # more looks at the same directory send nothing again
    following.stop()

    counts = sent_slices(settings)
    assert set(counts.values()) == {1} and sorted(counts) == [(k, s) for k in (0, 1) for s in range(6)]
    file0 = [wire.decode_slice_batch(r.value) for r in read_topic(settings.broker, settings.slices_topic)]
    file0 = sorted((b for b in file0 if b.file_index == 0), key=lambda b: b.first_slice)
    np.testing.assert_array_equal(np.concatenate([b.samples for b in file0]).ravel(),
                                  x[: 6 * 3072])  # the finished file, not half of it
    assert sorted(p.name for p in quarantine.iterdir()) == expected_quarantine
    assert "not a whole number of float32 samples" in (quarantine / "duck_i_00003.reason.txt").read_text()
    assert "no partner duck_q_00002.dat" in (quarantine / "duck_i_00002.reason.txt").read_text()
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("quarantined")]
    assert len(logged) == 2, logged  # once per bad pair, however often the directory was looked at
    assert any("duck_i_00002.dat" in line and "no partner" in line for line in logged), logged
    assert any("duck_i_00003.dat + duck_q_00003.dat" in line and "float32" in line for line in logged), logged


def test_a_pair_shorter_than_one_slice_is_quarantined_with_its_reason(broker, tmp_path, caplog):
    settings = stack_settings(broker, tmp_path / "var")
    write_files(tmp_path / "daq", [0, 2])
    daq.write_pair(tmp_path / "daq", 1, synth.synth_file(1, 3071, synth.SynthModel()))
    caplog.set_level(logging.INFO, logger="quax_faust")
    too_short = metrics.PRODUCER_SKIPPED.labels(reason="too_short")
    skipped_before = too_short._value.get()
    report = asyncio.run(produce_directory(settings, tmp_path / "daq", "short", "max", progress=False))
    assert too_short._value.get() == skipped_before + 1
    reason = "duck_i_00001.dat: 3071 samples, fewer than one slice of 3072"
    assert (report.files_sent, report.skipped) == (2, [reason])
    assert sorted({f for f, _ in sent_slices(settings)}) == [0, 2]
    quarantine = tmp_path / "daq" / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == [
        "duck_i_00001.dat", "duck_i_00001.reason.txt", "duck_q_00001.dat"]
    assert (quarantine / "duck_i_00001.reason.txt").read_text() == reason + "\n"
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("quarantined")]
    assert len(logged) == 1 and logged[0].endswith(reason)


def test_quax_produce_strict_quarantine_dir_checkpoint_and_no_checkpoint(broker, tmp_path):
    settings = stack_settings(broker, tmp_path / "var", slices_per_message=4)
    source, elsewhere = tmp_path / "daq", tmp_path / "bad-pairs"
    write_files(source, range(2))
    (source / "duck_i_00002.dat").write_bytes(np.zeros(N, "<f4").tobytes())  # no partner
    flags = ["--run", "cli", "--source", str(source), "--pace", "max", "--broker", settings.broker,
             "--slices-topic", settings.slices_topic, "--spectra-topic", settings.spectra_topic,
             "--candidates-topic", settings.candidates_topic, "--var-dir", str(settings.var_dir),
             "--slices-per-message", "4", "--producer-metrics-port", "0"]

    def quax_produce(*more):
        return subprocess.run([sys.executable, "-m", "quax_faust.tools.cli", "produce", *flags, *more],
                              capture_output=True, text=True, timeout=120)

    first = quax_produce("--strict", "--quarantine", str(elsewhere))
    assert first.returncode == 1, first.stderr  # --strict: a pair was skipped
    assert "  skipped: duck_i_00002.dat: no partner duck_q_00002.dat" in first.stdout
    assert sorted(p.name for p in elsewhere.iterdir()) == ["duck_i_00002.dat", "duck_i_00002.reason.txt"]
    assert not (source / "quarantine").exists()
    per_file = re.findall(r"run cli file (\d{5}): 6 slices in 2 messages \(tail 100 dropped\); "
                          r"\d+ files, [\d.]+ s of data in [\d.]+ s = [\d.]+x real time", first.stderr)
    assert per_file == ["00000", "00001"], first.stderr  # one line per file, with its real-time factor
    assert json.loads((settings.var_dir / "producer" / "cli.json").read_text()) == {"sent": [[0, 2]]}

    again = quax_produce("--strict")
    assert again.returncode == 0, again.stderr
    assert "sent 0 files" in again.stdout and "2 sent before (checkpoint)" in again.stdout, again.stdout
    assert set(sent_slices(settings).values()) == {1}

    everything = quax_produce("--no-checkpoint")
    assert everything.returncode == 0, everything.stderr
    counts = sent_slices(settings)
    assert len(counts) == 2 * 6 and set(counts.values()) == {2}, "--no-checkpoint sends every pair again"


def test_pace_holds_each_file_back_until_the_data_would_exist(broker, tmp_path):
    settings = stack_settings(broker, tmp_path / "var")
    write_files(tmp_path / "daq", range(4))
    file_s = N / settings.sample_rate_hz  # 9.3 ms of data per file
    report = asyncio.run(produce_directory(settings, tmp_path / "daq", "paced", 0.02, progress=False))
    # File k is sent no earlier than k file durations / pace after the start: a lower bound, which
    # a loaded machine can only make longer.
    assert report.files_sent == 4
    assert report.wall_seconds >= 3 * file_s / 0.02
    assert report.realtime_factor <= 0.02 * 4 / 3


def test_loop_sends_the_directory_again_with_new_file_numbers(broker, tmp_path):
    settings = stack_settings(broker, tmp_path / "var", slices_per_message=6)
    write_files(tmp_path / "daq", [4, 7])
    report = asyncio.run(produce_directory(settings, tmp_path / "daq", "lap", "max", loop=3, progress=False))
    assert report.files_sent == 6
    batches = [wire.decode_slice_batch(r.value) for r in read_topic(settings.broker, settings.slices_topic)]
    assert sorted(b.file_index for b in batches) == [4, 7, 8, 9, 10, 11]  # laps 2, 3 go on after 7
    by_index = {b.file_index: b.samples for b in batches}
    np.testing.assert_array_equal(by_index[8], by_index[4])  # the same data under its new number
    np.testing.assert_array_equal(by_index[11], by_index[7])
    assert not (settings.var_dir / "producer" / "lap.json").exists()  # no checkpoint when looping


def test_static_run_quarantines_bad_pairs_and_goes_on(broker, tmp_path):
    settings = stack_settings(broker, tmp_path / "var")
    write_files(tmp_path / "daq", range(3))
    x = synth.synth_file(1, N, synth.SynthModel())
    y = x.imag.astype("<f4")
    y[10] = np.inf
    y.tofile(daq.pair_paths(tmp_path / "daq", 1).q_path)
    report = asyncio.run(produce_directory(settings, tmp_path / "daq", "bad", "max", progress=False))
    assert report.files_sent == 2
    assert report.skipped == ["duck_q_00001.dat: 1 non-finite samples, the first at sample 10 (byte 40)"]
    assert (tmp_path / "daq" / "quarantine" / "duck_q_00001.dat").exists()


@pytest.mark.broker
def test_the_producer_puts_a_key_in_the_partition_every_other_client_does(broker, tmp_path):
    """librdkafka's default partitioner (CRC32) differs from Kafka's Java client and aiokafka's
    (murmur2): a file re-sent by another client, or a table entry keyed the same, would land on
    another partition, another worker. The producer must choose as they do."""
    from aiokafka.partitioner import DefaultPartitioner
    from confluent_kafka import Producer

    from quax_faust.ingest.rdkafka import producer_config
    from quax_faust.stream.topics import ensure_topics

    settings = stack_settings(broker, tmp_path / "var")
    asyncio.run(ensure_topics(settings))
    keys = [wire.file_key(run, k) for run in ("r1", "week", "lo_b") for k in range(40)]
    delivered: dict[bytes, int] = {}
    producer = Producer(producer_config(settings))
    for key in keys:
        producer.produce(settings.slices_topic, b"x", key,
                         on_delivery=lambda err, msg: delivered.__setitem__(msg.key(), msg.partition()))
    assert producer.flush(30) == 0
    partitions = list(range(settings.partitions))
    expected = {key: DefaultPartitioner()(key, partitions, partitions) for key in keys}
    assert delivered == expected
    assert len(set(expected.values())) == settings.partitions  # the keys do spread over every partition
