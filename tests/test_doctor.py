"""`quax doctor` against a real broker and real workers: a healthy stack is all ok (exit 0), and each
broken state it claims to detect, made for real, gives the line that says so: the broker unreachable
or not answering (fails fast, the timed-out check named), a topic missing or with the wrong
partition count or configs, lag, a worker down and its partitions unassigned, a worker started with
another slice length, the DAQ directory missing, stale or with a stuck file, a port held by another
program. Pure logic (exit codes, formatting, disk and clock arithmetic, the deadline) with fakes."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic

from quax_faust.connection import client_options, connect_admin
from quax_faust.core import daq
from quax_faust.stream.topics import topic_plan
from quax_faust.tools.doctor import command as doctor
from quax_faust.tools.doctor import campaign_checks, chain_checks, machine_checks, probes
from quax_faust.tools.doctor.report import (FAIL, OK, SKIP, WARN, Check, TimedOut, exit_code, format_json,
                                            format_text, start_probe)
from quax_faust.tools.launch import CampaignLive, Workers, free_port, settings_env
from tests.conftest import stack_settings, wait_each_assigned, wait_until


class Elsewhere:
    """Where stack_settings points its processes when there is no broker of ours (a closed port...)."""

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap


def by_name(checks) -> dict[str, Check]:
    return {c.name: c for c in checks}


def run_cli(settings, *args: str, timeout_s: float = 60.0) -> tuple[int, dict, float]:
    """`quax doctor --json ARGS` in a child process with these settings: (exit code, document, seconds)."""
    env = {**os.environ, **settings_env(settings)}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "quax_faust.tools.cli", "doctor", "--json", *args],
                         env=env, capture_output=True, text=True, timeout=timeout_s)
    elapsed = time.monotonic() - started
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout), elapsed


def fresh_pair(directory: Path, index: int = 0) -> daq.FilePair:
    samples = np.zeros(4096, dtype=np.complex64)
    return daq.write_pair(directory, index, samples)


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    """Two workers on the session broker, with a small slices retention (the disk check is then ok
    on a test box) and free dashboard, Prometheus and producer ports; shared by the stack tests."""
    tmp = tmp_path_factory.mktemp("doctor")
    settings = stack_settings(broker, tmp / "var", slices_retention_s=60, dashboard_port=free_port(),
                              prometheus_port=free_port(), producer_metrics_port=free_port())
    workers = Workers(settings, tmp / "logs").start()
    service = CampaignLive(settings, tmp / "campaign-live.log").start()  # the live campaign, read by its check
    wait_each_assigned(workers)
    service.wait_for(lambda doc: doc["status"] == "no runs yet")
    yield settings, workers, tmp
    service.stop()
    workers.stop()


def test_a_healthy_stack_is_all_ok(stack):
    settings, _, tmp = stack
    fresh_pair(tmp / "daq")
    code, doc, _ = run_cli(settings, "--daq", str(tmp / "daq"))
    lines = {c["name"]: c for c in doc["checks"]}
    assert code == 0 and doc["exit_code"] == 0, format_text([Check(**c) for c in doc["checks"]])
    assert {c["status"] for c in doc["checks"]} == {OK}
    assert "Kafka >= 4.0" in lines["broker"]["message"]
    for name in ("worker 0", "worker 1", "partitions", "consumer group", "consumer lag", "campaign service",
                 "settings", "clock", "daq", "disk", f"port {settings.dashboard_port}",
                 *(f"topic {t}" for t in topic_plan(settings))):
        assert name in lines, name
    assert "no runs yet, 0 run(s) used" in lines["campaign service"]["message"]
    assert f"0 file spectra of {settings.spectra_topic} not read yet" in lines["campaign service"]["message"]
    assert "the same in this command, worker 0, worker 1" in lines["settings"]["message"]
    assert "broker log" in " ".join(c["message"] for c in doc["checks"] if c["name"] == "disk")


def test_a_worker_with_another_slice_length_fails_the_settings_check(stack):
    settings, workers, tmp = stack
    checks = by_name(doctor.run_checks(settings.replace(slice_len=4096), timeout_s=10))  # this command differs
    assert checks["setting slice_len"].status == FAIL
    assert "4096 in this command; 3072 in worker 0, worker 1" in checks["setting slice_len"].message

    odd = Workers(settings.replace(slice_len=4096, workers=3), tmp / "logs-odd").start([2])  # a real one
    try:
        wait_until(lambda: odd.health(2), 90, "the odd worker's health view")
        checks = doctor.run_checks(settings.replace(workers=3), timeout_s=10)
        lines = by_name(checks)
        assert lines["setting slice_len"].status == FAIL, format_text(checks)
        assert "3072 in this command, worker 0, worker 1; 4096 in worker 2" in lines["setting slice_len"].message
        assert "QUAX_SLICE_LEN" in lines["setting slice_len"].fix
        assert exit_code(checks) == 2
    finally:
        odd.stop()


def test_a_port_held_by_a_worker_of_another_chain_fails(stack):
    settings, _, _ = stack
    ours = settings.replace(app_id="quax-elsewhere")  # a second chain configured onto the same ports
    checks = machine_checks.check_ports(ours, [probes.port_facts(ours, settings.web_port_base, "worker 0", 5,
                                                                 lambda step: None)])
    assert checks[0].status == FAIL
    assert f"worker 0: held by a worker of another chain, app {settings.app_id}" in checks[0].message


def test_a_worker_down_leaves_its_partitions_unassigned(stack):
    settings, workers, _ = stack
    wait_each_assigned(workers)  # both hold partitions again after the odd worker left
    held = {tp for tp in workers.health(1)["assigned"] if tp.startswith(settings.slices_topic + "/")}
    workers.kill(1)  # SIGKILL: its partitions stay its own until session_timeout_s passes
    checks = doctor.run_checks(settings, timeout_s=10)
    lines = by_name(checks)
    assert lines["worker 0"].status == OK
    assert lines["worker 1"].status == FAIL and "does not answer" in lines["worker 1"].message
    assert "quax worker --index 1" in lines["worker 1"].fix
    assert lines["partitions"].status == FAIL, format_text(checks)
    assert held and all(tp in lines["partitions"].message for tp in held)
    assert exit_code(checks) == 2


def test_an_unreachable_broker_fails_fast(tmp_path):
    closed = free_port()  # nothing listens there
    settings = stack_settings(Elsewhere(f"127.0.0.1:{closed}"), tmp_path / "var",
                              dashboard_port=free_port(), prometheus_port=free_port(), producer_metrics_port=0)
    code, doc, elapsed = run_cli(settings)
    lines = {c["name"]: c for c in doc["checks"]}
    assert code == 2 and lines["broker"]["status"] == FAIL
    assert f"no Kafka broker answers at 127.0.0.1:{closed}" in lines["broker"]["message"]
    assert "QUAX_BROKER" in lines["broker"]["fix"]
    assert lines["topics"]["status"] == SKIP
    assert elapsed < 15, f"{elapsed:.1f} s"


def test_a_broker_and_a_worker_that_never_answer_time_out_by_name(tmp_path):
    hole = socket.socket()  # accepts connections (the kernel's backlog) and never says a word
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    port = hole.getsockname()[1]
    try:
        settings = stack_settings(Elsewhere(f"127.0.0.1:{port}"), tmp_path / "var",
                                  workers=1, web_port_base=port, dashboard_port=free_port(),
                                  prometheus_port=free_port(), producer_metrics_port=0)
        code, doc, elapsed = run_cli(settings, "--timeout", "2")
    finally:
        hole.close()
    lines = {c["name"]: c for c in doc["checks"]}
    assert code == 2
    assert lines["broker"]["status"] == FAIL
    assert lines["broker"]["message"] == f"broker timed out after 2 s (connecting to 127.0.0.1:{port})"
    assert "does not answer as Kafka" in lines["broker"]["fix"]
    assert lines["worker 0"]["message"].startswith(f"worker 0 timed out after 2 s (GET http://127.0.0.1:{port}")
    assert any(c["message"].startswith(f"port {port} (worker 0) timed out after 2 s") for c in doc["checks"])
    assert elapsed < 12, f"{elapsed:.1f} s"  # the probes run at once: one deadline, not one per check


def test_missing_topic_wrong_partitions_wrong_configs_and_lag(broker, tmp_path):
    settings = stack_settings(broker, tmp_path / "var", workers=0)
    plan = topic_plan(settings)

    async def make_broken_topics():
        admin = await connect_admin(settings, 30)
        try:
            await admin.create_topics([
                NewTopic(settings.slices_topic, 2, 1, topic_configs=plan[settings.slices_topic].configs),
                NewTopic(settings.spectra_topic, 1, 1, topic_configs={**plan[settings.spectra_topic].configs,
                                                                      "retention.ms": "1000"}),
                *(NewTopic(name, spec.partitions, 1, topic_configs=spec.configs) for name, spec in plan.items()
                  if name not in (settings.slices_topic, settings.spectra_topic, settings.candidates_topic))])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(**client_options(settings))
        await producer.start()
        try:  # 30 messages nobody reads: 30 x 128 slices = 5.9 s of data waiting
            for k in range(30):
                await producer.send_and_wait(settings.slices_topic, b"x", key=b"k", partition=k % 2)
        finally:
            await producer.stop()

    asyncio.run(make_broken_topics())
    checks = doctor.run_checks(settings, timeout_s=10)
    lines = by_name(checks)
    assert lines[f"topic {settings.slices_topic}"].status == FAIL
    assert lines[f"topic {settings.slices_topic}"].message == "2 partitions, expected 4"
    assert lines[f"topic {settings.candidates_topic}"].status == FAIL
    assert lines[f"topic {settings.candidates_topic}"].message == "missing"
    assert "quax topics" in lines[f"topic {settings.candidates_topic}"].fix
    assert lines[f"topic {settings.spectra_topic}"].status == WARN
    assert "retention.ms=1000 (plan -1)" in lines[f"topic {settings.spectra_topic}"].message
    assert lines[f"topic {settings.metadata_topic}"].status == OK
    assert lines["consumer lag"].status == WARN
    assert lines["consumer lag"].message.startswith(f"30 messages of {settings.slices_topic} (5.9 s of data)")
    assert lines["partitions"].status == FAIL  # no worker holds them
    assert lines["consumer group"].status == FAIL and "unknown to the broker" in lines["consumer group"].message

    replicated = by_name(doctor.run_checks(settings.replace(replication_factor=2), timeout_s=10))
    assert replicated[f"topic {settings.metadata_topic}"].status == WARN
    assert "1 replica(s), replication_factor is 2" in replicated[f"topic {settings.metadata_topic}"].message


def test_daq_directory_missing_stale_stuck_and_producer_behind(tmp_path):
    now = time.time()
    missing = machine_checks.check_daq(probes.daq_facts(tmp_path / "nowhere", tmp_path / "var"), now, 60)
    assert [(c.status, c.message) for c in missing] == [(FAIL, f"{tmp_path / 'nowhere'} does not exist")]

    source = tmp_path / "daq"
    for k in range(4):
        fresh_pair(source, k)
    assert [c.status for c in machine_checks.check_daq(probes.daq_facts(source, tmp_path / "var"), now, 60)] == [OK]

    for path in source.iterdir():  # the DAQ stopped an hour ago
        os.utime(path, (now - 3600, now - 3600))
    lone = daq.pair_paths(source, 4).i_path  # its partner never came
    lone.write_bytes(b"\0" * 64)
    os.utime(lone, (now - 300, now - 300))
    (source / "quarantine").mkdir()
    (source / "quarantine" / "duck_i_00002.dat.reason.txt").write_text("odd_size: 33554430 bytes ...")
    (tmp_path / "var" / "producer").mkdir(parents=True)
    checkpoint = tmp_path / "var" / "producer" / "run7.json"
    checkpoint.write_text(json.dumps({"sent": [[0, 1]]}))
    os.utime(checkpoint, (now - 3000, now - 3000))
    lines = by_name(machine_checks.check_daq(probes.daq_facts(source, tmp_path / "var"), now, 60))
    assert lines["daq"].status == WARN and "written 60 min ago (more than 60 s)" in lines["daq"].message
    assert lines["daq pairs"].status == WARN and "duck_i_00004.dat (5 min)" in lines["daq pairs"].message
    assert lines["daq quarantine"].status == WARN and "odd_size" in lines["daq quarantine"].message
    assert lines["producer"].status == WARN and "newest file sent 0, 3 behind" in lines["producer"].message

    source.chmod(0o000)
    try:
        if not os.access(source, os.R_OK):  # root reads anything
            unreadable = machine_checks.check_daq(probes.daq_facts(source, tmp_path / "var"), now, 60)
            assert [c.status for c in unreadable] == [FAIL] and "not readable" in unreadable[0].message
    finally:
        source.chmod(0o755)


class _NotOurs(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_error(404, "not here")

    def log_message(self, *args):
        pass


def test_a_port_held_by_another_program_fails_and_names_it(tmp_path):
    raw = socket.socket()  # a listener that is not HTTP
    raw.bind(("127.0.0.1", 0))
    raw.listen(4)
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotOurs)  # an HTTP service that is not ours
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = stack_settings(Elsewhere("127.0.0.1:1"), tmp_path / "var",
                                  dashboard_port=raw.getsockname()[1], prometheus_port=server.server_address[1])
        facts = [probes.port_facts(settings, port, role, 1, lambda step: None)
                 for port, role in ((settings.dashboard_port, "dashboard"), (settings.prometheus_port, "prometheus"),
                                    (free_port(), "producer metrics"))]
        checks = machine_checks.check_ports(settings, facts)
        worker = chain_checks.check_workers(settings.replace(workers=1, web_port_base=server.server_address[1]),
                                            {0: probes.http_get(f"http://127.0.0.1:{server.server_address[1]}"
                                                                "/quax/health/", 2)}, None)
    finally:
        raw.close()
        server.shutdown()
    assert [c.status for c in checks] == [FAIL, FAIL, OK], format_text(checks)
    assert f"dashboard: held by another program (pid {os.getpid()} " in checks[0].message
    assert "QUAX_DASHBOARD_PORT" in checks[0].fix and "QUAX_PROMETHEUS_PORT" in checks[1].fix
    assert checks[2].message.endswith("free")
    assert worker[0].status == FAIL and worker[0].message.endswith("answers, but not as a quax worker (HTTP 404)")


def test_a_worker_port_is_probed_at_the_workers_own_host(tmp_path):
    """With web_hosts (one machine per worker), worker K's port is looked for at its own address."""
    raw = socket.socket()
    raw.bind(("127.0.0.3", 0))
    raw.listen(4)
    try:
        port = raw.getsockname()[1]
        settings = stack_settings(Elsewhere("127.0.0.1:1"), tmp_path / "var", workers=2, web_port_base=port - 1)
        own = probes.port_facts(settings.replace(web_hosts="127.0.0.2,127.0.0.3"), port, "worker 1", 1,
                                lambda step: None)
        shared = probes.port_facts(settings, port, "worker 1", 1, lambda step: None)
    finally:
        raw.close()
    assert own.listening and not shared.listening


