"""Checks of the chain itself, from what the broker and the workers said (probes.py): the broker and
its version, our topics, the workers and their partitions, the consumer lag, settings that disagree.
Pure: facts in, report.Check lines out."""

from __future__ import annotations

from typing import Any

from quax_faust.settings import Settings
from quax_faust.stream.topics import DAY_S, daq_bytes_per_s, topic_plan
from quax_faust.stream.views import AGREED_SETTINGS
from quax_faust.tools.doctor.probes import HttpAnswer, KafkaFacts
from quax_faust.tools.doctor.report import FAIL, OK, WARN, Check, TimedOut

PRODUCE, FETCH = 0, 1  # Kafka API keys
TROUBLE = "docs/troubleshooting.md"


def check_broker(settings: Settings, facts: KafkaFacts | Exception) -> list[Check]:
    if isinstance(facts, TimedOut):
        return [Check("broker", FAIL, str(facts),
                      f"something at {settings.broker} takes the connection but does not answer as Kafka: the "
                      "wrong port, a firewall dropping packets, or a TLS listener (security_protocol) "
                      f"({TROUBLE}#broker-unreachable)")]
    if isinstance(facts, Exception):
        return [Check("broker", FAIL, str(facts),
                      f"start the broker (`ops/kafka/broker.sh start PORT`, `make demo`) or point --broker / "
                      f"QUAX_BROKER at it; with TLS or SASL check security_protocol and the credentials "
                      f"({TROUBLE}#broker-unreachable)")]
    nodes = ", ".join(f"{b['node_id']} at {b['host']}:{b['port']}" for b in facts.brokers)
    produce, fetch = facts.api_versions.get(PRODUCE, (0, 0)), facts.api_versions.get(FETCH, (0, 0))
    protocol = f"Produce v{produce[0]}-{produce[1]}, Fetch v{fetch[0]}-{fetch[1]}"
    if produce[1] < 3:  # record headers (the dead letters' reason) came with Produce v3, Kafka 0.11
        return [Check("broker", FAIL, f"{settings.broker}: Kafka older than 0.11 ({protocol})",
                      "quax needs Kafka >= 2.1 (ops/kafka pins 4.1.1)")]
    version = "Kafka >= 4.0" if fetch[0] >= 4 else "Kafka 2.1-3.x"  # 4.0 dropped Fetch v0-v3 (KIP-896)
    return [Check("broker", OK, f"{settings.broker}: {len(facts.brokers)} broker(s) ({nodes}; controller "
                                f"{facts.controller_id}), {version} ({protocol})")]


def check_topics(settings: Settings, facts: KafkaFacts) -> list[Check]:
    """One line per planned topic: exists, partitions, replicas, configs as planned."""
    checks = []
    for name, spec in topic_plan(settings).items():
        label = f"topic {name}"
        found = facts.topics.get(name)
        if found is None:
            checks.append(Check(label, FAIL, "missing",
                                "`quax topics` creates it (workers and the producer do too as they start)"))
            continue
        if found["partitions"] != spec.partitions:
            setting = " or set QUAX_PARTITIONS to it on every process" if name == settings.slices_topic else ""
            checks.append(Check(label, FAIL, f"{found['partitions']} partitions, expected {spec.partitions}",
                                f"delete the topic (its records are lost), then `quax topics`{setting}"))
            continue
        configs = found.get("configs", {})
        wrong = {k: (configs.get(k), v) for k, v in spec.configs.items() if configs.get(k) != v}
        problems = [f"{k}={have} (plan {want})" for k, (have, want) in wrong.items()]
        if found["replicas"] < settings.replication_factor:
            problems.append(f"{found['replicas']} replica(s), replication_factor is {settings.replication_factor}")
        summary = f"{found['partitions']} partition(s), {found['replicas']} replica(s)"
        if name == settings.slices_topic:
            summary += "; " + _slices_retention(settings, configs, found["partitions"], problems)
        if problems:
            checks.append(Check(label, WARN, f"{summary}; " + "; ".join(problems),
                                "`quax topics` sets the plan's configs (docs/usage.md, Topics and retention); "
                                "replicas: kafka-reassign-partitions"))
        else:
            checks.append(Check(label, OK, summary + ("; configs as planned" if name != settings.slices_topic else "")))
    return checks


