"""Metrics, Prometheus rules and the Grafana dashboard, checked against the real programs.

- promtool checks the Prometheus configuration (committed and rendered) and the rules, and runs the
  rules' unit tests (ops/prometheus/rules_test.yml);
- a short real run — real broker, two Faust workers, the producer in this process serving its
  /metrics — is scraped by a real Prometheus (Debian's): every PromQL expression of every Grafana
  panel must return data, the rejected-messages alert must fire for the malformed message we send,
  and the quax_* families the processes export must pass `promtool check metrics`, Prometheus's
  own lint of metric names, and our units/_total conventions.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from quax_faust.core import daq, synth, wire

from quax_faust.stream import metrics
from quax_faust.tools.launch import CampaignLive, free_port, wait_for_run
from quax_faust.ingest.producer import produce_directory
from quax_faust.ingest.sender import DaqProducer
from quax_faust.tools.prometheus import CONFIG, OPS_DIR, Prometheus, render_config
from quax_faust.settings import REPO_DIR, Settings
from tests.kafka_io import send_raw_async

DASHBOARD = REPO_DIR / "ops" / "grafana" / "dashboards" / "quax-stream.json"
DATASOURCE = REPO_DIR / "ops" / "grafana" / "provisioning" / "datasources" / "quax-prometheus.yml"
N_FILES, N_SAMPLES = 12, 65536

needs_prometheus = pytest.mark.skipif(shutil.which("promtool") is None,
                                      reason="Debian's prometheus package is not installed (ops/setup.sh)")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, cwd=OPS_DIR)


def panel_queries(run: str = "metrics") -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel of the provisioned dashboard, with the
    run variable set to ``run`` as Grafana would."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], substitute(target["expr"], run=run))
            for panel in dashboard["panels"] for target in panel["targets"]]


VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def substitute(text: str, **values: str) -> str:
    """Grafana's interpolation of $name / ${name} (only the variables given)."""
    return VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def run_variable_values(prometheus, variable: dict) -> list[str]:
    """What Grafana's Prometheus datasource makes of the run variable's query_result(...) query:
    each result series rendered as `{labels} value`, the regex's first group."""
    inner = re.fullmatch(r"query_result\((.*)\)", variable["query"]).group(1)
    pattern = re.compile(variable["regex"].strip("/"))
    values = []
    for r in prometheus.query(inner):
        text = "{" + ", ".join(f'{k}="{v}"' for k, v in r["metric"].items()) + "} " + r["value"][1]
        if match := pattern.search(text):
            values.append(match.group(1))
    return values


@needs_prometheus
def test_promtool_accepts_config_and_rules_and_the_rule_tests_pass(tmp_path):
    for args in (("check", "config", str(CONFIG)), ("check", "rules", "rules.yml"),
                 ("test", "rules", "rules_test.yml")):
        done = promtool(*args)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    # The copy run.sh writes for other ports is valid too, and points at the right targets.
    settings = Settings().replace(web_port_base=31000, workers=4, producer_metrics_port=31500,
                                  prometheus_port=31600)
    rendered = render_config(settings, scrape_interval_s=1)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(rendered))
    done = promtool("check", "config", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in rendered["scrape_configs"]}
    assert targets["quax-workers"] == [f"127.0.0.1:{31000 + k}" for k in range(4)]
    assert targets["quax-producer"] == ["127.0.0.1:31500"]
    assert targets["quax-campaign"] == [f"127.0.0.1:{settings.campaign_port}"]
    # Workers on their own hosts (web_hosts: one machine each) are scraped there.
    spread = render_config(settings.replace(web_hosts="127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5"))
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in spread["scrape_configs"]}
    assert targets["quax-workers"] == [f"127.0.0.{2 + k}:{31000 + k}" for k in range(4)]