# --- pure logic ----------------------------------------------------------------------------

def test_exit_code_is_the_worst_line_and_skip_counts_as_ok():
    assert exit_code([]) == 0
    assert exit_code([Check("a", OK, ""), Check("b", SKIP, "")]) == 0
    assert exit_code([Check("a", OK, ""), Check("b", WARN, "", "fix it")]) == 1
    assert exit_code([Check("a", FAIL, "", "x"), Check("b", WARN, "", "y")]) == 2


def test_text_and_json_reports():
    checks = [Check("broker", OK, "answers", "never shown"), Check("worker 1", FAIL, "down", "start it")]
    text = format_text(checks).splitlines()
    assert text[0].split() == ["ok", "broker", "answers"]
    assert text[1].split() == ["fail", "worker", "1", "down"]
    assert text[2].split() == ["fix:", "start", "it"]
    assert text[3] == "1 ok, 0 warn, 1 fail, 0 skipped: exit 2 (docs/troubleshooting.md)"
    doc = json.loads(format_json(checks))
    assert doc["exit_code"] == 2 and doc["checks"][1] == {"name": "worker 1", "status": FAIL, "message": "down",
                                                         "fix": "start it"}


def test_a_probe_past_its_deadline_is_named_with_its_step():
    def stuck(step):
        step("waiting for Godot")
        time.sleep(30)

    started = time.monotonic()
    with pytest.raises(TimedOut, match=r"^slow timed out after 0.3 s \(waiting for Godot\)$"):
        start_probe("slow", stuck, 0.3)()
    assert time.monotonic() - started < 1.0
    assert start_probe("quick", lambda step: 42, 1.0)() == 42


