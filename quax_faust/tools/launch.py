"""Start and stop the local processes of the chain (broker, Faust workers) from Python.

Used by the tests, the benchmarks and the reliability drills; the demo uses the Procfile instead.
Everything binds to loopback: 127.0.0.1, or each worker its own 127.0.0.K when settings.web_hosts
names them (workers as separate machines, tests/test_scale_out.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from quax_faust.ops_files import ops_dir
from quax_faust.settings import ENV_PREFIX, Settings

BROKER_SCRIPT = ops_dir() / "kafka" / "broker.sh"


def free_port(count: int = 1) -> int:
    """A port p such that p .. p+count-1 are free on 127.0.0.1, chosen at random below the kernel's
    ephemeral range when there is room (best effort). A port from that range (what binding port 0
    gives) may be handed to any outgoing connection before the server that was meant to have it
    binds: seen in the suite, a worker started a minute after its port was chosen found it held."""
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(500):
        if low - count > 12_000:
            base = rng.randrange(10_000, low - count)
        else:  # a machine whose ephemeral range starts low: take what the kernel gives
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                base = s.getsockname()[1]
        if base + count < 65_000 and all(_port_free(base + k) for k in range(count)):
            return base
    raise RuntimeError("no free port range found")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce settings in a child process."""
    env = {}
    for name, value in settings.__dict__.items():
        env[ENV_PREFIX + name.upper()] = str(value)
    return env


@dataclass
class Broker:
    """A single-node Kafka broker run by ops/kafka/broker.sh (port and port+1 for the controller)."""

    port: int
    data_dir: Path
    heap: str = "-Xmx768m -Xms256m"
    env: dict = field(default_factory=dict)
    """Extra environment for broker.sh, e.g. KAFKA_TLS=1, KAFKA_SASL_USERS=user:password."""
    lib_dir: Path | None = None
    """Kafka's jars; None: settings.kafka_lib_dir of the environment (QUAX_KAFKA_LIB_DIR)."""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, command: str) -> None:
        # broker.sh's defaults (var/ beside ops/) suit a checkout only: give it both of its paths.
        lib_dir = self.lib_dir or Settings.from_env().kafka_lib_dir
        env = {**os.environ, "KAFKA_DATA_DIR": str(self.data_dir), "KAFKA_LIB": str(lib_dir),
               "KAFKA_HEAP": self.heap, **self.env}
        subprocess.run(["bash", str(BROKER_SCRIPT), command, str(self.port)], env=env, check=True)

    def start(self) -> "Broker":
        self._run("start")
        return self

    def stop(self) -> None:
        self._run("stop")

    def kill(self, timeout_s: float = 30.0) -> None:
        """SIGKILL the broker (no clean shutdown: it recovers its logs at the next start); returns
        once the process is gone."""
        pidfile = self.data_dir.parent / (self.data_dir.name + ".pid")
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while _running(pid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"broker pid {pid} still running {timeout_s} s after SIGKILL")
            time.sleep(0.05)
        # A dead broker not reaped yet still answers kill -0: broker.sh start must not take it for running.
        pidfile.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """True while process pid exists and is not a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Workers:
    """Faust worker processes ``quax worker --index K`` sharing one settings object."""

    settings: Settings
    log_dir: Path
    loglevel: str = "warn"
    """Faust log level of the workers (crit, error, warn, info, debug)."""
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)

    def start(self, indices=None) -> "Workers":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        for k in range(self.settings.workers) if indices is None else indices:
            log = open(self.log_dir / f"worker-{k}.log", "ab")
            self.procs[k] = subprocess.Popen(
                [sys.executable, "-m", "quax_faust.tools.cli", "worker", "--index", str(k), "--loglevel", self.loglevel],
                env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def health(self, k: int) -> dict | None:
        try:
            with urllib.request.urlopen(self.settings.worker_url(k) + "/quax/health/", timeout=2) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def wait_assigned(self, timeout_s: float = 120.0) -> None:
        """Wait until every running worker answers and all slices partitions are assigned."""
        deadline = time.monotonic() + timeout_s
        want = {f"{self.settings.slices_topic}/{p}" for p in range(self.settings.partitions)}
        while time.monotonic() < deadline:
            for k, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {k} exited with {proc.returncode}; see {self.log_dir}/worker-{k}.log")
            docs = [self.health(k) for k in self.procs]
            if all(docs):
                assigned = {tp for d in docs for tp in d["assigned"]}
                if want <= assigned:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"workers not assigned all partitions within {timeout_s} s; logs in {self.log_dir}")

    def stop(self, k: int | None = None, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> None:
        for index in [k] if k is not None else list(self.procs):
            proc = self.procs.pop(index, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self, k: int) -> None:
        self.stop(k, sig=signal.SIGKILL)


@dataclass
class CampaignLive:
    """The live campaign service ``quax campaign-live`` (quax_faust/campaign/) as a child process."""

    settings: Settings
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self, *args: str) -> "CampaignLive":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "quax_faust.tools.cli", "campaign-live", *args],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def document(self) -> dict | None:
        """The served document, or None while it is not served (starting, stopped)."""
        try:
            with urllib.request.urlopen(self.settings.campaign_url + "/campaign/", timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def wait_for(self, condition, timeout_s: float = 120.0) -> dict:
        """The first document for which condition(doc) is true; TimeoutError with the last one."""
        deadline, doc = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"quax campaign-live exited with {self.proc.returncode}; see {self.log_path}")
            doc = self.document()
            if doc is not None and condition(doc):
                return doc
            time.sleep(0.2)
        shown = {k: doc[k] for k in ("version", "status", "files_folded", "next_offsets")} if doc else None
        raise TimeoutError(f"live campaign not as awaited within {timeout_s} s (last: {shown}); see {self.log_path}")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, wait; the exit code (None if it was not running)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


def wait_for_run(settings: Settings, run: str, n_files: int, timeout_s: float = 120.0) -> dict:
    """Poll the workers' views until the run has n_files folded; return the run summary."""
    from quax_faust.client import TablesUnavailable, get_json

    deadline = time.monotonic() + timeout_s
    last: dict | str = "no answer"
    while time.monotonic() < deadline:
        try:
            summary = {r["run"]: r for r in get_json(settings, "/quax/runs/")["runs"]}.get(run)
            if summary and summary["n_files"] >= n_files:
                return summary
            last = summary or f"run {run} not in the tables yet"
        except TablesUnavailable as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"run {run} did not reach {n_files} files in {timeout_s} s; last: {last}; "
                       f"files: {_file_states(settings, run, n_files)}; "
                       f"consumer group: {_group_positions(settings)}; "
                       f"assignments: {_assignments(settings)}")