def test_run_figures_come_from_the_worker_that_folds_and_only_for_the_newest_runs():
    """A worker that lost the spectra partition stops exporting its (stale) run gauges at the next
    scrape; a worker exports the RUNS_EXPORTED runs it folded last."""
    from prometheus_client import REGISTRY, generate_latest

    from quax_faust.search.detector_figures import FileFigures, SearchFigures

    folding = {"here": True}
    runs = [f"lru-{k}" for k in range(metrics.RUNS_EXPORTED + 2)]

    def exported(metric: str) -> set[str]:
        families = text_string_to_metric_families(generate_latest(REGISTRY).decode())
        return {s.labels["run"] for f in families for s in f.samples
                if s.name.startswith(metric) and s.labels.get("run", "").startswith("lru-")}

    try:
        for k, run in enumerate(runs):
            metrics.set_run_figures(run, folded_at_s=1e9 + k, folds_here=lambda: folding["here"],
                                    file=FileFigures(1.0, 1e-6), noise_ratio=1.0, steps=(0.01,),
                                    search=SearchFigures(1, 1, 0, 0))
        newest = set(runs[-metrics.RUNS_EXPORTED:])
        for name in ("quax_run_inband_power_volts_squared", "quax_run_candidates",
                     "quax_run_last_file_folded_timestamp_seconds", "quax_run_inband_power_step_ratio",
                     "quax_run_candidates_turned_persistent"):
            assert exported(name) == newest, name
        folding["here"] = False  # a rebalance moved the spectra partition away
        assert exported("quax_run_inband_power_volts_squared") == set()
        assert exported("quax_run_last_file_folded_timestamp_seconds") == set()
        assert exported("quax_run_inband_power_step_ratio") == newest  # a counter goes flat, not stale
    finally:
        folding["here"] = True
        for run in runs:
            for metric in metrics._RUN_METRICS:
                try:
                    metric.remove(run)
                except KeyError:
                    pass
            metrics._runs_exported.pop(run, None)


def test_dashboard_can_be_imported_into_any_grafana():
    """Grafana is not packaged for Debian (nor anywhere we may install it from), and it publishes no
    JSON schema of its classic dashboard model: this checks, strictly, what an import needs. The
    datasource is the variable DS_PROMETHEUS (type datasource), which is also the import input
    (__inputs), so the same file is provisioned (the variable picks the default Prometheus) and
    imported (Grafana asks for a Prometheus); the run is a variable; no datasource uid is wired in."""
    dashboard = json.loads(DASHBOARD.read_text())
    problems: list[str] = []

    def need(condition, what: str) -> None:
        if not condition:
            problems.append(what)

    for key, kind in (("__inputs", list), ("__requires", list), ("uid", str), ("title", str),
                      ("schemaVersion", int), ("version", int), ("panels", list), ("templating", dict),
                      ("time", dict), ("editable", bool), ("annotations", dict), ("tags", list)):
        need(isinstance(dashboard.get(key), kind), f"top-level {key!r} must be a {kind.__name__}")
    need(dashboard.get("id") is None, "an importable dashboard has id null (Grafana assigns one)")
    need(re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"]), "uid: 1-40 of [A-Za-z0-9_-]")
    need(dashboard["schemaVersion"] >= 36, "schemaVersion >= 36 (datasource references by uid)")
    need(set(dashboard["time"]) >= {"from", "to"}, "time needs from and to")

    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    need(list(inputs) == ["DS_PROMETHEUS"], f"one datasource input, DS_PROMETHEUS, not {list(inputs)}")
    need(inputs.get("DS_PROMETHEUS", {}).get("type") == "datasource"
         and inputs.get("DS_PROMETHEUS", {}).get("pluginId") == "prometheus"
         and all(inputs.get("DS_PROMETHEUS", {}).get(k) for k in ("label", "pluginName")),
         "DS_PROMETHEUS: type datasource, pluginId prometheus, a label and a plugin name")
    requires = {(r["type"], r["id"]) for r in dashboard["__requires"] if {"type", "id", "name", "version"} <= set(r)}
    need(len(requires) == len(dashboard["__requires"]), "each __requires entry has type, id, name, version")
    need({("grafana", "grafana"), ("datasource", "prometheus")} <= requires, "__requires grafana and prometheus")

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds_var, run_var = variables.get("DS_PROMETHEUS", {}), variables.get("run", {})
    need(ds_var.get("type") == "datasource" and ds_var.get("query") == "prometheus",
         "a datasource variable DS_PROMETHEUS over Prometheus datasources")
    need(not ds_var.get("current"), "the datasource variable names no datasource (Grafana picks the default)")
    reference = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    need(run_var.get("type") == "query" and run_var.get("datasource") == reference and run_var.get("query")
         and run_var.get("regex") and run_var.get("refresh") in (1, 2) and not run_var.get("current"),
         "a run variable: a query on ${DS_PROMETHEUS}, refreshed on load or time change, no run wired in")
    for v in variables.values():
        need({"name", "type", "hide", "skipUrlSync"} <= set(v),
             f"variable {v.get('name')}: name, type, hide, skipUrlSync")

    # Every datasource reference anywhere is the variable: no uid of a particular Grafana.
    def references(node, where: str):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource":
                    yield where, value
                else:
                    yield from references(value, f"{where}.{key}")
        elif isinstance(node, list):
            for k, value in enumerate(node):
                yield from references(value, f"{where}[{k}]")

    for where, ref in references(dashboard, "dashboard"):
        need(ref == reference, f"{where}: datasource {ref!r}, expected {reference}")

    known = set(variables) | {"__rate_interval", "__interval", "__range"}
    panel_types = {r[1] for r in requires if r[0] == "panel"}
    ids, cells = set(), {}
    for panel in dashboard["panels"]:
        title = panel.get("title", "")
        need(isinstance(panel.get("id"), int) and panel["id"] not in ids, f"{title!r}: a unique integer id")
        ids.add(panel.get("id"))
        need(panel.get("type") in panel_types, f"{title!r}: type {panel.get('type')!r} not in __requires")
        grid = panel.get("gridPos", {})
        need(all(isinstance(grid.get(k), int) for k in "xywh") and grid["x"] >= 0 and grid["w"] > 0
             and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, f"{title!r}: gridPos inside 24 columns")
        for x in range(grid.get("x", 0), grid.get("x", 0) + grid.get("w", 0)):
            for y in range(grid.get("y", 0), grid.get("y", 0) + grid.get("h", 0)):
                need((x, y) not in cells, f"{title!r} overlaps {cells.get((x, y))!r}")
                cells.setdefault((x, y), title)
        need(isinstance(panel.get("fieldConfig", {}).get("defaults"), dict), f"{title!r}: fieldConfig.defaults")
        targets = panel.get("targets") or []
        need(targets, f"{title!r}: no query")
        need(len({t.get("refId") for t in targets}) == len(targets), f"{title!r}: refIds not unique")
        for text in [title] + [t.get("expr", "") for t in targets]:
            unknown = {m.group(1) or m.group(2) for m in VARIABLE.finditer(text)} - known
            need(not unknown, f"{title!r}: unknown variables {unknown}")
        for target in targets:
            need(target.get("expr", "").strip(), f"{title!r}: empty query")
            need("or vector(" not in target.get("expr", ""), f"{title!r}: `or vector(...)` hides a missing metric")
    need(any("$run" in t["expr"] for p in dashboard["panels"] for t in p["targets"]), "no panel uses $run")
    assert not problems, "the dashboard would not import cleanly:\n  " + "\n  ".join(problems)

    # The provisioned datasource is a default Prometheus, which the variable then picks.
    source = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]
    assert source["type"] == "prometheus" and source["isDefault"] is True