def test_disk_needs_the_rest_of_the_slices_retention_then_days_of_growth():
    gb = 1e9
    disk = probes.DiskFacts(Path("/data"), 1, free_bytes=int(100 * gb), total_bytes=int(1000 * gb))
    judged = lambda to_come, per_day: machine_checks.check_disks([(disk, "broker log", to_come, per_day)])[0]
    assert judged(99.5 * gb, 1 * gb).status == FAIL  # not even a day after the retention fills
    assert judged(90 * gb, 2 * gb).status == WARN  # 5 days
    assert judged(10 * gb, 2 * gb).status == OK and "45 days left" in judged(10 * gb, 2 * gb).message
    assert judged(float("inf"), 0).status == WARN
    settings = stack_settings(Elsewhere("127.0.0.1:1"), Path("/tmp/v"))
    broker_day, rocks_day = machine_checks.growth_per_day(settings, 1)
    assert rocks_day == pytest.approx(49152 * 86400 / 4.194304)  # 1.01 GB a day: docs/reliability.md's 7 GB a week
    assert broker_day == pytest.approx(2 * rocks_day)
    week_ms = str(7 * 86400 * 1000)
    assert machine_checks.slices_bytes_kept(settings, {"retention.ms": week_ms}, 4, 1) == pytest.approx(9.68e12, rel=1e-3)
    capped = {"retention.ms": week_ms, "retention.bytes": str(500 << 30)}  # the broker's default cap
    assert machine_checks.slices_bytes_kept(settings, capped, 4, 1) == 4 * (500 << 30)