def _slices_retention(settings: Settings, configs: dict, partitions: int, problems: list[str]) -> str:
    rate = daq_bytes_per_s(settings.sample_rate_hz)
    kept_ms, cap = int(configs.get("retention.ms") or -1), int(configs.get("retention.bytes") or -1)
    kept = "kept forever" if kept_ms < 0 else f"kept {_span(kept_ms / 1000)}"
    if cap >= 0 and (kept_ms < 0 or cap * partitions < rate * kept_ms / 1000):
        problems.append(f"the byte cap retention.bytes={cap} per partition keeps only "
                        f"{_span(cap * partitions / rate)} of data")
    return kept


def _span(seconds: float) -> str:
    return (f"{seconds / DAY_S:.3g} days" if seconds >= 2 * DAY_S else f"{seconds / 3600:.3g} h" if seconds >= 3600
            else f"{seconds / 60:.3g} min" if seconds >= 60 else f"{seconds:.3g} s")


def _sources(assigned: list[str], settings: Settings) -> list[str]:
    return [tp for tp in assigned if tp.rsplit("/", 1)[0] in (settings.slices_topic, settings.spectra_topic)]


def check_workers(settings: Settings, answers: dict[int, HttpAnswer | Exception],
                  facts: KafkaFacts | None) -> list[Check]:
    """A line per worker (answers?), then one for the partitions of slices and spectra (each assigned
    to a worker that answers?) and one for the consumer group."""
    checks, assigned = [], set()
    for k, answer in sorted(answers.items()):
        label, url = f"worker {k}", settings.worker_url(k)
        doc = None if isinstance(answer, Exception) else answer.json()
        if isinstance(answer, Exception) or answer.error and answer.status is None:
            said = str(answer) if isinstance(answer, Exception) else f"{url} does not answer ({answer.error})"
            checks.append(Check(label, FAIL, said,
                                f"start it: `quax worker --index {k}`; if it exited, the end of its log says why "
                                f"({TROUBLE}#worker-down)"))
        elif not isinstance(doc, dict) or "assigned" not in doc:
            checks.append(Check(label, FAIL, f"{url} answers, but not as a quax worker (HTTP {answer.status})",
                                "see the port line below: another program holds the port"))
        else:
            mine = _sources(doc["assigned"], settings)
            assigned.update(mine)
            checks.append(Check(label, OK, f"{url} up, assigned {', '.join(mine) or 'nothing'}; "
                                           f"{doc.get('slices_total') or 0:.0f} slices counted"))
    if facts is not None:
        want = [f"{settings.slices_topic}/{p}" for p in range(facts.topics.get(settings.slices_topic, {}).get("partitions", 0))]
        want += [f"{settings.spectra_topic}/{p}" for p in range(facts.topics.get(settings.spectra_topic, {}).get("partitions", 0))]
        missing = [tp for tp in want if tp not in assigned]
        if missing:
            checks.append(Check("partitions", FAIL, f"{', '.join(missing)} assigned to no worker that answers: "
                                                    "their messages wait",
                                "start the missing workers; a worker killed -9 keeps its partitions until "
                                f"session_timeout_s ({settings.session_timeout_s:g} s) has passed, then the "
                                f"others take them over ({TROUBLE}#worker-down)"))
        elif want:
            checks.append(Check("partitions", OK, f"all {len(want)} partitions of {settings.slices_topic} and "
                                                  f"{settings.spectra_topic} assigned"))
        checks.append(_group(settings, facts, sum(1 for c in checks if c.name.startswith("worker") and c.status == OK)))
    return checks


def _group(settings: Settings, facts: KafkaFacts, answering: int) -> Check:
    group = facts.group
    if facts.group_error:
        return Check("consumer group", WARN, f"{settings.app_id}: the broker could not describe it ({facts.group_error})",
                     "the group's coordinator is still loading (a broker just started): run `quax doctor` again in "
                     "a minute; the lag below counts from the start of the topics meanwhile")
    if group is None:
        return Check("consumer group", FAIL, f"{settings.app_id}: unknown to the broker (no worker ever joined)",
                     "start the workers with this app_id (QUAX_APP_ID)")
    text = f"{settings.app_id}: {group['state']}, {group['members']} member(s), {answering} worker(s) answer"
    if group["state"] != "Stable":
        return Check("consumer group", WARN, text, "a rebalance is under way: run `quax doctor` again in a minute; "
                                                   f"if it stays, see {TROUBLE}#worker-down")
    if group["members"] != answering:
        return Check("consumer group", WARN, text, "a member does not answer on the web ports these settings name: "
                                                   "a worker on another machine or with another web_port_base, or "
                                                   "one killed within session_timeout_s")
    return Check("consumer group", OK, text)


