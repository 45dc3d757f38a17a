"""End to end on a real broker: synthetic files -> producer -> 2 Faust workers -> tables -> export.

Every per-file spectrum and the run average must equal the Welch oracle; duplicated messages must
change nothing (the workers count each one as a duplicate, once its own offset is processed, even
when the consumer skipped some and a worker read them again); the spectra topic must hold one
record per file.
"""

import asyncio
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from quax_faust import connection
from quax_faust.core import daq, wire
from quax_faust.client import fetch_run
from quax_faust.exports import load_run
from quax_faust.tools.launch import wait_for_run
from quax_faust.ingest.producer import produce_directory
from quax_faust.ingest.sender import DaqProducer
from tests.conftest import worker_log_tails, write_synthetic_run
from tests.kafka_io import read_topic, send_raw_async
from tests.oracle import assert_run_matches_oracle
from tests.progress import counter, wait_processed, wait_settled, worker_counters
from tests.test_dsp import welch_oracle

pytestmark = pytest.mark.broker

N_FILES, N_SAMPLES = 12, 65536


@pytest.fixture
def daq_dir(tmp_path):
    return write_synthetic_run(tmp_path / "daq", N_FILES, N_SAMPLES, seed=5, tones=((123_456.0, 0.2),))


@pytest.mark.slow  # ~25 s with its workers' start and stop
def test_run_equals_welch_oracle_and_duplicates_change_nothing(make_stack, daq_dir, tmp_path):
    settings, workers = make_stack(workers=2, slices_per_message=8)
    report = asyncio.run(produce_directory(settings, daq_dir, "e2e", "max", progress=False))
    assert report.files_sent == N_FILES and not report.skipped

    async def duplicate_some():
        # Re-send two whole files, and one message with a different batch size (partial overlap).
        async with DaqProducer(settings) as producer:
            for k in (3, 7):
                await producer.send_file("e2e", k, *daq.read_channels(daq.pair_paths(daq_dir, k)))
        x = daq.whole_slices(daq.read_pair(daq.pair_paths(daq_dir, 5)), settings.slice_len)
        batch = wire.SliceBatch("e2e", 5, 4, x.shape[0], N_SAMPLES % settings.slice_len,
                                settings.sample_rate_hz, 0.0, x[4:15])
        await send_raw_async(settings.broker, settings.slices_topic, wire.file_key("e2e", 5), wire.encode_slice_batch(batch))
        await send_raw_async(settings.broker, settings.slices_topic, wire.file_key("e2e", 5), b"not a slice message")
        # And one file spectrum again, as a crash between its send and the offset commit would.
        await send_raw_async(settings.broker, settings.spectra_topic, spectrum.key, spectrum.value)

    wait_settled(settings, workers)  # no rebalance pending that would redeliver what was processed
    wait_processed(settings)  # every file, and its spectrum, processed: the counters hold still
    before = worker_counters(settings)
    spectrum = next(r for r in read_topic(settings.broker, settings.spectra_topic)
                    if wire.decode_file_spectrum(r.value).file_index == 9)
    asyncio.run(duplicate_some())
    wait_processed(settings)  # ... and now the duplicates' own offsets too
    after = worker_counters(settings)
    rise = {name: counter(after, name) - counter(before, name) for name in (
        "quax_duplicate_slices_total", "quax_duplicate_files_total", "quax_slices_total",
        "quax_slice_messages_total", "quax_files_completed_total", "quax_files_folded_total")}
    n_whole = N_SAMPLES // settings.slice_len
    n_messages = 2 * -(-n_whole // settings.slices_per_message) + 1  # files 3 and 7, file 5's overlap
    # Each message sent is counted once, even if the consumer skipped some and a worker read them
    # again (faust_fixes: what it had processed already is redelivered and skipped, not re-counted).
    reread = {name: counter(after, name) - counter(before, name)
              for name in ("quax_offset_rereads_total", "quax_redelivered_messages_total")}
    assert rise == {"quax_duplicate_slices_total": 2 * n_whole + 11, "quax_duplicate_files_total": 1,
                    "quax_slices_total": 0, "quax_slice_messages_total": n_messages,
                    "quax_files_completed_total": 0, "quax_files_folded_total": 0}, (
        f"{reread}\n" + worker_log_tails(workers, marks=("reading offsets again", "skipped by the consumer", "[ERROR]")))
    assert counter(after, "quax_rejected_messages_total", topic=settings.slices_topic, reason="truncated") \
        - counter(before, "quax_rejected_messages_total", topic=settings.slices_topic, reason="truncated") == 1
    summary = wait_for_run(settings, "e2e", N_FILES)
    rejected = read_topic(settings.broker, f"{settings.slices_topic}.rejected")
    assert len(rejected) == 1 and rejected[0].value == b"not a slice message"
    assert dict(rejected[0].headers)["reason"] == b"truncated"

    data = fetch_run(settings, "e2e")
    assert summary["n_files"] == N_FILES
    assert int(data["n_slices_total"]) == N_FILES * n_whole
    assert list(data["file_index"]) == list(range(N_FILES))
    assert list(data["file_n_slices"]) == [n_whole] * N_FILES

    all_slices = []
    for k in range(N_FILES):
        x = daq.read_pair(daq.pair_paths(daq_dir, k))
        f, p = welch_oracle(x)
        assert np.max(np.abs(data["file_mean"][k] - p)) <= 1e-5 * p.mean(), f"file {k}"
        all_slices.append(daq.whole_slices(x, settings.slice_len).ravel())
    f, p_run = welch_oracle(np.concatenate(all_slices))
    np.testing.assert_allclose(data["frequency_hz"], f)
    assert np.max(np.abs(data["run_mean"] - p_run)) <= 1e-5 * p_run.mean()
    # SEM = sigma/sqrt(N): for exponential periodogram bins, sigma ~ mean.
    assert np.median(data["run_sem"] / data["run_mean"]) == pytest.approx(1 / np.sqrt(N_FILES * n_whole), rel=0.1)

    spectra = read_topic(settings.broker, settings.spectra_topic)
    indices = sorted(wire.decode_file_spectrum(r.value).file_index for r in spectra)
    assert indices == sorted([*range(N_FILES), 9]), "one spectra record per file (and the test's repeat of 9)"

    # What the workers counted (fresh processes: the totals are this run's): docs/metrics.md.
    totals = {name: counter(before, name) for name in (
        "quax_slices_total", "quax_tail_samples_dropped_total", "quax_files_completed_total",
        "quax_files_folded_total", "quax_sample_bytes_total")}
    tail = N_SAMPLES % settings.slice_len
    assert totals == {"quax_slices_total": N_FILES * n_whole, "quax_tail_samples_dropped_total": N_FILES * tail,
                      "quax_files_completed_total": N_FILES, "quax_files_folded_total": N_FILES,
                      "quax_sample_bytes_total": N_FILES * n_whole * settings.slice_len * 8}
    assert counter(before, "quax_data_seconds_total") == pytest.approx(N_FILES * N_SAMPLES / settings.sample_rate_hz)

    # Every worker answers every view, the run views routed to the owner of the run table (docs/usage.md).
    for k in range(settings.workers):
        base = settings.worker_url(k)
        (listed,) = [r for r in get_url(base + "/quax/runs/")["runs"] if r["run"] == "e2e"]
        assert {key: listed[key] for key in ("n_files", "n_slices", "tail_samples_dropped", "latest_file_index")} == {
            "n_files": N_FILES, "n_slices": N_FILES * n_whole, "tail_samples_dropped": N_FILES * tail,
            "latest_file_index": N_FILES - 1}
        assert listed["data_seconds"] == pytest.approx(N_FILES * n_whole * settings.slice_len / settings.sample_rate_hz)
        assert get_url(base + "/quax/runs/e2e/")["file_indices"] == list(range(N_FILES))
        page = get_url(base + "/quax/runs/e2e/files/?start=4&limit=3")
        assert [f["file_index"] for f in page["files"]] == [4, 5, 6] and "mean" not in page["files"][0]
        page = get_url(base + "/quax/runs/e2e/files/?start=4&limit=3&spectra=1")
        np.testing.assert_array_equal(page["files"][1]["mean"], data["file_mean"][5])
        latest = get_url(base + "/quax/runs/e2e/files/latest/")
        assert latest["file_index"] == N_FILES - 1 and latest["latency_s"] > 0
        np.testing.assert_array_equal(latest["frequency_hz"], data["frequency_hz"])
        health = get_url(base + "/quax/health/")
        assert health["status"] == "ok" and health["assigned"]
        # The binary page (format=npz), routed like the JSON one, holds the very same numbers.
        with urllib.request.urlopen(base + "/quax/runs/e2e/files/?start=4&limit=3&spectra=1&format=npz",
                                    timeout=10) as answer:
            binary = np.load(io.BytesIO(answer.read()))
        for row, doc in enumerate(page["files"]):
            for key, value in doc.items():
                if key != "run":
                    np.testing.assert_array_equal(binary[key][row], np.nan if value is None else value, err_msg=key)
        assert set(binary.files) == set(page["files"][0]) - {"run"}

    # quax export reads the run through the views (docs/usage.md, "Export"), and records where the
    # tables stood in the log: here, idle, every slice message's offset is committed.
    slices_end = {}
    for record in read_topic(settings.broker, settings.slices_topic):
        slices_end[str(record.partition)] = max(slices_end.get(str(record.partition), 0), record.offset + 1)
    deadline = time.monotonic() + 60
    while connection.covered_offsets(settings)["slices_committed"] != slices_end and time.monotonic() < deadline:
        time.sleep(0.5)
    flags = ["--run", "e2e", "--broker", settings.broker, "--web-port-base", str(settings.web_port_base),
             "--workers", str(settings.workers)]
    for suffix in (".h5", ".npz", ".csv"):
        extra = ["--per-file-csv", str(tmp_path / "files.csv")] if suffix == ".csv" else []
        done = subprocess.run([sys.executable, "-m", "quax_faust.tools.cli", "export", *flags, "--out",
                               str(tmp_path / f"run{suffix}"), *extra], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    again = subprocess.run([sys.executable, "-m", "quax_faust.tools.cli", "export", *flags, "--out",
                            str(tmp_path / "run.h5")], capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--force" in again.stderr  # an existing export is not overwritten
    npz = np.load(tmp_path / "run.npz")
    assert set(npz.files) == {"frequency_hz", "run_mean", "run_std", "run_sem", "n_slices_total", "file_index",
                              "file_mean", "file_std", "file_n_slices", "file_latency_s", "run", "metadata",
                              "file_tail_samples", "file_first_produced_at_s", "file_last_produced_at_s",
                              "file_completed_at_s", "file_acquired_at_s"}
    assert npz["file_mean"].shape == npz["file_std"].shape == (N_FILES, settings.slice_len)
    for key in ("run_mean", "run_sem", "file_mean", "file_index", "file_n_slices"):
        np.testing.assert_array_equal(npz[key], data[key])
    header = (tmp_path / "run.csv").read_text().splitlines()[0].split(",")
    assert header == ["frequency_hz", "run_mean", "run_std", "run_sem"]  # the run average, one row per bin
    table = np.loadtxt(tmp_path / "run.csv", delimiter=",", skiprows=1)
    assert table.shape == (settings.slice_len, 4)
    np.testing.assert_allclose(table[:, 1], data["run_mean"], rtol=1e-9)
    files = np.loadtxt(tmp_path / "files.csv", delimiter=",", skiprows=1)  # file_index, frequency_hz, mean, std
    assert files.shape == (N_FILES * settings.slice_len, 4)
    np.testing.assert_allclose(files[:, 2].reshape(N_FILES, -1), data["file_mean"], rtol=1e-9)

    # The .h5 equals the live tables, and so Welch's oracle; its metadata describes the run.
    h5 = load_run(tmp_path / "run.h5")
    for key, value in data.items():
        np.testing.assert_array_equal(h5.as_dict()[key], value, err_msg=key)
    for row in (0, 5, N_FILES - 1):
        _, p = welch_oracle(daq.read_pair(daq.pair_paths(daq_dir, row)))
        assert np.max(np.abs(h5.file_mean[row] - p)) <= 1e-5 * p.mean(), f"file {row}"
    assert np.max(np.abs(h5.run_mean - p_run)) <= 1e-5 * p_run.mean()
    assert {k: h5.metadata[k] for k in ("run", "n_files", "n_slices", "nperseg", "window", "sample_rate_hz",
                                        "lo_frequency_hz", "power_unit")} == {
        "run": "e2e", "n_files": N_FILES, "n_slices": N_FILES * n_whole, "nperseg": settings.slice_len,
        "window": "boxcar", "sample_rate_hz": settings.sample_rate_hz, "lo_frequency_hz": settings.lo_frequency_hz,
        "power_unit": "V**2/Hz"}
    assert (h5.file_columns["file_latency_s"] > 0).all()
    for suffix in (".npz", ".csv"):
        np.testing.assert_array_equal(load_run(tmp_path / f"run{suffix}").run_mean, h5.run_mean)
    assert load_run(tmp_path / "run.npz").metadata["n_files"] == N_FILES
    offsets = h5.metadata["kafka_offsets"]
    assert offsets["consumer_group"] == settings.app_id and offsets["slices_topic"] == settings.slices_topic
    assert offsets["slices_committed"] == slices_end, (offsets, slices_end)
    assert offsets["spectra_end"] == {"0": len(read_topic(settings.broker, settings.spectra_topic))}
    npz_offsets = load_run(tmp_path / "run.npz").metadata["kafka_offsets"]  # another export, read later
    assert npz_offsets.pop("read_at_s") >= offsets.pop("read_at_s") and npz_offsets == offsets


def get_url(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def test_each_bad_message_is_rejected_counted_and_logged_once(make_stack, tmp_path):
    settings, workers = make_stack(workers=2, slices_per_message=8)
    daq_dir = write_synthetic_run(tmp_path / "daq", 2, N_SAMPLES, seed=6)
    x = daq.whole_slices(daq.read_pair(daq.pair_paths(daq_dir, 0)), settings.slice_len)
    batch = wire.encode_slice_batch(wire.SliceBatch("junk", 0, 0, x.shape[0], N_SAMPLES % settings.slice_len,
                                                    settings.sample_rate_hz, 0.0, x[:8]))
    bad = {"truncated": (wire.file_key("junk", 0), b"not a slice message"),
           "bad_magic": (wire.file_key("junk", 0), b"XXXX" + batch[4:]),
           "key_mismatch": (wire.file_key("junk", 1), batch)}

    async def send_bad():
        for key, value in bad.values():
            await send_raw_async(settings.broker, settings.slices_topic, key, value)

    # Once, in a settled group that has already processed a file: a message processed during a
    # rebalance (the one after the workers join comes up to seconds after wait_assigned) is
    # delivered again (at least once), and then rejected, kept and logged again.
    wait_settled(settings, workers)
    first = asyncio.run(produce_directory(settings, daq_dir, "lg", "max", indices=[0], progress=False))
    wait_for_run(settings, "lg", 1)
    wait_processed(settings)
    asyncio.run(send_bad())
    second = asyncio.run(produce_directory(settings, daq_dir, "lg", "max", indices=[1], progress=False))
    assert first.files_sent == second.files_sent == 1  # the run goes on after the bad messages
    wait_processed(settings)

    rejected = read_topic(settings.broker, f"{settings.slices_topic}.rejected")
    assert sorted(dict(r.headers)["reason"].decode() for r in rejected) == sorted(bad)
    counters = worker_counters(settings)
    for reason in bad:
        assert counter(counters, "quax_rejected_messages_total", topic=settings.slices_topic, reason=reason) == 1
    logs = "".join(p.read_text(errors="replace") for p in sorted(workers.log_dir.glob("worker-*.log")))
    lines = [line for line in logs.splitlines() if "rejected message " in line]
    assert len(lines) == len(bad), lines
    for record in rejected:
        topic, partition, offset = dict(record.headers)["source"].decode().rsplit("/", 2)
        assert sum(f"rejected message {topic}[{partition}]@{offset}: " in line for line in lines) == 1, lines
    assert_run_matches_oracle(settings, daq_dir, "lg", range(2))  # the run went on


def test_a_table_value_that_cannot_be_read_goes_to_the_dead_letter_topic(make_stack, tmp_path):
    """A corrupt `files` entry (here written into the table's changelog while the worker is down,
    so recovery puts it in RocksDB) is no poison pill: each message of that file is rejected with
    reason bad_table_value, the file's view says so, and other files go on."""
    settings, workers = make_stack(workers=1, slices_per_message=8)
    daq_dir = write_synthetic_run(tmp_path / "daq", 2, N_SAMPLES, seed=8)
    key = wire.file_key("bt", 0)
    workers.stop()
    asyncio.run(send_raw_async(settings.broker, f"{settings.app_id}-files-changelog", key, b"QFAC garbage"))
    workers.start()
    workers.wait_assigned()

    report = asyncio.run(produce_directory(settings, daq_dir, "bt", "max", progress=False))
    assert report.files_sent == 2
    wait_for_run(settings, "bt", 1)  # file 1 is folded; file 0's messages are all rejected
    wait_processed(settings)

    # Each of the file's messages is a dead letter; one delivered again (at least once: a partition
    # re-read after a stall) is rejected again, with the same source.
    rejected = read_topic(settings.broker, f"{settings.slices_topic}.rejected")
    sources = {dict(r.headers)["source"] for r in rejected}
    n_messages = -(-(N_SAMPLES // settings.slice_len) // 8)
    assert len(sources) == n_messages and all(r.key == key for r in rejected)
    assert {dict(r.headers)["reason"].decode() for r in rejected} == {"bad_table_value"}
    assert counter(worker_counters(settings), "quax_rejected_messages_total", topic=settings.slices_topic,
                   reason="bad_table_value") == len(rejected)
    with pytest.raises(urllib.error.HTTPError) as answer:
        get_url(f"{settings.worker_url(0)}/quax/files/?key=bt/{0:010d}")
    assert answer.value.code == 500 and json.loads(answer.value.read())["reason"] == "bad_table_value"
    run = get_url(f"{settings.worker_url(0)}/quax/runs/bt/")
    assert run["n_files"] == 1 and run["latest_file_index"] == 1