def test_clock_skew_of_a_worker_and_of_the_producer():
    settings = stack_settings(Elsewhere("127.0.0.1:1"), Path("/tmp/v"))
    now = 1_800_000_000.0

    def worker(skew):
        return probes.HttpAnswer("u", 200, json.dumps({"time_s": now + skew}).encode(), sent_s=now - 0.01,
                                 received_s=now + 0.01)

    producer = probes.HttpAnswer("p", 200, b"# metrics", date_s=now + 3, sent_s=now - 0.01, received_s=now + 0.01)
    statuses = [c.status for c in machine_checks.check_clock(settings, {"a": worker(0.02), "b": worker(0.5),
                                                                        "c": worker(-2.0), "producer": producer})]
    assert statuses == [OK, WARN, FAIL, FAIL]


def _facts(**changes) -> probes.KafkaFacts:
    base = dict(brokers=[{"node_id": 1, "host": "127.0.0.1", "port": 9092}], controller_id=1,
                api_versions={0: (0, 13), 1: (4, 18)}, topics={}, broker_configs={},
                group={"state": "Stable", "members": 0}, committed={}, ends={})
    return probes.KafkaFacts(**{**base, **changes})


def test_a_byte_cap_shorter_than_the_retention_and_a_rebalancing_group_warn():
    settings = stack_settings(Elsewhere("127.0.0.1:1"), Path("/tmp/v"), workers=0)
    plan = topic_plan(settings)
    slices = {"partitions": 4, "replicas": 1,
              "configs": {**plan[settings.slices_topic].configs, "retention.bytes": str(500 << 30)}}
    (line,) = [c for c in chain_checks.check_topics(settings, _facts(topics={settings.slices_topic: slices}))
               if c.name == f"topic {settings.slices_topic}"]
    assert line.status == WARN and "retention.bytes=536870912000 per partition keeps only 37.3 h of data" in line.message
    group = chain_checks.check_workers(settings, {}, _facts(group={"state": "PreparingRebalance", "members": 2}))
    assert by_name(group)["consumer group"].status == WARN
    assert by_name(group)["consumer group"].message.endswith("PreparingRebalance, 2 member(s), 0 worker(s) answer")
    # A new broker whose group coordinator is still loading: a warning on the group line alone.
    loading = chain_checks.check_workers(settings, {}, _facts(group=None, group_error="CoordinatorLoadInProgressError"))
    assert by_name(loading)["consumer group"].status == WARN
    assert "CoordinatorLoadInProgressError" in by_name(loading)["consumer group"].message