def _file_states(settings: Settings, run: str, n_files: int) -> list:
    """Diagnosis of a stuck run: the live state of files 0..n_files-1 in the files table."""
    from quax_faust.client import TablesUnavailable, get_json
    from quax_faust.core.wire import file_key

    states = []
    for k in range(n_files):
        try:
            doc = get_json(settings, f"/quax/files/?key={file_key(run, k).decode()}")
            if doc.get("status") != 1:
                states.append(doc)
        except TablesUnavailable as exc:
            states.append(f"file {k}: {exc}")
    return states


def _group_positions(settings: Settings) -> dict | str:
    """Diagnosis of a stuck run: per source partition, the group's committed offset and the end offset."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from quax_faust.connection import client_options

    async def positions() -> dict:
        admin = AIOKafkaAdminClient(**client_options(settings))
        consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
        await admin.start()
        await consumer.start()
        try:
            committed = await admin.list_consumer_group_offsets(settings.app_id)
            tps = [TopicPartition(settings.slices_topic, p) for p in range(settings.partitions)]
            tps.append(TopicPartition(settings.spectra_topic, 0))
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
            await admin.close()
        return {f"{tp.topic}/{tp.partition}": {"committed": committed[tp].offset if tp in committed else None,
                                               "end": ends[tp]} for tp in tps}

    try:
        return asyncio.run(asyncio.wait_for(positions(), 30))
    except Exception as exc:  # a diagnosis must not hide the timeout it explains
        return f"unavailable ({exc!r})"


def _assignments(settings: Settings) -> dict:
    """Diagnosis of a stuck run: each worker's assigned partitions (from its /quax/health/)."""
    found = {}
    for url in settings.worker_urls:
        try:
            with urllib.request.urlopen(url + "/quax/health/", timeout=5) as answer:
                found[url] = json.loads(answer.read())["assigned"]
        except (OSError, ValueError, KeyError) as exc:
            found[url] = f"no answer ({exc})"
    return found
