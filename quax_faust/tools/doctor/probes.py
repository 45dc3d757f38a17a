"""What `quax doctor` looks at, gathered without judging it: the broker (cluster, API versions,
topics and their configs, the workers' consumer group and its offsets), each worker's health view,
the configured ports, the DAQ directory, the disks. Each probe takes a ``step`` callable and says
what it is doing, so a probe that times out can be named with its step (report.start_probe)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import ApiVersionRequest

from quax_faust.connection import client_options, connect_admin
from quax_faust.core import daq
from quax_faust.settings import Settings
from quax_faust.stream.topics import describe_topic_configs, topic_plan
from quax_faust.tools.doctor.report import TimedOut

Step = Callable[[str], None]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


# --- the broker ----------------------------------------------------------------------------------

@dataclass
class KafkaFacts:
    brokers: list[dict]
    """[{node_id, host, port}]"""
    controller_id: int | None
    api_versions: dict[int, tuple[int, int]]
    """API key -> (min, max) version, from the first broker's ApiVersions answer."""
    topics: dict[str, dict]
    """Planned topic that exists -> {"partitions": n, "replicas": fewest replicas of a partition,
    "configs": {name: value}}."""
    broker_configs: dict[str, str]
    group: dict | None
    """The workers' consumer group: {"state", "members"}; None when the broker does not know it."""
    committed: dict[tuple[str, int], int]
    ends: dict[tuple[str, int], int]
    starts: dict[tuple[str, int], int] = field(default_factory=dict)
    """The first offset still kept (retention deletes from the start): where a group without a
    committed offset begins."""
    group_error: str | None = None
    """Why the group could not be described (e.g. its coordinator still loading on a new broker)."""


def kafka_facts(settings: Settings, step: Step, timeout_s: float) -> KafkaFacts:
    """Everything the broker tells about our chain, within timeout_s (then TimedOut; the clients are
    closed a moment before, so that the thread ends with its event loop)."""
    try:
        return asyncio.run(asyncio.wait_for(_kafka_facts(settings, step), max(0.2, timeout_s - 0.3)))
    except asyncio.TimeoutError:
        raise TimedOut(f"broker timed out after {timeout_s:g} s ({step.now})") from None


async def _kafka_facts(settings: Settings, step) -> KafkaFacts:
    plan = topic_plan(settings)
    step(f"connecting to {settings.broker}")
    admin = await connect_admin(settings, wait_s=0)
    try:
        step("describing the cluster")
        cluster = await admin.describe_cluster()
        brokers = [{"node_id": b["node_id"], "host": b["host"], "port": b["port"]} for b in cluster["brokers"]]
        step("asking the broker for its API versions")
        api_versions = await _api_versions(settings)
        step("describing our topics")
        listed = set(await admin.list_topics())
        wanted = [name for name in plan if name in listed]
        described = await admin.describe_topics(wanted) if wanted else []
        topics = {t["topic"]: {"partitions": len(t["partitions"]),
                               "replicas": min((len(p["replicas"]) for p in t["partitions"]), default=0)}
                  for t in described if not t.get("error_code")}
        step("reading our topics' configs")
        configs = await describe_topic_configs(admin, list(topics), wait_s=0.0) if topics else {}
        for name, entries in configs.items():
            topics[name]["configs"] = {k: e["value"] for k, e in entries.items()}
        step("reading the broker's configs")
        broker_configs = {}
        if brokers:
            for response in await admin.describe_configs(
                    [ConfigResource(ConfigResourceType.BROKER, str(brokers[0]["node_id"]))]):
                for resource in response.to_object()["resources"]:
                    broker_configs.update({e["config_names"]: e["config_value"]
                                           for e in resource["config_entries"]})
        step(f"describing consumer group {settings.app_id}")
        group, group_error, committed = None, None, {}
        try:  # the group's coordinator may still be loading (a new broker): the rest still holds
            for response in await admin.describe_consumer_groups([settings.app_id]):
                for g in response.to_object()["groups"]:
                    if not g["error_code"] and g["state"] != "Dead":
                        group = {"state": g["state"], "members": len(g["members"])}
            step(f"reading the committed offsets of group {settings.app_id}")
            committed = {(tp.topic, tp.partition): meta.offset
                         for tp, meta in (await admin.list_consumer_group_offsets(settings.app_id)).items()}
        except KafkaError as exc:
            group, group_error = None, f"{type(exc).__name__}: {exc}"
    finally:
        await admin.close()
    step("reading the end offsets of slices and spectra")
    sources = [TopicPartition(name, p) for name in (settings.slices_topic, settings.spectra_topic)
               if name in topics for p in range(topics[name]["partitions"])]
    ends, starts = {}, {}
    if sources:
        consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
        await consumer.start()
        try:
            ends = {(tp.topic, tp.partition): offset for tp, offset in (await consumer.end_offsets(sources)).items()}
            starts = {(tp.topic, tp.partition): offset
                      for tp, offset in (await consumer.beginning_offsets(sources)).items()}
        finally:
            await consumer.stop()
    return KafkaFacts(brokers, cluster.get("controller_id"), api_versions, topics, broker_configs, group,
                      committed, ends, starts, group_error)