def test_settings_warnings_retention_an_old_worker_and_unequal_shares():
    settings = stack_settings(Elsewhere("127.0.0.1:1"), Path("/tmp/v"), workers=3)

    def health(**reported):
        doc = {"assigned": [], "time_s": 0.0, "consumer_group": settings.app_id, **reported,  # as before settings
               "slices_topic": settings.slices_topic, "spectra_topic": settings.spectra_topic}
        return probes.HttpAnswer("u", 200, json.dumps(doc).encode())

    from quax_faust.stream.views import agreed_settings

    answers = {0: health(settings=agreed_settings(settings.replace(slices_retention_s=600.0))), 1: health()}
    lines = chain_checks.check_settings(settings, answers)
    assert [(c.name, c.status) for c in lines] == [("setting slices_retention_s", WARN), ("settings", WARN),
                                                   ("settings", WARN)]
    assert "600.0 in worker 0" in lines[0].message
    assert "worker(s) 1 do not report their settings" in lines[1].message
    assert "partitions 4 is not a multiple of workers 3" in lines[2].message


def test_every_troubleshooting_section_the_fixes_point_to_exists():
    import re

    from quax_faust.settings import REPO_DIR

    doc = (REPO_DIR / "docs" / "troubleshooting.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
               for heading in re.findall(r"^## (.+)$", doc, flags=re.M)}
    code = "".join(p.read_text() for p in (REPO_DIR / "quax_faust" / "tools" / "doctor").glob("*.py"))
    pointed = set(re.findall(r"#([a-z-]+)\)", code)) | set(re.findall(r"troubleshooting\.md#([a-z-]+)", doc))
    assert pointed and pointed <= anchors, pointed - anchors
    for symptom in ("broker-unreachable", "lag-growing", "stale-dashboard", "stuck-file", "rejected-messages",
                    "port-in-use", "disk-full", "checkpoint-to-reset"):
        assert symptom in anchors