def check_lag(settings: Settings, facts: KafkaFacts) -> list[Check]:
    """Messages behind the end of slices and spectra, committed by the group (what is processed)."""
    lags = {tp: end - max(facts.starts.get(tp, 0), facts.committed.get(tp, 0)) for tp, end in facts.ends.items()}
    slices = sum(lag for (topic, _), lag in lags.items() if topic == settings.slices_topic)
    spectra = sum(lag for (topic, _), lag in lags.items() if topic == settings.spectra_topic)
    behind_s = slices * settings.slices_per_message * settings.slice_duration_s
    worst = sorted(((lag, f"{t}/{p}") for (t, p), lag in lags.items() if lag), reverse=True)[:4]
    text = (f"{slices} messages of {settings.slices_topic} ({behind_s:.1f} s of data) and {spectra} of "
            f"{settings.spectra_topic} not processed" + (f"; most: {', '.join(f'{tp} {lag}' for lag, tp in worst)}"
                                                         if worst else ""))
    if behind_s > settings.dashboard_behind_s or spectra > 1:
        return [Check("consumer lag", WARN, text,
                      "if it grows between two runs of `quax doctor` the workers are behind the producer: "
                      f"check the workers' CPU and quax_consumer_lag_messages ({TROUBLE}#lag-growing)")]
    return [Check("consumer lag", OK, text)]


def check_settings(settings: Settings, answers: dict[int, HttpAnswer | Exception]) -> list[Check]:
    """The settings every process must share, as this command has them and as each worker reports."""
    reports: dict[str, dict[str, Any]] = {"this command": {n: getattr(settings, n) for n in AGREED_SETTINGS}}
    silent = []
    for k, answer in sorted(answers.items()):
        doc = None if isinstance(answer, Exception) else answer.json()
        if isinstance(doc, dict) and "assigned" in doc:
            if isinstance(doc.get("settings"), dict):
                reports[f"worker {k}"] = doc["settings"]
            else:
                silent.append(k)
                reports[f"worker {k}"] = {"app_id": doc.get("consumer_group"), "slices_topic": doc.get("slices_topic"),
                                          "spectra_topic": doc.get("spectra_topic")}
    checks = []
    for name in AGREED_SETTINGS:
        holders: dict[Any, list[str]] = {}  # by value: 600 and 600.0 agree
        for who, values in reports.items():
            if name in values:
                holders.setdefault(values[name], []).append(who)
        if len(holders) > 1:
            said = "; ".join(f"{value!r} in {', '.join(who)}" for value, who in holders.items())
            status = WARN if name == "slices_retention_s" else FAIL  # each process sets the topic to its own
            checks.append(Check(f"setting {name}", status, f"disagrees: {said}",
                                f"give every process the same QUAX_{name.upper()} and restart the odd one out "
                                f"(`quax settings` prints what a command line gets; {TROUBLE}#settings-disagree)"))
    if silent:
        checks.append(Check("settings", WARN, f"worker(s) {', '.join(map(str, silent))} do not report their settings",
                            "an older quax: restart them with this version to have them compared"))
    if settings.partitions % max(1, settings.workers):
        checks.append(Check("settings", WARN, f"partitions {settings.partitions} is not a multiple of workers "
                                              f"{settings.workers}: the workers get unequal shares",
                            "set QUAX_PARTITIONS (a new topic) or QUAX_WORKERS"))
    if not checks:
        where = f"the same in {', '.join(reports)}" if len(reports) > 1 else "no worker answered to compare"
        checks.append(Check("settings", OK, f"app {settings.app_id}, {settings.partitions} partitions, slice "
                                            f"{settings.slice_len} at {settings.sample_rate_hz / 1e6:g} MS/s: {where}"))
    return checks