async def _api_versions(settings: Settings) -> dict[int, tuple[int, int]]:
    """The broker's ApiVersions answer: the only version information Kafka's protocol carries."""
    client = AIOKafkaClient(**client_options(settings))
    await client.bootstrap()
    try:
        node = client.get_random_node()
        response = await client.send(node, ApiVersionRequest())
        return {key: (low, high) for key, low, high in response.api_versions}
    finally:
        await client.close()


# --- the workers and the producer ------------------------------------------------------------

@dataclass
class HttpAnswer:
    url: str
    status: int | None = None
    body: bytes = b""
    date_s: float | None = None
    """The answer's Date header (1 s resolution)."""
    sent_s: float = 0.0
    received_s: float = 0.0
    error: str | None = None
    """Why there is no answer (refused, timed out, ...)."""

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def http_get(url: str, timeout_s: float) -> HttpAnswer:
    """GET url; a refused connection or an HTTP error is an answer too (with ``error``)."""
    answer = HttpAnswer(url, sent_s=time.time())
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            answer.status, answer.body = r.status, r.read()
            date = r.headers.get("Date")
    except urllib.error.HTTPError as exc:
        answer.status, answer.body, date = exc.code, exc.read(), exc.headers.get("Date")
        answer.error = f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        answer.received_s, answer.error = time.time(), str(reason) or type(reason).__name__
        return answer
    answer.received_s = time.time()
    parsed = email.utils.parsedate_to_datetime(date) if date else None
    answer.date_s = parsed.timestamp() if parsed else None
    return answer


# --- ports -----------------------------------------------------------------------------------

@dataclass
class PortFacts:
    port: int
    role: str
    """What should listen there: `worker 1`, `dashboard`, `prometheus`, `producer metrics`."""
    listening: bool
    identified: str | None = None
    """What answered, judged by its HTTP answer: the same roles, or None (something else)."""
    owner: str | None = None
    """pid and command line of the process holding it, when this user may see it."""


def configured_ports(settings: Settings) -> list[tuple[int, str]]:
    ports = [(settings.web_port_base + k, f"worker {k}") for k in range(settings.workers)]
    ports += [(settings.dashboard_port, "dashboard"), (settings.prometheus_port, "prometheus")]
    if settings.producer_metrics_port:
        ports.append((settings.producer_metrics_port, "producer metrics"))
    return ports


def port_host(settings: Settings, role: str) -> str:
    """The address a configured port listens on: a worker's own host (web_hosts), else web_host."""
    if role.startswith("worker "):
        return settings.worker_host(int(role.split()[1]))
    return settings.web_host


def port_facts(settings: Settings, port: int, role: str, timeout_s: float, step: Step) -> PortFacts:
    host = port_host(settings, role)
    step(f"connecting to {host}:{port}")
    with socket.socket() as s:
        s.settimeout(min(timeout_s, 2.0))
        listening = s.connect_ex((host, port)) == 0
    if not listening:
        return PortFacts(port, role, False)
    base = f"http://{host}:{port}"
    probes = {"worker": "/quax/health/", "dashboard": "/dashboard", "prometheus": "/-/ready",
              "producer metrics": "/metrics"}
    identified = None
    for what, path in probes.items():
        step(f"asking what listens: GET {base + path}")
        answer = http_get(base + path, timeout_s)
        text = answer.body.decode(errors="replace")
        doc = answer.json() if what == "worker" else None
        if (what == "worker" and isinstance(doc, dict) and "assigned" in doc
                or what == "dashboard" and answer.status == 200 and "bokeh" in text.lower()
                or what == "prometheus" and answer.status == 200 and "Prometheus" in text
                or what == "producer metrics" and "quax_producer_" in text):
            identified = f"worker of app {doc.get('consumer_group')}" if what == "worker" else what
            break
        if answer.error and answer.status is None:  # not HTTP at all: no point asking again
            break
    step("looking for the process that listens")
    return PortFacts(port, role, True, identified, listener_owner(port))


