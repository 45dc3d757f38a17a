"""Spark batch reprocessing (spark_batch/): real local Spark reading the real broker's topics.

A synthetic run goes through the live pipeline with duplicated slices (whole files, a partial
overlap, repeats while a file is still filling), a duplicated spectrum and malformed records in
both topics. Then the recompute from each topic must equal the live tables and the Welch oracle,
count every slice once and report the malformed records; after the archive loses a file's first
records, `quax verify` must say MISMATCH and name that file.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import scipy.signal
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition

from quax_faust import connection

from quax_faust.tools import cli

from quax_faust.core import daq, synth, wire
from quax_faust.client import fetch_run, get_json
from quax_faust.tools.launch import Workers, wait_for_run
from quax_faust.ingest.producer import produce_directory
from quax_faust.ingest.sender import DaqProducer
from quax_faust.settings import Settings
from spark_batch import archive, fold
from spark_batch.verify import compare
from tests.conftest import stack_settings, write_synthetic_run
from tests.kafka_io import read_topic, send_raw_async, wait_records
from tests.secure_kafka import running_secure_broker, secure_settings
from tests.test_dsp import welch_oracle

N_FILES, N_SAMPLES, PER_MESSAGE = 8, 65536, 8
RUN = "sparkrun"
TEST_CONF = {"spark.ui.enabled": "false"}
EXPORT_KEYS = {"frequency_hz", "run_mean", "run_sem", "run_std", "n_slices_total", "file_index",
               "file_mean", "file_std", "file_n_slices", "file_latency_s", "file_acquired_at_s", "run",
               "metadata"}
RUN_LO_HZ = 9.2e9
"""The run's recorded LO; the recomputes run with another lo_frequency_hz setting, which must not relabel it."""
ACQUIRED_AT_S = 1_750_000_000.0
"""File k of the run was acquired at ACQUIRED_AT_S + 4.25 k (the pairs' modification times)."""


# ------------------------------------------------------------------------------------------------
# The task functions on their own (pure logic: Arrow batches in, rows out; no Spark, no broker)

def _slices(file_index: int, n_slices: int, slice_len: int = 64) -> np.ndarray:
    rng = np.random.default_rng(file_index)
    x = rng.standard_normal((n_slices, slice_len, 2)).astype(np.float32)
    return x.view(np.complex64)[..., 0]


def _message(file_index: int, x: np.ndarray, first: int, stop: int, n_total: int) -> bytes:
    return wire.encode_slice_batch(wire.SliceBatch("r1", file_index, first, n_total, 5, 1e3, 1.0, x[first:stop]))


def _records(records: list[tuple[bytes | None, bytes | None]], partition: int = 0,
             first_offset: int = 0) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({
        "key": pa.array([k for k, _ in records], pa.binary()),
        "value": pa.array([v for _, v in records], pa.binary()),
        "partition": pa.array([partition] * len(records), pa.int32()),
        "offset": pa.array(range(first_offset, first_offset + len(records)), pa.int64())})


