"""Checks of the machines around the chain, from probes.py's facts: the DAQ directory, disk space
against what retention and the tables will take, clock skew, the configured ports. Pure: facts
and the time in, report.Check lines out.

The disk estimate (docs/troubleshooting.md#disk-full): a file's spectrum is ``2 * slice_len``
float64 (mean and std, 49 kB at 3072 bins); the broker keeps two such records per file forever
(the ``spectra`` topic and the ``file_spectra`` table's changelog), the worker owning the run
tables one (RocksDB under var_dir/workers); ``slices`` takes 8 bytes per sample (i and q float32)
for its retention, or up to its byte cap. Replicas multiply the broker's share, brokers divide it.
"""

from __future__ import annotations

from quax_faust.settings import Settings
from quax_faust.stream.topics import DAY_S, daq_bytes_per_s
from quax_faust.tools.doctor.probes import DaqFacts, DiskFacts, HttpAnswer, PortFacts
from quax_faust.tools.doctor.report import FAIL, OK, WARN, Check

REAL_FILE_SAMPLES = 1 << 23
"""Samples per DAQ file of the real detector, for the number of files a day (docs/usage.md: a pair
every 4.19 s at 2 MS/s; a test directory of small files would make a day of them look huge)."""
PARTNER_TIMEOUT_S = 120.0
"""`quax produce --follow` quarantines a file whose partner has not come after this long."""
CLOCK_WARN_S, CLOCK_FAIL_S = 0.1, 1.0
"""File latencies are measured from the producer's clock to the worker's: a skew of 0.1 s is
already most of a healthy p99 latency; beyond a second the latency figures mean nothing."""
SAFE_DAYS = 7
"""Disk free for fewer days than this of growth, after the slices retention is filled: warn."""
GB = 1e9
TROUBLE = "docs/troubleshooting.md"


def _age(seconds: float) -> str:
    return (f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200
            else f"{seconds / 3600:.1f} h")


def check_daq(facts: DaqFacts, now_s: float, max_age_s: float) -> list[Check]:
    label, where = "daq", str(facts.directory)
    if not facts.exists:
        return [Check(label, FAIL, f"{where} does not exist",
                      "give the directory the DAQ writes into (--daq DIR); is its disk mounted?")]
    if not facts.readable:
        return [Check(label, FAIL, f"{where} is not readable by this user",
                      "run the producer as a user who may read it (the DAQ's group), or fix its mode")]
    if not facts.n_pairs:
        checks = [Check(label, WARN, f"{where}: no duck_i/duck_q pairs", "is the DAQ writing here?")]
    else:
        age = now_s - facts.newest_mtime_s
        text = f"{where}: {facts.n_pairs} pair(s), the newest (file {facts.newest_index}) written {_age(age)} ago"
        if age > max_age_s:
            checks = [Check(label, WARN, text + f" (more than {max_age_s:g} s)",
                            f"the DAQ is not writing: acquisition stopped, its disk full, or it writes elsewhere "
                            f"({TROUBLE}#stale-dashboard)")]
        else:
            checks = [Check(label, OK, text)]
    stuck = [(name, now_s - mtime) for name, mtime in facts.unpaired if now_s - mtime > PARTNER_TIMEOUT_S]
    if stuck:
        names = ", ".join(f"{name} ({_age(age)})" for name, age in stuck[:5])
        checks.append(Check("daq pairs", WARN, f"{len(stuck)} file(s) without a partner for over "
                                               f"{PARTNER_TIMEOUT_S:g} s: {names}",
                            "`quax produce --follow` would have quarantined them: is it running on this directory? "
                            f"({TROUBLE}#stuck-file)"))
    if facts.quarantined:
        checks.append(Check("daq quarantine", WARN, f"{len(facts.quarantined)} quarantined: {facts.quarantined[-1]}",
                            f"read {where}/quarantine/*.reason.txt; a repaired pair can be moved back ({TROUBLE}#stuck-file)"))
    cp = facts.checkpoint
    if cp and facts.newest_index is not None:
        behind = facts.newest_index - (cp["newest_sent"] if cp["newest_sent"] is not None else -1)
        if behind > 2 and now_s - cp["mtime_s"] > max_age_s:
            checks.append(Check("producer", WARN, f"checkpoint of run {cp['run']}: newest file sent "
                                                  f"{cp['newest_sent']}, {behind} behind the DAQ's file "
                                                  f"{facts.newest_index}, not updated for {_age(now_s - cp['mtime_s'])}",
                                "is `quax produce --follow` running (quax_producer_blocked_seconds)? restarted, it "
                                f"resumes after the checkpoint ({TROUBLE}#stuck-file)"))
    return checks


def growth_per_day(settings: Settings, n_brokers: int) -> tuple[float, float]:
    """(broker bytes, RocksDB bytes) added per day of data and kept forever (the module's estimate)."""
    files_per_day = DAY_S * settings.sample_rate_hz / REAL_FILE_SAMPLES
    spectrum = 2 * settings.slice_len * 8
    broker = 2 * spectrum * files_per_day * settings.replication_factor / max(1, n_brokers)
    return broker, spectrum * files_per_day


