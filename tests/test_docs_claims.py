"""What the docs state as fact about the code and the configuration, read from the docs themselves:
the settings tables, the `quax` command summary, the metric names, the rejection reasons, the broker's
limits. A doc that drifts from the code fails here (no broker)."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram

from quax_faust.tools import cli

from quax_faust.stream import metrics

from quax_faust.ingest import producer
from quax_faust.settings import REPO_DIR, Settings

DOCS = REPO_DIR / "docs"


def section(path: Path, start: str, end: str | None = None) -> str:
    text = path.read_text()
    text = text[text.index(start):]
    return text[: text.index(end)] if end else text


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in text, as stripped cells."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-:| ]+\|", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [row for row in rows if not row[0] in ("setting", "setting (env `QUAX_…`)")]


def check_defaults(rows: list[list[str]]) -> int:
    defaults, checked = Settings(), 0
    for row in rows:
        names = re.findall(r"`(\w+)`", row[0])
        values = [v.strip() for v in row[1].split(",")]
        assert len(names) == len(values), row
        for name, documented in zip(names, values):
            value = getattr(defaults, name)
            if isinstance(value, Path):
                assert value == REPO_DIR / documented.rstrip("/"), name
            elif isinstance(value, (int, float)):
                assert value == float(documented), name
            else:
                assert str(value) == documented, name
            checked += 1
    return checked


def test_usage_settings_table_gives_the_real_defaults():
    assert check_defaults(table_rows(section(DOCS / "usage.md", "## Settings", "## Web views"))) == 9
    assert Settings().slices_per_message * Settings().slice_len * 8 == 3 << 20  # "(3 MiB)"


def test_dashboard_settings_table_gives_the_real_defaults():
    assert check_defaults(table_rows(section(DOCS / "dashboard.md", "| setting", "The baseline"))) == 7


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (choices,) = [a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return choices


def test_every_command_and_flag_in_the_usage_summary_exists():
    block = section(DOCS / "usage.md", "## The `quax` command", "- `synth`")
    lines = [line for line in block.splitlines() if line.startswith("quax ")]
    commands = subcommands()
    continued = None
    for line in block.splitlines():
        if line.startswith("quax "):
            continued = commands[line.split()[1]]
        if continued is None or not line.strip() or line.startswith("```"):
            continue
        for flag in re.findall(r"--[a-z][a-z-]*", line.split("#")[0]):
            assert flag in continued._option_string_actions, f"{line.split()[:2]}: {flag}"
    # every command of quax itself is listed, once (reprocess, verify, reprocess-campaign: docs/spark.md)
    assert sorted(line.split()[1] for line in lines) == sorted(set(commands) - {"reprocess", "verify",
                                                                                  "reprocess-campaign"})


def test_follow_defaults_are_the_documented_ones():
    args = cli.build_parser().parse_args(["produce", "--source", "d", "--run", "r", "--follow"])
    assert args.settle_s == 1.0  # "stable for --settle-s (1 s)"
    defaults = inspect.signature(producer.produce_directory).parameters
    assert defaults["partner_timeout_s"].default == 120.0  # "a file whose partner has not come after 2 min"


def registered_metric_names() -> set[str]:
    return {obj._name for obj in vars(metrics).values() if isinstance(obj, (Counter, Gauge, Histogram))}


def test_metrics_doc_lists_exactly_the_metrics_the_processes_export():
    text = section(DOCS / "metrics.md", "## The metrics", "## Prometheus")
    documented = {re.sub(r"_total$", "", name) for name in re.findall(r"`(quax_[a-z0-9_]+)(?![a-z0-9_/])", text)}
    registered = registered_metric_names()
    undocumented, unknown = sorted(registered - documented), sorted(documented - registered)
    assert not undocumented, f"metrics.py exports {undocumented}: give each a row in docs/metrics.md"
    assert not unknown, f"docs/metrics.md lists {unknown}, which metrics.py does not define"
    for row in table_rows(text):  # the type column says what the code makes of each
        for name in re.findall(r"`(quax_[a-z0-9_]+)", row[0]):
            obj = next(o for o in vars(metrics).values() if getattr(o, "_name", None) == re.sub(r"_total$", "", name))
            assert row[1] == type(obj).__name__.lower(), name
            assert name.endswith("_total") == (row[1] == "counter"), name


def raised_reasons(path: Path, error: str) -> set[str]:
    return set(re.findall(error + r'\("([a-z_]+)"', path.read_text()))


def test_wire_format_names_every_rejection_reason_and_no_other():
    text = (DOCS / "wire-format.md").read_text()
    documented = set(re.findall(r"`([a-z_]+)`", section(DOCS / "wire-format.md", "Rejection reasons", "## `spectra`")))
    documented |= set(re.findall(r"`([a-z_]+)`", section(DOCS / "wire-format.md", "Rejections of", "## `run-metadata`")))
    metadata_doc = section(DOCS / "wire-format.md", "Rejections of a metadata record", "## Compatibility")
    assert set(re.findall(r"`([a-z_]+)`", metadata_doc)) - {"record_metadata"} == (
        raised_reasons(REPO_DIR / "quax_faust" / "core" / "run_meta.py", "MetadataError") | {"key_mismatch"})
    code = REPO_DIR / "quax_faust"
    raised = (raised_reasons(code / "core" / "wire.py", "WireError")
              | set().union(*(raised_reasons(path, "WireError") for path in (code / "stream").glob("*.py")))
              | raised_reasons(code / "core" / "accumulators.py", "StateError"))
    # file_complete cannot reach the dead-letter topic: fold_slice_batch counts a complete file's
    # slices as duplicates before adding anything.
    assert documented == raised - {"file_complete"}
    assert "`file_complete`" not in text


def test_broker_limits_and_version_are_the_documented_ones():
    usage = " ".join((DOCS / "usage.md").read_text().split())
    properties = (REPO_DIR / "ops" / "kafka" / "server.properties.in").read_text()
    script = (REPO_DIR / "ops" / "kafka" / "broker.sh").read_text()
    assert "Apache Kafka 4.1.1" in usage
    assert "<kafka.version>4.1.1</kafka.version>" in (REPO_DIR / "ops" / "kafka" / "pom.xml").read_text()
    assert "Records up to 16 MiB" in usage and "message.max.bytes=16777216" in properties
    assert "7 days or 500 GiB per partition" in usage
    assert "${KAFKA_RETENTION_HOURS:-168}" in script and "${KAFKA_RETENTION_BYTES:-536870912000}" in script
    assert 536870912000 == 500 << 30
    assert "57.6 GB" in usage and 2e6 * 8 * 3600 == pytest.approx(57.6e9)


def test_demo_knobs_are_the_documented_ones():
    usage = " ".join(section(DOCS / "usage.md", "## Setup and the demo", "## The `quax` command").split())
    script = (REPO_DIR / "ops" / "demo" / "produce.sh").read_text()
    knobs = dict(re.findall(r"\$\{(QUAX_DEMO_[A-Z_]+):?-([^}]*)\}", script))  # :- or - (empty: none)
    knobs["QUAX_DEMO_RUN"] = None  # a UTC time stamp
    assert set(re.findall(r"QUAX_DEMO_[A-Z_]+", usage)) == set(knobs)
    for name, default in knobs.items():
        if default is not None:
            assert f"`{name}` ({default.replace('$repo/', '')}" in usage, name
    assert "--files \"$per_step\"" in script and "(2^23 samples each)" in script
    assert cli.build_parser().parse_args(["synth", "--out", "d", "--files", "1"]).samples == 2 ** 23


def test_metrics_doc_names_the_recording_rules_alerts_and_scrape_interval_of_the_config():
    import yaml

    text = section(DOCS / "metrics.md", "## Prometheus", "## Grafana")
    rules = yaml.safe_load((REPO_DIR / "ops" / "prometheus" / "rules.yml").read_text())
    records = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    documented = {name.replace("…", "quax:file_latency_seconds")  # `…:p99_rate1m` after the p50 one
                  for name in re.findall(r"`(quax:[a-z0-9_:…]+)`", text)}
    assert documented == records
    assert set(re.findall(r"`(Quax[A-Za-z]+)`", text)) == alerts
    config = yaml.safe_load((REPO_DIR / "ops" / "prometheus" / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == "5s" and "every 5 s" in text
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs["quax-workers"] == [f"127.0.0.1:{6066 + k}" for k in range(4)]  # "the four workers"
    assert jobs["quax-producer"] == ["127.0.0.1:9464"]


def test_make_demo_prints_where_to_look():
    readme = (REPO_DIR / "README.md").read_text()
    assert "`make demo` prints where to look" in readme
    banner = (REPO_DIR / "ops" / "demo.sh").read_text()
    for url in ("http://127.0.0.1:$port_base/quax/runs/", "http://127.0.0.1:$port_base/metrics",
                "http://127.0.0.1:${QUAX_DASHBOARD_PORT:-5006}/dashboard"):
        assert url in banner
    assert "ops/demo.sh" in (REPO_DIR / "Makefile").read_text()


def test_quax_topics_creates_the_topics_the_usage_summary_names():
    from quax_faust.stream.topics import topic_plan

    summary = section(DOCS / "usage.md", "quax topics", "\n")
    s = Settings()
    assert "create slices / spectra / slices.rejected / candidates / run-metadata" in summary
    assert {name: spec.partitions for name, spec in topic_plan(s).items()} == {
        s.slices_topic: s.partitions, s.spectra_topic: 1, "slices.rejected": 1, s.candidates_topic: 1,
        s.metadata_topic: 1}
    assert (s.slices_topic, s.spectra_topic, s.candidates_topic) == ("slices", "spectra", "candidates")


def test_topics_and_retention_are_the_documented_ones():
    from quax_faust.stream.topics import topic_plan

    text = section(DOCS / "usage.md", "## Topics and retention", "## Run metadata")
    plan, kept = topic_plan(Settings()), {}
    for row in table_rows(text)[1:]:  # after the header
        kept[row[0].strip("`")] = row[2]
        assert row[1].startswith(f"{plan[row[0].strip('`')].partitions}, "), row
    assert set(kept) == set(plan)
    assert kept["slices"] == "`slices_retention_s` (7 days)" and Settings().slices_retention_s == 7 * 86400
    assert plan["slices"].configs["retention.ms"] == str(7 * 86400 * 1000)
    for name in ("spectra", "candidates"):
        assert kept[name] == "forever"
        assert plan[name].configs["retention.ms"] == plan[name].configs["retention.bytes"] == "-1"
    assert kept["slices.rejected"] == "30 days"
    assert plan["slices.rejected"].configs["retention.ms"] == str(30 * 86400 * 1000)
    assert "**Only `run-metadata` is compacted** (`cleanup.policy=delete` on the other four)" in text
    assert kept["run-metadata"] == "forever, compacted"
    assert {name: spec.configs["cleanup.policy"] for name, spec in plan.items()} == {
        **{name: "delete" for name in plan}, "run-metadata": "compact"}
    assert plan["run-metadata"].configs["retention.ms"] == "-1"
    flat = " ".join(text.split())
    assert "16 MB/s" in flat and "9.7 TB for the default 7 days" in flat
    assert 2 * 4 * Settings().sample_rate_hz * 7 * 86400 == pytest.approx(9.7e12, rel=0.01)