@pytest.fixture
def daq_dir(tmp_path):
    """12 small synthetic pairs, plus an i file without its q partner (skipped by the producer)."""
    directory = tmp_path / "daq"
    for k in range(N_FILES):
        daq.write_pair(directory, k, synth.synth_file(k, N_SAMPLES, synth.SynthModel(), seed=11))
    (directory / f"duck_i_{N_FILES:05d}.dat").write_bytes(b"\0" * 4096)
    return directory


def poll(what: str, probe, timeout_s: float = 60.0, every_s: float = 0.5):
    """Call probe() until it returns something truthy; fail with `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def quax_exposition(text: str) -> str:
    """Only the quax_* families of a /metrics text (Faust's faust_* use ms and are not ours)."""
    keep, out = False, []
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            keep = line.split()[2].startswith("quax_")
        elif not line.startswith("#"):
            keep = line.startswith("quax_")
        if keep:
            out.append(line)
    return "\n".join(out) + "\n"


def check_conventions(text: str, source: str) -> list[str]:
    """Our naming rules, beyond promtool's lint: units in the name, base units, _total counters."""
    problems = []
    families = [f for f in text_string_to_metric_families(text) if f.name.startswith("quax_")]
    assert families, f"{source} exports no quax_* metrics"
    for family in families:
        name = family.name  # the parser strips _total from counters
        if not re.fullmatch(r"quax_[a-z0-9_]+", name):
            problems.append(f"{source}: {name} is not lower snake case")
        if not family.documentation.strip():
            problems.append(f"{source}: {name} has no help text")
        if re.search(r"_(ms|milliseconds|us|microseconds|minutes|hours|kilobytes|megabytes|mb|kb)(_|$)", name):
            problems.append(f"{source}: {name} is not in a base unit (seconds, bytes)")
        if family.type == "histogram" and not name.endswith(("_seconds", "_bytes", "_ratio")):
            problems.append(f"{source}: histogram {name} does not name its unit")
        if family.type == "counter" and f"# TYPE {name}_total counter" not in text:
            problems.append(f"{source}: counter {name} does not end in _total")
        if family.type == "gauge" and name.endswith("_total"):
            problems.append(f"{source}: gauge {name} ends in _total")
    return problems


@needs_prometheus
@pytest.mark.broker
def test_every_dashboard_panel_returns_data_from_a_real_prometheus(make_stack, daq_dir, tmp_path):
    settings, workers = make_stack(workers=2, slices_per_message=8, producer_metrics_port=free_port(),
                                   prometheus_port=free_port(), consumer_lag_interval_s=0.5)
    producer_http = metrics.serve_producer_metrics(settings.producer_metrics_port, settings.web_host)
    campaign = CampaignLive(settings, tmp_path / "campaign-live.log").start()
    prometheus = Prometheus(settings, tmp_path / "prometheus", scrape_interval_s=1).start()
    try:
        # Every target (2 workers, the producer here, the live campaign, Prometheus itself) scraped
        # before data flows, so counters have a sample at their starting value and rate() sees the increase.
        poll("Prometheus to scrape every target",
             lambda: (lambda up: len(up) == settings.workers + 3 and all(up.values()))(prometheus.targets_up()))

        # The producer's registry lives in this process: earlier tests may have counted skips too.
        skipped_before = metrics.PRODUCER_SKIPPED.labels(reason="missing_partner")._value.get()
        report = asyncio.run(produce_directory(settings, daq_dir, "metrics", "realtime", progress=False))
        assert report.files_sent == N_FILES and len(report.skipped) == 1

        async def duplicates_and_garbage():
            async with DaqProducer(settings) as producer:  # file 3 again: all its slices duplicates
                await producer.send_file("metrics", 3, *daq.read_channels(daq.pair_paths(daq_dir, 3)))
            await send_raw_async(settings.broker, settings.slices_topic, wire.file_key("metrics", 0),
                                 b"QXSB but not a slice message")

        asyncio.run(duplicates_and_garbage())
        wait_for_run(settings, "metrics", N_FILES)
        poll("Prometheus to see every file folded and the rejected message",
             lambda: (prometheus.value("sum(quax_files_folded_total)") or 0) >= N_FILES
             and (prometheus.value("sum(quax_rejected_messages_total)") or 0) >= 1)

        # The Grafana dashboard: no panel may query a metric or rule that does not exist.
        queries = panel_queries()
        assert len(queries) >= 15
        missing = set(queries)
        deadline = time.monotonic() + 45
        while missing and time.monotonic() < deadline:
            missing = {(title, expr) for title, expr in missing if not prometheus.query(expr)}
            time.sleep(1)
        assert not missing, "panels without data:\n" + "\n".join(f"  {t}: {e}" for t, e in sorted(missing))
        run_variable = next(v for v in json.loads(DASHBOARD.read_text())["templating"]["list"] if v["name"] == "run")
        assert "metrics" in run_variable_values(prometheus, run_variable)

        # The same figures the panels show agree with what the run did.
        assert prometheus.value("sum(quax_producer_files_skipped_total{reason=\"missing_partner\"})") \
            == skipped_before + 1
        assert prometheus.value("sum(quax_duplicate_slices_total)") >= N_SAMPLES // settings.slice_len
        assert prometheus.value("sum(quax_slices_total)") == N_FILES * (N_SAMPLES // settings.slice_len)
        assert prometheus.value("sum(quax_data_seconds_total)") == pytest.approx(N_FILES * N_SAMPLES / 2e6)
        lags = prometheus.query("quax_consumer_lag_messages")
        assert {r["metric"]["topic"] for r in lags} == {settings.slices_topic, settings.spectra_topic}
        assert len([r for r in lags if r["metric"]["topic"] == settings.slices_topic]) == settings.partitions

        alert = poll("the QuaxRejectedMessagesRising alert to fire",
                     lambda: [a for a in prometheus.alerts() if a["labels"]["alertname"] == "QuaxRejectedMessagesRising"
                              and a["state"] == "firing"], timeout_s=30)
        assert alert[0]["labels"]["reason"] == "truncated"  # 28 bytes, shorter than any header

        # Metric names: Prometheus's own lint, and our conventions, on what the processes export.
        expositions = {"worker 0": get_text(settings.worker_url(0) + "/metrics"),
                       "producer": get_text(f"http://{settings.web_host}:{settings.producer_metrics_port}/metrics"),
                       "live campaign": get_text(settings.campaign_url + "/metrics")}
        problems = []
        for source, text in expositions.items():
            lint = promtool("check", "metrics", stdin=quax_exposition(text))
            if lint.returncode != 0 or lint.stdout.strip() or lint.stderr.strip():
                problems.append(f"{source}: promtool check metrics: {lint.stdout}{lint.stderr}")
            problems += check_conventions(text, source)
        assert not problems, "\n".join(problems)
        assert "faust_messages_received_total" in expositions["worker 0"], "Faust's sensor is exported"
    finally:
        prometheus.stop()
        campaign.stop()
        if producer_http is not None:
            producer_http.shutdown()