def slices_bytes_kept(settings: Settings, configs: dict, partitions: int, n_brokers: int) -> float:
    """Bytes of slices this broker holds once the retention is full: time or byte cap, whichever
    is reached first; infinity when kept forever without a cap."""
    rate = daq_bytes_per_s(settings.sample_rate_hz)
    kept_ms, cap = int(configs.get("retention.ms") or -1), int(configs.get("retention.bytes") or -1)
    limits = [rate * kept_ms / 1000] if kept_ms >= 0 else []
    limits += [cap * partitions] if cap >= 0 else []
    return min(limits, default=float("inf")) * settings.replication_factor / max(1, n_brokers)


def check_disks(disks: list[tuple[DiskFacts, str, float, float]]) -> list[Check]:
    """disks: (free space of a path, what it holds, bytes still to come before retention deletes,
    bytes per day kept forever). Paths on one file system are judged together."""
    by_device: dict[int, list] = {}
    for entry in disks:
        by_device.setdefault(entry[0].device, []).append(entry)
    checks = []
    for entries in by_device.values():
        disk = entries[0][0]
        roles = " and ".join(f"{what} ({facts.path})" for facts, what, _, _ in entries)
        to_come = sum(e[2] for e in entries)
        per_day = sum(e[3] for e in entries)
        free = disk.free_bytes
        text = f"{free / GB:.1f} GB free of {disk.total_bytes / GB:.0f} GB for {roles}"
        if to_come == float("inf"):
            checks.append(Check("disk", WARN, text + "; slices are kept forever without a byte cap",
                                f"set slices_retention_s to what the disk holds ({TROUBLE}#disk-full)"))
            continue
        days = (free - to_come) / per_day if per_day else float("inf")
        if to_come:
            text += f"; the slices retention needs {to_come / GB:.1f} GB more"
        if per_day:
            text += f"; {per_day / GB:.2f} GB/day are kept forever: {days:.0f} days left"
        if free < to_come + per_day:
            checks.append(Check("disk", FAIL, text, "free space, lower slices_retention_s (each process sets it "
                                                    f"on the topic), or give the broker a bigger disk ({TROUBLE}#disk-full)"))
        elif days < SAFE_DAYS:
            checks.append(Check("disk", WARN, text, f"free space within a week ({TROUBLE}#disk-full)"))
        else:
            checks.append(Check("disk", OK, text))
    return checks


def check_clock(settings: Settings, answers: dict[str, HttpAnswer]) -> list[Check]:
    """Each process's clock against this machine's: a worker's health view says time_s (to the µs),
    the producer's metrics server its HTTP Date header (to the second)."""
    checks = []
    for who, answer in answers.items():
        middle, half = (answer.sent_s + answer.received_s) / 2, (answer.received_s - answer.sent_s) / 2
        doc = answer.json() if answer.error is None else None
        if isinstance(doc, dict) and isinstance(doc.get("time_s"), (int, float)):
            skew, resolution = doc["time_s"] - middle, half
        elif answer.date_s is not None:
            skew, resolution = answer.date_s + 0.5 - middle, half + 0.5  # Date is truncated to the second
        else:
            continue
        beyond = abs(skew) - resolution
        text = f"{who}: {skew:+.3f} s against this machine (± {resolution:.3f} s)"
        fix = ("synchronise the clocks (chrony or systemd-timesyncd; `timedatectl` says whether they are): "
               f"file latencies run from the producer's clock to the worker's ({TROUBLE}#stale-dashboard)")
        status = FAIL if beyond > CLOCK_FAIL_S else WARN if beyond > CLOCK_WARN_S else OK
        checks.append(Check("clock", status, text, fix if status != OK else ""))
    return checks


SETTING_OF_ROLE = {"worker": "web_port_base", "dashboard": "dashboard_port", "prometheus": "prometheus_port",
                   "producer metrics": "producer_metrics_port"}


def check_ports(settings: Settings, ports: list[PortFacts | Exception]) -> list[Check]:
    checks = []
    for facts in ports:
        if isinstance(facts, Exception):
            checks.append(Check("port", FAIL, str(facts), "a program on the port accepts but does not answer"))
            continue
        label = f"port {facts.port}"
        kind = facts.role.split(" ")[0] if facts.role.startswith("worker") else facts.role
        owner = f" ({facts.owner})" if facts.owner else ""
        if not facts.listening:
            checks.append(Check(label, OK, f"{facts.role}: free"))
        elif kind == "worker" and (facts.identified or "").startswith("worker"):
            app = facts.identified.removeprefix("worker of app ")
            if app == settings.app_id:
                checks.append(Check(label, OK, f"{facts.role}: held by it{owner}"))
            else:
                checks.append(Check(label, FAIL, f"{facts.role}: held by a worker of another chain, app {app}{owner}",
                                    f"stop it, or give one chain another web_port_base ({TROUBLE}#port-in-use)"))
        elif facts.identified == kind:
            checks.append(Check(label, OK, f"{facts.role}: held by it{owner}"))
        else:
            what = facts.identified or "another program"
            checks.append(Check(label, FAIL, f"{facts.role}: held by {what}{owner}",
                                f"stop it, or move ours: QUAX_{SETTING_OF_ROLE[kind].upper()} ({TROUBLE}#port-in-use)"))
    return checks

