"""The alerts routed: ops/alertmanager/alertmanager.yml checked by Debian's amtool, every alert of
ops/prometheus/rules.yml routed to the receiver of its severity, and one alert of a real run carried
all the way: a broker, a Faust worker and the producer, Prometheus with the shipped rules (the
drill's copy of test_detector_alerts: QuaxDaqStopped after 5 s, not 42 s) sending to a real
Alertmanager started by ops/alertmanager/run.sh, whose webhook receivers point at an HTTP server in
this test. The run's DAQ stops; the on-shift webhook must get QuaxDaqStopped with its run, and a
silence of the run (as docs/deploy.md says to set one) must mute it.

The test copy of the Alertmanager configuration differs from the shipped one only in the receivers'
URLs and the group_wait of the routes (1 s, not 10 s .. 1 min); the test checks that.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from quax_faust.ingest.producer import produce_directory
from quax_faust.ops_files import ops_dir
from quax_faust.settings import Settings
from quax_faust.tools.launch import free_port, wait_for_run
from quax_faust.tools.prometheus import CONFIG, RULES, alertmanager_address, render_config
from tests.conftest import wait_until, write_synthetic_run
from tests.test_detector_alerts import DrillPrometheus

AM_DIR = ops_dir() / "alertmanager"
AM_CONFIG = AM_DIR / "alertmanager.yml"
RUN_SH = AM_DIR / "run.sh"
RECEIVER_OF_SEVERITY = {"critical": "on-shift", "warning": "operators", "info": "analysis"}
RUN = "routed"

needs_alertmanager = pytest.mark.skipif(
    shutil.which("amtool") is None or shutil.which("prometheus-alertmanager") is None,
    reason="Debian's prometheus-alertmanager package is not installed (ops/setup.sh)")
pytestmark = needs_alertmanager


def amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["amtool", *args], capture_output=True, text=True, timeout=60)


def alert_rules() -> dict[str, dict]:
    rules = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def test_amtool_accepts_the_shipped_config_and_its_commented_receivers(tmp_path):
    done = amtool("check-config", str(AM_CONFIG))
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    # The e-mail and Slack receivers shown commented out are valid once a lab uncomments them.
    lines = []
    for line in AM_CONFIG.read_text().splitlines():
        body = line.lstrip()
        indent = line[: len(line) - len(body)]
        if not indent:  # the file's header
            pass
        elif body.startswith(("# smtp_", "# email_configs:", "# slack_configs:")):
            line = indent + body[2:]
        elif body.startswith("#   "):
            line = indent + "  " + body[4:]
        lines.append(line)
    uncommented = tmp_path / "alertmanager.yml"
    uncommented.write_text("\n".join(lines) + "\n")
    receivers = {r["name"]: r for r in yaml.safe_load(uncommented.read_text())["receivers"]}
    assert "email_configs" in receivers["on-shift"] and "slack_configs" in receivers["operators"]
    done = amtool("check-config", str(uncommented))
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_each_alert_goes_to_the_receiver_of_its_severity_grouped_by_run():
    config = yaml.safe_load(AM_CONFIG.read_text())
    assert config["route"]["group_by"] == ["alertname", "run"]
    for name, rule in alert_rules().items():
        severity = rule["labels"]["severity"]
        assert severity in RECEIVER_OF_SEVERITY, f"{name}: severity {severity!r} has no route"
        done = amtool("config", "routes", "test", f"--config.file={AM_CONFIG}", f"alertname={name}",
                      f"severity={severity}", "run=run42")
        assert done.returncode == 0 and done.stdout.split() == [RECEIVER_OF_SEVERITY[severity]], \
            (name, done.stdout, done.stderr)


def test_prometheus_sends_the_alerts_to_the_alertmanager_of_the_environment(tmp_path):
    committed = yaml.safe_load(CONFIG.read_text())["alerting"]["alertmanagers"]
    assert committed == [{"static_configs": [{"targets": [alertmanager_address({})]}]}]
    assert alertmanager_address({}) == "127.0.0.1:9095"  # where ops/alertmanager/run.sh listens by default
    assert alertmanager_address({"ALERTMANAGER_HOST": "alerts.lab", "ALERTMANAGER_PORT": "9193"}) == "alerts.lab:9193"
    assert alertmanager_address({"ALERTMANAGER_PORT": "0"}) is None
    with pytest.raises(ValueError, match="ALERTMANAGER_PORT='x93'"):
        alertmanager_address({"ALERTMANAGER_PORT": "x93"})
    settings = Settings().replace(prometheus_port=31600)
    assert "alerting" not in render_config(settings)  # the tests' Prometheus alerts nobody
    rendered = render_config(settings, alertmanager="127.0.0.1:31693")
    assert rendered["alerting"]["alertmanagers"] == [{"static_configs": [{"targets": ["127.0.0.1:31693"]}]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(rendered))
    if shutil.which("promtool"):
        done = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


# --- one alert of a real run, routed -------------------------------------------------------------

class Webhook:
    """An HTTP server on 127.0.0.1 that keeps what Alertmanager posts: (path, JSON body)."""

    def __init__(self):
        self.received: list[tuple[str, dict]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def webhook_config(webhook_url: str) -> dict:
    """The shipped configuration with every webhook at webhook_url/<receiver> and group_wait 1 s."""
    config = yaml.safe_load(AM_CONFIG.read_text())
    for receiver in config["receivers"]:
        (hook,) = receiver["webhook_configs"]
        assert hook["url"].endswith(".invalid/quax/" + receiver["name"])  # the shipped placeholder
        hook["url"] = f"{webhook_url}/{receiver['name']}"
    for route in [config["route"], *config["route"]["routes"]]:
        route["group_wait"] = "1s"
    return config


def test_the_test_config_changes_only_the_urls_and_the_waits():
    shipped, changed = yaml.safe_load(AM_CONFIG.read_text()), webhook_config("http://127.0.0.1:1")
    for config in (shipped, changed):
        for receiver in config["receivers"]:
            receiver["webhook_configs"][0].pop("url")
        for route in [config["route"], *config["route"]["routes"]]:
            route.pop("group_wait", None)
    assert changed == shipped


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def start_alertmanager(config_path: Path, port: int, tmp_path: Path) -> subprocess.Popen:
    """ops/alertmanager/run.sh on 127.0.0.1:port with config_path, data under tmp_path/var; ready."""
    env = {**os.environ, "ALERTMANAGER_PORT": str(port), "ALERTMANAGER_CONFIG": str(config_path),
           "QUAX_VAR_DIR": str(tmp_path / "var")}
    log_path = tmp_path / "alertmanager.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["bash", str(RUN_SH)], env=env, cwd=tmp_path, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def ready():
        if process.poll() is not None:
            raise AssertionError(f"run.sh exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        wait_until(ready, 30, f"Alertmanager on port {port}", interval_s=0.2)
    except BaseException:
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.broker
@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="Debian's prometheus package is not installed (ops/setup.sh)")
def test_a_stopped_daq_reaches_the_on_shift_webhook_and_a_silence_mutes_it(make_stack, tmp_path):
    config_path = tmp_path / "alertmanager.yml"
    webhook = Webhook()
    alertmanager = prometheus = None
    try:
        config_path.write_text(yaml.safe_dump(webhook_config(webhook.url), sort_keys=False))
        done = amtool("check-config", str(config_path))
        assert done.returncode == 0, done.stdout + done.stderr
        am_port = free_port()
        am_url = f"http://127.0.0.1:{am_port}"
        alertmanager = start_alertmanager(config_path, am_port, tmp_path)
        assert (tmp_path / "var" / "alertmanager" / str(am_port)).is_dir()  # run.sh's storage

        settings, _ = make_stack(workers=1, producer_metrics_port=free_port(), prometheus_port=free_port())
        prometheus = DrillPrometheus(settings, tmp_path / "prometheus", scrape_interval_s=1,
                                     alertmanager=f"127.0.0.1:{am_port}").start()
        wait_until(lambda: [a["url"] for a in get_json(f"{prometheus.url}/api/v1/alertmanagers")["data"]
                            ["activeAlertmanagers"]] == [f"{am_url}/api/v2/alerts"],
                   30, "Prometheus to send to the Alertmanager", interval_s=0.2)

        # A run of two files, then the DAQ stops: QuaxDaqStopped (critical) after 5 s (the drill's 42 s).
        directory = write_synthetic_run(tmp_path / "daq", 2, 3072 * 64, seed=17)
        report = asyncio.run(produce_directory(settings, directory, RUN, "max", progress=False))
        assert report.files_sent == 2
        wait_for_run(settings, RUN, 2)

        def notified():
            return [(path, body) for path, body in webhook.received
                    if body["groupLabels"].get("alertname") == "QuaxDaqStopped" and body["status"] == "firing"]

        (path, body), *_ = wait_until(notified, 60, "QuaxDaqStopped at the webhook", interval_s=0.5)
        assert path == "/on-shift" and body["receiver"] == "on-shift"
        assert body["groupLabels"] == {"alertname": "QuaxDaqStopped", "run": RUN}
        (alert,) = body["alerts"]
        assert alert["status"] == "firing"
        assert alert["labels"] == {"alertname": "QuaxDaqStopped", "severity": "critical", "run": RUN}
        assert f"No new file of run {RUN}" in alert["annotations"]["summary"]
        assert {p for p, _ in webhook.received} == {"/on-shift"}  # nothing else fired on a healthy stack

        # The run ended on purpose: a silence of its alerts (docs/deploy.md) mutes them.
        done = amtool("silence", "add", f"--alertmanager.url={am_url}", f"run={RUN}", "--duration=1h",
                      "--author=test", "--comment=run over")
        assert done.returncode == 0, done.stderr
        (silence_id,) = done.stdout.split()
        alerts = get_json(f"{am_url}/api/v2/alerts?filter=alertname%3D%22QuaxDaqStopped%22")
        assert [a["status"]["state"] for a in alerts] == ["suppressed"]
        assert alerts[0]["status"]["silencedBy"] == [silence_id]
    finally:
        if prometheus is not None:
            prometheus.stop()
        if alertmanager is not None:
            stop(alertmanager)
        webhook.stop()