def campaign_answer(status: int | None, doc: dict | None = None, error: str | None = None) -> probes.HttpAnswer:
    return probes.HttpAnswer("http://127.0.0.1:6060/campaign/", status=status,
                             body=json.dumps(doc).encode() if doc is not None else b"", error=error)


def campaign_facts(spectra_end: int) -> probes.KafkaFacts:
    return probes.KafkaFacts(brokers=[], controller_id=None, api_versions={}, topics={}, broker_configs={},
                             group=None, committed={}, ends={("spectra", 0): spectra_end})


def test_the_campaign_service_down_starting_stale_or_leaving_runs_out():
    """The live campaign's line (campaign_checks.py): absent is a warning (the chain runs without
    it), another program on its port fails, and its document's own troubles are warnings."""
    settings = stack_settings(Elsewhere("127.0.0.1:1"), Path("/nonexistent"), campaign_port=6060, spectra_topic="spectra")
    now = 1_000_000.0
    down = campaign_checks.check_campaign(settings, campaign_answer(None, error="Connection refused"), None, now)
    assert [(c.status, c.name) for c in down] == [(WARN, "campaign service")]
    assert "nothing answers" in down[0].message and "quax campaign-live" in down[0].fix

    starting = campaign_checks.check_campaign(settings, campaign_answer(503, {"status": "starting",
                                                                              "files_folded": 0}), None, now)
    assert starting[0].status == WARN and "starting" in starting[0].message
    other = campaign_checks.check_campaign(settings, campaign_answer(404, {"detail": "not found"},
                                                                     error="HTTP 404"), None, now)
    assert other[0].status == FAIL and "QUAX_CAMPAIGN_PORT" in other[0].fix
    late = campaign_checks.check_campaign(settings, TimedOut("campaign service timed out after 10 s"), None, now)
    assert late[0].status == FAIL

    doc = {"status": "ok", "updated_at_s": now - 2, "next_offsets": {"spectra": 40, "metadata": 3},
           "files_folded": 40, "runs_used": [{"run": "s000"}, {"run": "s001"}], "candidates": [{}],
           "rejected": {}, "runs_left_out": []}
    fine = campaign_checks.check_campaign(settings, campaign_answer(200, doc), campaign_facts(41), now)
    assert [c.status for c in fine] == [OK]
    assert "ok, 2 run(s) used, 0 left out, 40 files folded, 1 candidate(s); 1 file spectra" in fine[0].message

    stale = campaign_checks.check_campaign(settings, campaign_answer(200, {**doc, "updated_at_s": now - 300}),
                                           campaign_facts(90), now)
    assert stale[0].status == WARN and "50 file spectra" in stale[0].message and "updated 300 s ago" in stale[0].message
    idle = campaign_checks.check_campaign(settings, campaign_answer(200, {**doc, "updated_at_s": now - 300}),
                                          campaign_facts(40), now)
    assert idle[0].status == OK, "nothing to read: an old document is up to date"

    troubled = {**doc, "rejected": {"spectra/truncated": 2, "metadata/bad_field": 1},
                "runs_left_out": [{"run": "s002", "reason": "its metadata lacks loaded_q"}]}
    lines = by_name(campaign_checks.check_campaign(settings, campaign_answer(200, troubled), campaign_facts(40), now))
    assert lines["campaign records"].status == WARN and "3 record(s)" in lines["campaign records"].message
    assert lines["campaign runs"].status == WARN and "s002: its metadata lacks loaded_q" in lines["campaign runs"].message
    assert "--meta" in lines["campaign runs"].fix
