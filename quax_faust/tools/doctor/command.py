"""``quax doctor``: checks the chain and the machine it runs on, one line each, ok / warn / fail with
the fix (docs/usage.md, docs/troubleshooting.md). Every probe runs at once in its own thread with
the same deadline (``--timeout``), so the command never hangs: a probe that does not finish is a
fail line naming it and the step it was stuck in."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from quax_faust.settings import Settings
from quax_faust.tools.doctor import campaign_checks, chain_checks, machine_checks, probes
from quax_faust.tools.doctor.report import (FAIL, SKIP, Check, Failed, TimedOut, exit_code, format_json,
                                            format_text, start_probe)

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_DAQ_MAX_AGE_S = 60.0


def _collect(result):
    try:
        return result()
    except (TimedOut, Failed) as exc:
        return exc


def run_checks(settings: Settings, *, daq_dir: Path | None = None, daq_max_age_s: float = DEFAULT_DAQ_MAX_AGE_S,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Check]:
    """Every check, in the order of the data path: broker, topics, workers, lag, the live campaign
    service, settings, clocks, ports, the DAQ directory, disks."""
    def get(url):
        def probe(step):
            step(f"GET {url}")
            return probes.http_get(url, timeout_s)
        return probe

    kafka = start_probe("broker", lambda step: probes.kafka_facts(settings, step, timeout_s), timeout_s)
    workers = {k: start_probe(f"worker {k}", get(settings.worker_url(k) + "/quax/health/"), timeout_s)
               for k in range(settings.workers)}
    campaign = start_probe("campaign service", get(settings.campaign_url + "/campaign/"), timeout_s)
    producer_url = f"http://{settings.web_host}:{settings.producer_metrics_port}/metrics"
    producer = start_probe("producer", get(producer_url), timeout_s) if settings.producer_metrics_port else None
    ports = [start_probe(f"port {port} ({role})",
                         lambda step, port=port, role=role: probes.port_facts(settings, port, role, timeout_s, step),
                         timeout_s)
             for port, role in probes.configured_ports(settings)]
    daq = start_probe("daq", lambda step: probes.daq_facts(daq_dir, settings.var_dir), timeout_s) if daq_dir else None
    var_disk = start_probe("disk", lambda step: probes.disk_facts(settings.var_dir), timeout_s)

    facts = _collect(kafka)
    answers = {k: _collect(result) for k, result in workers.items()}
    checks = chain_checks.check_broker(settings, facts)
    kafka_ok = isinstance(facts, probes.KafkaFacts)
    if kafka_ok:
        checks += chain_checks.check_topics(settings, facts)
    else:
        checks.append(Check("topics", SKIP, "not checked: no answer from the broker"))
    checks += chain_checks.check_workers(settings, answers, facts if kafka_ok else None)
    if kafka_ok:
        checks += chain_checks.check_lag(settings, facts)
    checks += campaign_checks.check_campaign(settings, _collect(campaign), facts if kafka_ok else None, time.time())
    checks += chain_checks.check_settings(settings, answers)
    clocks = {f"worker {k}": a for k, a in answers.items() if isinstance(a, probes.HttpAnswer) and a.error is None}
    producer_answer = _collect(producer) if producer else None
    if isinstance(producer_answer, probes.HttpAnswer) and producer_answer.error is None:
        clocks["producer"] = producer_answer
    checks += machine_checks.check_clock(settings, clocks)
    checks += machine_checks.check_ports(settings, [_collect(result) for result in ports])

    daq_facts = _collect(daq) if daq else None
    if isinstance(daq_facts, Exception):
        checks.append(Check("daq", FAIL, str(daq_facts), "is the directory on a disk that answers?"))
    elif daq_facts is not None:
        checks += machine_checks.check_daq(daq_facts, time.time(), daq_max_age_s)
    checks += _disks(settings, facts if kafka_ok else None, _collect(var_disk), timeout_s)
    return checks


def _disks(settings: Settings, facts, var_disk, timeout_s: float) -> list[Check]:
    n_brokers = len(facts.brokers) if facts else 1
    broker_per_day, rocksdb_per_day = machine_checks.growth_per_day(settings, n_brokers)
    if isinstance(var_disk, Exception):
        return [Check("disk", FAIL, str(var_disk), "is var_dir on a disk that answers?")]
    disks = [(var_disk, "worker tables (var_dir)", 0.0, rocksdb_per_day)]
    checks = []
    if facts is not None:
        def broker_disk(step):
            step("finding the broker's log.dirs")
            log_dirs = probes.broker_log_dirs(settings, facts)
            if not log_dirs:
                return None
            step(f"measuring {settings.slices_topic} in {log_dirs[0]}")
            slices = facts.topics.get(settings.slices_topic, {})
            kept = machine_checks.slices_bytes_kept(settings, slices.get("configs", {}), slices.get("partitions", 0),
                                                    n_brokers)
            return probes.disk_facts(log_dirs[0]), max(0.0, kept - probes.topic_bytes(log_dirs, settings.slices_topic))

        found = _collect(start_probe("broker disk", broker_disk, timeout_s))
        if isinstance(found, Exception):
            checks.append(Check("disk", FAIL, str(found), "is the broker's log dir on a disk that answers?"))
        elif found is None:
            checks.append(Check("disk", SKIP, f"the broker's log.dirs ({facts.broker_configs.get('log.dirs')}) are "
                                              "not on this machine: run `quax doctor` there too"))
        else:
            disks.append((found[0], "broker log", found[1], broker_per_day))
    return machine_checks.check_disks(disks) + checks


def cmd_doctor(args, settings: Settings) -> int:
    checks = run_checks(settings, daq_dir=args.daq, daq_max_age_s=args.daq_max_age, timeout_s=args.timeout)
    print(format_json(checks) if args.json else format_text(checks))
    sys.stdout.flush()
    return exit_code(checks)


def register(sub, common) -> None:
    """Add ``quax doctor`` to the CLI's subparsers."""
    p = sub.add_parser("doctor", parents=[common],
                       help="check broker, topics, workers, lag, the campaign service, settings, clocks, ports, "
                            "DAQ directory, disks; "
                            "exit 0 ok, 1 warn, 2 fail")
    p.add_argument("--daq", type=Path, metavar="DIR", help="the DAQ directory the producer reads (checked if given)")
    p.add_argument("--daq-max-age", type=float, default=DEFAULT_DAQ_MAX_AGE_S, metavar="S",
                   help="warn when the newest DAQ file is older than this (s; default 60)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help="deadline of every check (s; default 10); a check that takes longer fails, named")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=cmd_doctor)