def test_task_fold_counts_each_slice_once_and_reports_malformed_records():
    x, y = _slices(1, 20), _slices(2, 6)
    key1, key2 = wire.file_key("r1", 1), wire.file_key("r1", 2)
    records = [(key1, _message(1, x, 0, 8, 20)), (key1, _message(1, x, 4, 12, 20)),  # partial overlap
               (key1, b"JUNK" * 20), (key2, _message(2, y, 0, 6, 6)),
               (key1, _message(1, x, 0, 8, 20)),                                      # repeat while filling
               (key1, _message(1, x, 8, 20, 20)), (key1, _message(1, x, 0, 20, 20)),  # completes; late repeat
               (key2, None), (wire.file_key("r1", 9), _message(2, y, 0, 6, 6))]      # tombstone; wrong key
    batches = [_records(records[:4]), _records(records[4:])]
    rows = [r for b in fold.fold_slices("r1")(batches) for r in b.to_pylist()]
    bad = sorted(r["reason"] for r in rows if r["kind"] == "malformed")
    assert bad == ["bad_magic", "key_mismatch", "null_value"]
    files = pa.Table.from_pylist([r for r in rows if r["kind"] == "file"], schema=fold.PART_SCHEMA)
    merged = {}
    for index in (1, 2):
        part = files.filter(pc.equal(files["file_index"], index)).drop(["kind", "reason", "error"])
        merged[index] = fold.merge_file_parts(part).to_pylist()[0]
    assert merged[1]["complete"] and merged[1]["n_slices"] == 20
    assert merged[1]["duplicate_slices"] == 4 + 8 + 4 + 20 and merged[1]["n_messages"] == 5
    # The oracle is scipy's, on the file's 20 slices once each: a slice counted twice would move
    # the mean by ~1/20; the tolerances only absorb float64 rounding.
    _, _, per_slice = scipy.signal.spectrogram(x.ravel().astype(np.complex128), fs=1e3, window="boxcar",
                                               nperseg=64, noverlap=0, detrend=False,
                                               return_onesided=False, scaling="density", mode="psd")
    per_slice = np.fft.fftshift(per_slice, axes=0)
    np.testing.assert_allclose(merged[1]["mean"], per_slice.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(merged[1]["std"], per_slice.std(axis=1, ddof=1), rtol=1e-8)
    assert merged[2]["complete"] and merged[2]["n_slices"] == 6 and merged[2]["duplicate_slices"] == 0


def test_spectra_fold_keeps_the_first_copy_of_each_file():
    def spectrum(index: int, level: float) -> bytes:
        mean = np.full(16, level)
        return wire.encode_file_spectrum(wire.FileSpectrum("r1", index, 30, 5, 1e3, 1.0, 2.0, 3.5, mean, mean / 2))

    records = [(b"r1", spectrum(0, 1.0)), (b"r1", spectrum(1, 2.0)), (b"r1", spectrum(0, 9.0)),
               (b"r1", b"short"), (b"r2", spectrum(2, 1.0))]
    rows = [r for b in fold.fold_spectra("r1")([_records(records)]) for r in b.to_pylist()]
    assert sorted(r["reason"] for r in rows if r["kind"] == "malformed") == ["key_mismatch", "truncated"]
    parts = pa.Table.from_pylist([r for r in rows if r["kind"] == "file"], schema=fold.PART_SCHEMA)
    by_file = {}
    for index in (0, 1):
        part = parts.filter(pc.equal(parts["file_index"], index)).drop(["kind", "reason", "error"])
        by_file[index] = fold.merge_file_parts(part).to_pylist()[0]
    assert by_file[0]["complete"] and by_file[0]["n_slices"] == 30 and by_file[0]["n_messages"] == 2
    assert by_file[0]["duplicate_slices"] == 30 and by_file[0]["latency_s"] == 1.5
    np.testing.assert_allclose(by_file[0]["mean"], 1.0)  # the first copy, not the later 9.0
    np.testing.assert_allclose(by_file[0]["std"], 0.5)
    np.testing.assert_allclose(by_file[1]["mean"], 2.0)


def test_file_parts_that_overlap_across_tasks_are_refused_not_double_counted():
    x = _slices(1, 10)
    key = wire.file_key("r1", 1)
    task_a = fold.fold_slices("r1")([_records([(key, _message(1, x, 0, 6, 10))], partition=0)])
    task_b = fold.fold_slices("r1")([_records([(key, _message(1, x, 4, 10, 10))], partition=1)])
    parts = pa.Table.from_batches(list(task_a) + list(task_b)).drop(["kind", "reason", "error"])
    row = fold.merge_file_parts(parts).to_pylist()[0]
    assert row["problem"] == "overlapping_parts" and not row["complete"]

    disjoint_b = fold.fold_slices("r1")([_records([(key, _message(1, x, 6, 10, 10))], partition=1)])
    task_a = fold.fold_slices("r1")([_records([(key, _message(1, x, 0, 6, 10))], partition=0)])
    parts = pa.Table.from_batches(list(task_a) + list(disjoint_b)).drop(["kind", "reason", "error"])
    row = fold.merge_file_parts(parts).to_pylist()[0]
    assert row["problem"] is None and row["complete"] and row["n_slices"] == 10


def _merged(*tasks) -> dict:
    parts = pa.Table.from_batches([b for task in tasks for b in task]).drop(["kind", "reason", "error"])
    return fold.merge_file_parts(parts).to_pylist()[0]


def test_a_file_repeated_whole_in_another_task_counts_its_first_copy_once():
    # A week's spectra topic is read in many tasks (offset ranges of its one partition): a file's
    # spectrum repeated after a worker's recovery can land in another task than its first copy.
    def spectrum(level: float) -> bytes:
        mean = np.full(16, level)
        return wire.encode_file_spectrum(wire.FileSpectrum("r1", 3, 30, 5, 1e3, 1.0, 2.0, 3.5, mean, mean / 2))

    first = list(fold.fold_spectra("r1")([_records([(b"r1", spectrum(1.0))], first_offset=10)]))
    later = list(fold.fold_spectra("r1")([_records([(b"r1", spectrum(9.0))], first_offset=5000)]))
    for order in ((first, later), (later, first)):  # whatever order the shuffle hands them in
        row = _merged(*order)
        assert row["complete"] and row["problem"] is None and row["n_slices"] == 30
        assert row["n_messages"] == 2 and row["duplicate_slices"] == 30
        np.testing.assert_allclose(row["mean"], 1.0)  # the first copy in offset order, as live
        np.testing.assert_allclose(row["std"], 0.5)

    # A re-sent file: slices 0-6 sent before a crash, the whole file again later, in another task.
    x, key = _slices(1, 10), wire.file_key("r1", 1)
    broken = list(fold.fold_slices("r1")([_records([(key, _message(1, x, 0, 6, 10))])]))
    resent = list(fold.fold_slices("r1")([_records([(key, _message(1, x, 0, 10, 10))], first_offset=40)]))
    row = _merged(resent, broken)
    assert row["complete"] and row["n_slices"] == 10 and row["duplicate_slices"] == 6
    whole = _merged(resent)
    np.testing.assert_allclose(row["mean"], whole["mean"], rtol=1e-12)
    np.testing.assert_allclose(row["std"], whole["std"], rtol=1e-12)


def test_a_topic_is_read_in_tasks_of_bounded_size():
    assert archive.read_tasks({0: (0, 10)}, record_bytes=50_000) == 1  # one per Kafka partition at least
    assert archive.read_tasks({0: (0, 0), 1: (0, 0), 2: (0, 0), 3: (0, 0)}, record_bytes=3 << 20) == 4
    week = {0: (0, 144_000)}  # a week's spectra: 144,000 records of ~49 KB, ~7 GB
    tasks = archive.read_tasks(week, record_bytes=49_152)
    assert tasks * (archive.TASK_BYTES // 49_152) >= 144_000 > (tasks - 1) * (archive.TASK_BYTES // 49_152)
    assert archive.read_tasks({0: (100, 105), 1: (0, 7)}, record_bytes=10, task_bytes=30) == 4


def _run_dict(file_index, file_n, file_mean, run_mean) -> dict:
    return {"run": np.array("r"), "file_index": np.array(file_index), "file_n_slices": np.array(file_n),
            "file_mean": np.array(file_mean, dtype=float), "run_mean": np.array(run_mean, dtype=float),
            "n_slices_total": np.int64(sum(file_n))}


def test_verdict_names_the_files_that_differ():
    live = _run_dict([0, 1, 2, 3], [5, 5, 5, 5], [[1.0, 2.0]] * 4, [1.5, 1.5])
    same = _run_dict([0, 1, 2, 3], [5, 5, 5, 5], [[1.0, 2.0 + 1e-9]] * 4, [1.5, 1.5 + 1e-9])
    assert compare(live, same, 1e-6).equal
    batch = _run_dict([0, 1, 3, 4], [5, 4, 5, 5], [[1.0, 2.0], [1.0, 2.0], [1.0, 2.1], [1.0, 2.0]], [1.5, 1.5])
    verdict = compare(live, batch, 1e-6)
    assert not verdict.equal
    assert verdict.differing_files == [1, 2, 3, 4]
    assert verdict.missing_from_batch == [2] and verdict.missing_from_live == [4]
    assert verdict.slice_count_differs == {1: (5, 4)}
    assert verdict.power_differs[3] == pytest.approx(0.1 / 2.0)  # relative to the bin above the level
    text = "\n".join(verdict.lines())
    assert text.startswith("VERDICT: MISMATCH") and "file 3: power differs" in text
    # A strong line (100x the level) may differ by float32 rounding of its own power; a noise bin
    # may not differ by more than the tolerance times the mean level.
    line = _run_dict([0], [5], [[1.0, 1.0, 300.0]], [1.0, 1.0, 300.0])
    assert compare(line, _run_dict([0], [5], [[1.0, 1.0, 300.0 * (1 + 5e-7)]], [1.0, 1.0, 300.0]), 1e-6).equal
    assert not compare(line, _run_dict([0], [5], [[1.0, 1.0 + 3e-4, 300.0]], [1.0, 1.0, 300.0]), 1e-6).equal
    # The same spectra around another LO are not the same run's spectra.
    axis = 9.2e9 + np.array([-651.0, 0.0])
    at_lo = {**live, "frequency_hz": axis}
    assert compare(at_lo, {**same, "frequency_hz": axis.copy()}, 1e-6).equal
    relabelled = compare(at_lo, {**same, "frequency_hz": axis + 1e8}, 1e-6)
    assert not relabelled.equal and relabelled.frequency_deviation_hz == pytest.approx(1e8)
    assert "frequency axis differs by 1e+08 Hz" in "\n".join(relabelled.lines())


def test_spark_connects_with_the_live_chains_security_settings():
    assert connection.java_client_properties(Settings(broker="daq1:9092")) == {
        "bootstrap.servers": "daq1:9092", "security.protocol": "PLAINTEXT"}
    secure = Settings(broker="k1:9094,k2:9094", security_protocol="sasl_ssl", sasl_username="quax",
                      sasl_password='p"w\\d', ssl_cafile="/etc/quax/kafka-ca.pem")
    assert connection.java_client_properties(secure) == {
        "bootstrap.servers": "k1:9094,k2:9094", "security.protocol": "SASL_SSL",
        "ssl.truststore.type": "PEM", "ssl.truststore.location": "/etc/quax/kafka-ca.pem",
        "ssl.endpoint.identification.algorithm": "https",  # the broker's name is checked, as in ssl_context
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required '
                            'username="quax" password="p\\"w\\\\d";'}
    plain_login = connection.java_client_properties(secure.replace(security_protocol="SASL_PLAINTEXT",
                                                                    sasl_mechanism="PLAIN"))
    assert plain_login["sasl.jaas.config"].startswith("org.apache.kafka.common.security.plain.PlainLoginModule ")
    assert not any(k.startswith("ssl.") for k in plain_login)
    assert set(connection.java_client_properties(secure.replace(security_protocol="SSL"))) == {
        "bootstrap.servers", "security.protocol", "ssl.truststore.type", "ssl.truststore.location",
        "ssl.endpoint.identification.algorithm"}
    with pytest.raises(ValueError, match="needs ssl_cafile"):
        connection.java_client_properties(secure.replace(ssl_cafile=""))
    with pytest.raises(ValueError, match="needs sasl_username"):
        connection.java_client_properties(secure.replace(sasl_username=""))
    with pytest.raises(ValueError, match="sasl_mechanism 'GSSAPI'"):
        connection.java_client_properties(secure.replace(sasl_mechanism="GSSAPI"))


# ------------------------------------------------------------------------------------------------
# Real Spark on the real broker

@pytest.fixture(scope="module")
def spark():
    from spark_batch.session import get_session

    session = get_session(Settings(), TEST_CONF)
    yield session
    session.stop()


@pytest.fixture
def daq_dir(tmp_path):
    return write_synthetic_run(tmp_path / "daq", N_FILES, N_SAMPLES, seed=11, tones=((123_456.0, 0.2),))


async def _send_duplicates_and_garbage(settings: Settings, daq_dir) -> tuple[int, int]:
    """Duplicated slices, an extra file sent with repeats while filling, a repeated spectrum and
    one malformed record per topic. Returns (duplicate slices sent, the extra file's index)."""
    async with DaqProducer(settings) as producer:
        await producer.send_file(RUN, 3, *daq.read_channels(daq.pair_paths(daq_dir, 3)))  # 21 repeats
    send = lambda key, value: send_raw_async(settings.broker, settings.slices_topic, key, value)
    x5 = daq.whole_slices(daq.read_pair(daq.pair_paths(daq_dir, 5)), settings.slice_len)
    n_whole, tail = x5.shape[0], N_SAMPLES % settings.slice_len
    batch = lambda index, x, a, b: wire.encode_slice_batch(
        wire.SliceBatch(RUN, index, a, n_whole, tail, settings.sample_rate_hz, 1.0, x[a:b]))
    await send(wire.file_key(RUN, 5), batch(5, x5, 4, 15))  # 11 repeats, another batch size
    extra = N_FILES
    x = daq.whole_slices(synth.synth_file(extra, N_SAMPLES, synth.SynthModel(), seed=11), settings.slice_len)
    daq.write_pair(daq_dir, extra, np.concatenate([x.ravel(), np.zeros(tail, np.complex64)]))
    for a, b in ((0, 8), (4, 12), (0, 8), (8, n_whole)):  # 4 + 8 + 4 repeats while filling
        await send(wire.file_key(RUN, extra), batch(extra, x, a, b))
    await send(wire.file_key(RUN, 5), b"not a slice message")
    return 21 + 11 + 16, extra


def _assert_equals_oracle(data: dict, daq_dir, indices, slice_len: int) -> None:
    assert list(data["file_index"]) == list(indices)
    all_slices = []
    for row, k in enumerate(indices):
        x = daq.read_pair(daq.pair_paths(daq_dir, k))
        _, p = welch_oracle(x)
        assert data["file_n_slices"][row] == x.shape[0] // slice_len, f"file {k}: slice count"
        assert np.max(np.abs(data["file_mean"][row] - p)) <= 1e-5 * p.mean(), f"file {k}: spectrum"
        all_slices.append(daq.whole_slices(x, slice_len).ravel())
    _, p_run = welch_oracle(np.concatenate(all_slices))
    assert int(data["n_slices_total"]) == sum(s.size for s in all_slices) // slice_len
    assert np.max(np.abs(data["run_mean"] - p_run)) <= 1e-5 * p_run.mean()


def _quax(args: list[str], settings: Settings, capsys) -> tuple[int, str]:
    """Run the `quax` command in this process (so it reuses the module's SparkSession)."""
    flags = ["--broker", settings.broker, "--slices-topic", settings.slices_topic,
             "--spectra-topic", settings.spectra_topic, "--metadata-topic", settings.metadata_topic,
             "--lo-frequency-hz", str(settings.lo_frequency_hz), "--web-port-base", str(settings.web_port_base),
             "--workers", str(settings.workers), "--slices-per-message", str(settings.slices_per_message)]
    saved = dict(os.environ)
    try:
        code = cli.main(args + flags)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return code, capsys.readouterr().out


def _first_record_without_copy(records) -> tuple[int, int, int]:
    """(partition, offset after its first record, file of that record) for a partition whose first
    record's slices appear in no later record: deleting it leaves that file incomplete."""
    for partition in sorted({r.partition for r in records}):
        in_partition = [r for r in records if r.partition == partition]
        first = wire.decode_slice_batch(in_partition[0].value)
        lost = set(range(first.first_slice, first.first_slice + first.slice_count))
        for r in in_partition[1:]:
            try:
                b = wire.decode_slice_batch(r.value)
            except wire.WireError:
                continue
            if b.file_index == first.file_index:
                lost -= set(range(b.first_slice, b.first_slice + b.slice_count))
        if lost:
            return partition, in_partition[1].offset, first.file_index
    raise AssertionError("every partition's first record has a later copy")


async def _delete_first_records(settings: Settings, partition: int, before: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(settings.slices_topic, partition): RecordsToDelete(before)})
    finally:
        await admin.close()


@pytest.mark.broker
@pytest.mark.slow  # real local Spark
def test_reprocess_equals_live_tables_and_oracle(spark, make_stack, daq_dir, tmp_path, capsys):
    from spark_batch.job import reprocess

    settings, _workers = make_stack(workers=2, slices_per_message=PER_MESSAGE)
    for k in range(N_FILES):
        pair = daq.pair_paths(daq_dir, k)
        for path in (pair.i_path, pair.q_path):
            os.utime(path, (ACQUIRED_AT_S + 4.25 * k, ACQUIRED_AT_S + 4.25 * k))
    report = asyncio.run(produce_directory(settings, daq_dir, RUN, "max", progress=False,
                                           metadata={"lo_frequency_hz": "9.2 GHz", "operator": "A. R."}))
    assert report.files_sent == N_FILES and not report.skipped
    n_duplicates, extra = asyncio.run(_send_duplicates_and_garbage(settings, daq_dir))
    wait_for_run(settings, RUN, N_FILES + 1)
    spectra = wait_records(settings.broker, settings.spectra_topic, N_FILES + 1)
    # A repeated spectrum and a malformed one on the spectra topic too.
    asyncio.run(send_raw_async(settings.broker, settings.spectra_topic, RUN.encode(), spectra[0].value))
    asyncio.run(send_raw_async(settings.broker, settings.spectra_topic, RUN.encode(), b"not a spectrum"))
    # live saw all: two rejections, by distinct sources (a stalled partition's re-read may reject a
    # message twice, as in test_pipeline_e2e)
    deadline, sources = time.monotonic() + 60, {}
    while len(sources) < 2 and time.monotonic() < deadline:
        sources = {dict(r.headers)["source"]: dict(r.headers)["reason"]
                   for r in wait_records(settings.broker, f"{settings.slices_topic}.rejected", 2)}
        time.sleep(0.5)
    assert len(sources) == 2, sources
    live = fetch_run(settings, RUN)
    indices = list(range(N_FILES + 1))
    _assert_equals_oracle(live, daq_dir, indices, settings.slice_len)
    assert np.mean(live["frequency_hz"]) == pytest.approx(RUN_LO_HZ, abs=settings.bin_width_hz)

    # --from slices: the full recompute, called as a library, with another LO setting: the run's own
    # LO (its metadata record) makes the frequency axis; a run without a record falls back to the setting.
    elsewhere = settings.replace(lo_frequency_hz=9.3e9)
    result = reprocess(elsewhere, RUN, "slices", tmp_path / "slices", spark=spark)
    verdict = compare(live, result.data, settings.verify_tolerance)
    assert verdict.equal, verdict.lines()
    np.testing.assert_allclose(result.data["frequency_hz"], live["frequency_hz"], rtol=0, atol=1e-6)
    recorded = {"lo_frequency_hz": RUN_LO_HZ, "operator": "A. R.", "sample_rate_hz": settings.sample_rate_hz}
    with np.load(tmp_path / "slices" / "run.npz") as npz:
        written = json.loads(str(npz["metadata"]))
    assert written["lo_frequency_hz"] == RUN_LO_HZ and written["run_metadata"] == recorded
    report_doc = json.loads((tmp_path / "slices" / "report.json").read_text())
    assert report_doc["run_metadata"] == recorded and report_doc["lo_frequency_hz"] == RUN_LO_HZ
    assert report_doc["lo_from"].startswith(f"run metadata ({settings.metadata_topic}@")
    assert archive.run_metadata(elsewhere, "no-such-run").fields == {}
    # Each file's acquisition time, as the live file views show it (the extra file's messages knew none).
    expected = [ACQUIRED_AT_S + 4.25 * k for k in range(N_FILES)] + [np.nan]
    np.testing.assert_array_equal(result.data["file_acquired_at_s"], expected)
    views = {f["file_index"]: f["acquired_at_s"] for f in get_json(
        settings, f"/quax/runs/{RUN}/files/?start=0&limit=100")["files"]}
    live_times = {**live, "file_acquired_at_s": np.array([np.nan if views[i] is None else views[i]
                                                          for i in live["file_index"]])}
    np.testing.assert_array_equal(live_times["file_acquired_at_s"], expected)
    assert compare(live_times, result.data, settings.verify_tolerance).equal
    _assert_equals_oracle(result.data, daq_dir, indices, settings.slice_len)
    assert result.duplicate_slices == n_duplicates, "each repeated slice seen and not counted"
    assert result.malformed == {"truncated": 1}
    bad = result.malformed_examples[0]
    assert bad["partition"] in range(settings.partitions) and bad["offset"] >= 0 and bad["error"]
    assert not result.incomplete_files
    assert set(np.load(tmp_path / "slices" / "run.npz").files) == EXPORT_KEYS
    per_file = pq.read_table(tmp_path / "slices" / "files.parquet")
    assert sorted(per_file.column("file_index").to_pylist()) == indices
    per_run = pq.read_table(tmp_path / "slices" / "run.parquet").to_pylist()[0]
    assert per_run["n_slices"] == int(live["n_slices_total"])
    np.testing.assert_allclose(per_run["mean"], result.data["run_mean"])

    # --from spectra through `quax verify`: EQUAL, and its outputs say what it skipped.
    code, out = _quax(["verify", "--run", RUN, "--from", "spectra", "--out", str(tmp_path / "spectra")],
                      elsewhere, capsys)
    assert code == 0 and "VERDICT: EQUAL" in out, out
    assert f"frequency axis around LO {RUN_LO_HZ:.9g} Hz, from the run metadata" in out, out
    doc = json.loads((tmp_path / "spectra" / "report.json").read_text())
    assert doc["malformed"] == {"truncated": 1} and doc["n_messages"] == N_FILES + 2
    assert doc["offsets"] == {"0": [0, N_FILES + 3]}
    with np.load(tmp_path / "spectra" / "run.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    _assert_equals_oracle(data, daq_dir, indices, settings.slice_len)
    assert np.all(np.isfinite(data["file_latency_s"]) & (data["file_latency_s"] >= 0))
    np.testing.assert_array_equal(data["file_acquired_at_s"], expected)  # from the spectra records

    # Read in one task per record, as a week's spectra topic is cut into many: the repeated spectrum
    # is in another task than its first copy, and is still counted once.
    split = reprocess(elsewhere, RUN, "spectra", spark=spark, task_bytes=1)
    assert split.tasks == N_FILES + 3 and split.malformed == {"truncated": 1}
    assert split.duplicate_slices == wire.decode_file_spectrum(spectra[0].value).n_slices
    assert not split.incomplete_files and compare(live, split.data, settings.verify_tolerance).equal

    # The archive loses the first record of a partition (as retention would): verify names the
    # file that can no longer be recomputed, and exits non-zero.
    partition, cut, lost = _first_record_without_copy(read_topic(settings.broker, settings.slices_topic))
    asyncio.run(_delete_first_records(settings, partition, cut))
    code, out = _quax(["verify", "--run", RUN], settings, capsys)
    assert code == 1, out
    assert "VERDICT: MISMATCH" in out and f"not complete in the archive: {lost}" in out, out


@pytest.mark.broker
@pytest.mark.slow  # real local Spark
def test_reprocess_reads_a_cluster_that_requires_sasl_scram_over_tls(spark, tmp_path):
    """The run goes through a SASL_SSL-only broker; the offset lookup and Spark's Kafka source log in
    with the live chain's settings, and the recompute equals the live tables and the oracle."""
    from spark_batch.job import reprocess

    n_files = 4
    daq_dir = write_synthetic_run(tmp_path / "daq", n_files, N_SAMPLES, seed=12, tones=((-234_567.0, 0.2),))
    with running_secure_broker(tmp_path / "kafka-tls") as broker:
        settings = stack_settings(broker, tmp_path / "var", workers=2, slices_per_message=PER_MESSAGE,
                                  **secure_settings(broker))
        workers = Workers(settings, tmp_path / "logs").start()
        try:
            workers.wait_assigned()
            asyncio.run(produce_directory(settings, daq_dir, RUN, "max", progress=False))
            wait_for_run(settings, RUN, n_files)
            live = fetch_run(settings, RUN)
        finally:
            workers.stop()
        _assert_equals_oracle(live, daq_dir, range(n_files), settings.slice_len)

        for source in ("slices", "spectra"):
            result = reprocess(settings, RUN, source, tmp_path / source, spark=spark)
            verdict = compare(live, result.data, settings.verify_tolerance)
            assert verdict.equal, (source, verdict.lines())
            _assert_equals_oracle(result.data, daq_dir, range(n_files), settings.slice_len)
            assert not result.malformed and not result.incomplete_files
            assert settings.sasl_password not in (tmp_path / source / "report.json").read_text()

        # Spark's plan of the read does not show the password.
        bounds = archive.topic_bounds(settings, settings.slices_topic)
        records = archive.read_topic(spark, settings, settings.slices_topic, bounds, lambda key: key.isNotNull())
        plan = spark._jvm.PythonSQLUtils.explainString(records._jdf.queryExecution(), "extended")
        assert "KafkaRelation" in plan and settings.sasl_password not in plan

    # The JAAS line Spark hands to Kafka's client reads back, by Kafka's own parser, as the password
    # it was made from, whatever the password holds.
    for password in ('say "friend"', "back\\slash\\", "two\nlines\r", "ünï €", "semi;colon // /* */ \\1"):
        jaas = connection.java_client_properties(settings.replace(sasl_password=password))["sasl.jaas.config"]
        entries = spark._jvm.org.apache.kafka.common.security.JaasConfig("KafkaClient", jaas) \
            .getAppConfigurationEntry("KafkaClient")
        assert len(entries) == 1
        assert dict(entries[0].getOptions()) == {"username": "quax", "password": password}