def listener_owner(port: int) -> str | None:
    """`pid N (command line)` of the process listening on TCP port (Linux /proc), if visible."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(parts[9])
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in {f"socket:[{i}]" for i in inodes} for fd in fds):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                return f"pid {pid} ({cmdline.strip()[:120]})"
        except OSError:
            continue
    return None


# --- the DAQ directory -----------------------------------------------------------------------

@dataclass
class DaqFacts:
    directory: Path
    exists: bool
    readable: bool = True
    n_pairs: int = 0
    newest_index: int | None = None
    newest_mtime_s: float | None = None
    samples_per_file: int | None = None
    unpaired: list[tuple[str, float]] = field(default_factory=list)
    """Files without their partner: (name, mtime)."""
    quarantined: list[str] = field(default_factory=list)
    """The reasons (.reason.txt) of the pairs in SOURCE/quarantine."""
    checkpoint: dict | None = None
    """The newest producer checkpoint under var_dir/producer: {"run", "newest_sent", "mtime_s"}."""


def daq_facts(directory: Path, var_dir: Path) -> DaqFacts:
    directory = Path(directory)
    if not directory.is_dir():
        return DaqFacts(directory, exists=False)
    if not os.access(directory, os.R_OK | os.X_OK):
        return DaqFacts(directory, exists=True, readable=False)
    pairs, problems = daq.scan_dir(directory)
    facts = DaqFacts(directory, exists=True, n_pairs=len(pairs))
    if pairs:
        newest = pairs[-1]
        facts.newest_index = newest.file_index
        facts.samples_per_file = newest.i_path.stat().st_size // daq.SAMPLE_BYTES
    mtimes = [p.stat().st_mtime for pair in pairs for p in (pair.i_path, pair.q_path)]
    facts.newest_mtime_s = max(mtimes, default=None)
    facts.unpaired = [(problem.path.name, problem.path.stat().st_mtime) for problem in problems]
    quarantine = directory / "quarantine"
    if quarantine.is_dir():
        facts.quarantined = [p.read_text().strip()[:200] for p in sorted(quarantine.glob("*.reason.txt"))]
    checkpoints = sorted(Path(var_dir, "producer").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if checkpoints:
        newest = checkpoints[-1]
        try:
            sent = json.loads(newest.read_text())["sent"]
            facts.checkpoint = {"run": newest.stem, "newest_sent": max((stop - 1 for _, stop in sent), default=None),
                                "mtime_s": newest.stat().st_mtime}
        except (OSError, ValueError, KeyError):
            facts.checkpoint = {"run": newest.stem, "newest_sent": None, "mtime_s": newest.stat().st_mtime}
    return facts


# --- disks -----------------------------------------------------------------------------------

@dataclass
class DiskFacts:
    path: Path
    device: int
    free_bytes: int
    total_bytes: int


def disk_facts(path: Path) -> DiskFacts:
    """Free space of the file system holding path (or its nearest existing parent)."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    usage = shutil.disk_usage(existing)
    return DiskFacts(path, existing.stat().st_dev, usage.free, usage.total)


def broker_log_dirs(settings: Settings, facts: KafkaFacts) -> list[Path]:
    """The broker's log.dirs, when the broker runs on this machine and they are here."""
    if not facts.brokers or not all(b["host"] in LOCAL_HOSTS | {socket.gethostname(), socket.getfqdn()}
                                    for b in facts.brokers):
        return []
    dirs = facts.broker_configs.get("log.dirs") or facts.broker_configs.get("log.dir") or ""
    return [Path(d) for d in dirs.split(",") if d and Path(d).is_dir()]


def topic_bytes(log_dirs: list[Path], topic: str) -> int:
    """Bytes the topic's partitions take in these log dirs (directories `<topic>-<partition>`)."""
    total = 0
    for log_dir in log_dirs:
        for entry in log_dir.iterdir():
            name, _, partition = entry.name.rpartition("-")
            if name == topic and partition.isdigit() and entry.is_dir():
                total += sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
    return total
