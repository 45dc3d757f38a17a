"""Shared fixtures: a real Kafka broker (started here on a free 127.0.0.1 port) and Faust workers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from quax_faust.core import daq, synth
from quax_faust.tools.launch import Broker, Workers, free_port
from quax_faust.settings import Settings

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


LONGEST_FILES = ("test_reliability.py", "test_spark_cluster.py", "test_scale_out.py", "test_memory.py",
                 "test_spark_batch.py", "test_campaign.py", "test_producer_outage.py", "test_packaging.py",
                 "test_dashboard_browser.py", "test_spark_campaign.py")
"""The test files that take longest (`make test`'s durations, fresh-clone run 16: 3 min to 40 s each)."""


def pytest_collection_modifyitems(config, items):
    """The longest files first, then the others in their usual order (each file's tests keep theirs):
    with `--dist loadfile` both xdist workers start on long files and end on short ones, rather than
    one of them running the Spark cluster test alone at the end."""
    rank = {name: k for k, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One Apache Kafka broker (KRaft) for the whole test session."""
    b = Broker(port=free_port(2), data_dir=tmp_path_factory.mktemp("kafka") / "data").start()
    yield b
    b.stop()


def write_synthetic_run(directory: Path, n_files: int, n_samples: int, *, seed: int,
                        tones: tuple[tuple[float, float], ...] = ()) -> Path:
    """n_files synthetic duck_i/duck_q pairs of n_samples each (noise + passband + tones) in directory."""
    model = synth.SynthModel(tones=tones)
    for k in range(n_files):
        daq.write_pair(directory, k, synth.synth_file(k, n_samples, model, seed=seed))
    return directory


def campaign_records(settings: Settings, without_cavity: str = "nocavity") -> dict[str, dict]:
    """Metadata of three runs of a campaign (search.synthetic_campaign.CampaignPlan for this
    slice length and rate): step0 and step1 with a QUAX-like cavity 200 kHz above LOs 77 bins
    apart, and ``without_cavity`` at the next LO step with its LO only (left out of the physics;
    ``CampaignPlan(...).metadata(2)`` is its whole record)."""
    plan = campaign_plan(settings)
    return {"step0": plan.metadata(0), "step1": plan.metadata(1),
            without_cavity: {"lo_frequency_hz": plan.metadata(2)["lo_frequency_hz"]}}


def produce_runs(settings: Settings, daq_dir: Path, records: dict[str, dict], n_files: int) -> None:
    """Send daq_dir as each run of records with its metadata (quax produce at max pace), then wait
    until the workers' tables hold n_files of every run."""
    import asyncio

    from quax_faust.ingest.producer import produce_directory
    from quax_faust.tools.launch import wait_for_run

    for run, fields in records.items():
        asyncio.run(produce_directory(settings, daq_dir, run, "max", progress=False, metadata=fields))
    for run in records:
        wait_for_run(settings, run, n_files)


def campaign_plan(settings: Settings):
    """The synthetic CampaignPlan of campaign_records: 3 runs, the settings' bins and rate."""
    from quax_faust.search.synthetic_campaign import CampaignPlan

    return CampaignPlan(n_runs=3, n_bins=settings.slice_len, sample_rate_hz=settings.sample_rate_hz)


def stack_settings(broker: Broker, var_dir: Path, **changes) -> Settings:
    """Settings for an isolated pipeline on the shared broker: own topics, app id and ports."""
    uid = uuid.uuid4().hex[:8]
    base = dict(broker=broker.bootstrap, app_id=f"quax-{uid}", slices_topic=f"slices-{uid}",
                spectra_topic=f"spectra-{uid}", candidates_topic=f"candidates-{uid}",
                metadata_topic=f"run-metadata-{uid}",
                var_dir=var_dir, workers=2,
                web_port_base=free_port(4), campaign_port=free_port())
    return Settings().replace(**{**base, **changes})


def end_outage_drill(producer, own: Broker, workers: Workers) -> None:
    """Teardown of a broker-outage drill: a producer still waiting for the broker would keep pytest
    from exiting, so its broker comes back for it; then the workers stop."""
    if producer is not None and producer.is_alive():
        own.start()
        producer.join(120)
    workers.stop()


@pytest.fixture
def make_stack(broker, tmp_path):
    """Factory: make_stack(workers=2, **settings) -> (settings, Workers) with workers started."""
    started: list[Workers] = []

    def make(start: bool = True, **changes) -> tuple[Settings, Workers]:
        settings = stack_settings(broker, tmp_path / f"var{len(started)}", **changes)
        workers = Workers(settings, tmp_path / f"logs{len(started)}")
        started.append(workers)
        if start:
            workers.start()
            workers.wait_assigned()
        return settings, workers

    yield make
    for w in started:
        w.stop()


# --- Fault drills: what the processes report, and waiting for it --------------------------------

def scrape(url: str) -> dict[str, float]:
    """A process's Prometheus metrics at url (``.../metrics``): {sample name: value summed over its
    labels}; {} if it does not answer."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def worker_metrics(settings: Settings, k: int) -> dict[str, float]:
    return scrape(settings.worker_url(k) + "/metrics")


def rebalances_done(settings: Settings, k: int) -> float:
    """Rebalances worker k completed, its table recovery included (Faust's PrometheusMonitor)."""
    return worker_metrics(settings, k).get("faust_rebalance_done_latency_count", 0.0)


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.1):
    """Call condition() until it returns something true, and return that; AssertionError naming
    what was awaited after timeout_s (generous: the box may be loaded)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout_s} s: {what}")
        time.sleep(interval_s)


def worker_log_tails(workers, lines: int = 12, marks: tuple[str, ...] = ("[WARNING]", "[ERROR]", "Traceback")) -> str:
    """The last ``lines`` log lines of each worker that hold one of ``marks`` (Faust's warnings and
    errors by default): for a failed wait to say what the workers were doing."""
    out = []
    for path in sorted(workers.log_dir.glob("worker-*.log")):
        hits = [line for line in path.read_text(errors="replace").splitlines() if any(m in line for m in marks)]
        out.append(f"--- {path.name}: {len(hits)} lines; the last {min(lines, len(hits))}:")
        out.extend(line[:300] for line in hits[-lines:])
    return "\n".join(out)


def wait_each_assigned(workers, timeout_s: float = 120.0) -> None:
    """Wait until every running worker has joined the group and finished rebalancing: each holds
    partitions, together they hold every slices partition, each has completed a rebalance (table
    recovery included), and none of that changed over a second. (Workers.wait_assigned alone may
    return while the first worker holds everything and another is about to join; Faust's
    rebalances-in-progress gauges can stay up after back-to-back rebalances, so they are not used.)"""
    import time

    want = {f"{workers.settings.slices_topic}/{p}" for p in range(workers.settings.partitions)}

    def snapshot():
        docs = {k: workers.health(k) for k in workers.procs}
        if not all(d and d["assigned"] for d in docs.values()):
            return None
        if not want <= {tp for d in docs.values() for tp in d["assigned"]}:
            return None
        done = {k: rebalances_done(workers.settings, k) for k in workers.procs}
        if not all(n >= 1 for n in done.values()):
            return None
        return {k: (tuple(d["assigned"]), done[k]) for k, d in docs.items()}

    seen: list = []  # the last health docs and rebalance counts, for the report of a timeout

    def at_rest() -> bool:
        seen[:] = [{k: ((workers.health(k) or {}).get("assigned"), rebalances_done(workers.settings, k))
                    for k in workers.procs}]
        first = snapshot()
        if first is None:
            return False
        time.sleep(1.0)
        return snapshot() == first

    try:
        wait_until(at_rest, timeout_s, f"each of workers {sorted(workers.procs)} assigned and at rest", interval_s=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast seen (assigned, rebalances done) per worker: {seen}\n"
                             f"{worker_log_tails(workers)}\n{worker_stacks(workers)}") from None


def worker_stacks(workers, lines: int = 300) -> str:
    """Each running worker's threads (SIGQUIT: faulthandler, even with a blocked event loop) and
    asyncio tasks (SIGUSR1: mode's handler, if the loop still runs), as written to its log: the end
    of each log after the signals; and py-spy's view of each, where py-spy is installed."""
    import os
    import shutil
    import signal
    import subprocess
    import time

    spied = []
    if shutil.which("py-spy"):
        for k, proc in workers.procs.items():
            if proc.poll() is None:
                run = subprocess.run(["py-spy", "dump", "--pid", str(proc.pid)], capture_output=True, text=True, timeout=60)
                spied.append(f"--- py-spy dump of worker {k} (pid {proc.pid}):\n{run.stdout[-6000:]}{run.stderr[-500:]}")
    for sig in (signal.SIGQUIT, signal.SIGUSR1):
        for proc in workers.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, sig)
        time.sleep(1.5)
    return "\n".join(spied) + "\nstacks after SIGQUIT and SIGUSR1:\n" + worker_log_tails(workers, lines=lines, marks=("",))
