"""The systemd units of ops/systemd/, as ops/install-services.sh renders them: systemd's own checks
(`systemd-analyze verify`, `systemd-analyze security --offline`), the settings check each unit runs
before it starts, and each unit's command lines run as systemd would run them: the ExecStartPre and
ExecStart of the unit, with its Environment=, its EnvironmentFile= and its %i, against the broker
the broker unit itself starts.

What differs from systemd here (this box runs no systemd): the processes run as the test's user,
without the units' sandbox (ProtectSystem=, PrivateTmp=, ...), with /var/lib/quax (the units'
StateDirectory=) mapped to a temporary directory, and SIGTERM sent by this file, the broker last
(systemd stops the workers and the producer first: they are ordered After= it).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace

import pytest

from quax_faust.ops_files import ops_dir
from quax_faust.settings import ENV_PREFIX, Settings
from quax_faust.tools.launch import free_port, wait_for_run
from tests.conftest import stack_settings, wait_until, write_synthetic_run

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "ops" / "install-services.sh"
PREFIX = Path(sys.prefix)
"""The venv running the tests: its bin/quax and bin/bokeh are what the units run."""
STATE = "/var/lib/quax"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
"""The PATH systemd gives a service."""
UNITS = ("quax-broker.service", "quax-worker@.service", "quax-producer@.service",
         "quax-dashboard.service", "quax-prometheus.service", "quax-alertmanager.service", "quax.target")
RUN = "svc-run1"
N_FILES, N_SAMPLES = 2, 3072 * 128


# --- the unit files, read the way systemd reads them ----------------------------------------------

def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """{section: [(key, value), ...]} of a unit file (our units use no line continuations)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict, key: str, section: str = "Service") -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=VALUE lines, # and ; comments, one pair of quotes stripped (systemd's EnvironmentFile=)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and line[0] not in "#;":
            name, _, value = line.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            env[name.strip()] = value
    return env


def unit_environment(unit: dict, state_dir: Path) -> dict[str, str]:
    """The environment systemd gives the unit's commands: its PATH, Environment= (with /var/lib/quax
    mapped to state_dir), then EnvironmentFile= (which overrides Environment=)."""
    env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}
    for assignments in values(unit, "Environment"):
        for assignment in shlex.split(assignments):
            name, _, value = assignment.partition("=")
            env[name] = value.replace(STATE, str(state_dir))
    for file in values(unit, "EnvironmentFile"):
        optional = file.startswith("-")
        path = Path(file.lstrip("-"))
        if path.is_file() or not optional:
            env.update(read_env_file(path))
    return env


def command_line(line: str, instance: str, env: dict[str, str]) -> list[str]:
    """An Exec*= line as systemd runs it: specifiers (%i, %%), then ${NAME} from env."""
    assert line[0] not in "-@:+!", f"{line}: an exec prefix this test does not model"
    line = re.sub(r"%[i%]", lambda m: instance if m.group() == "%i" else "%", line)
    assert not re.search(r"%[A-Za-z]", line), f"{line}: a specifier this test does not model"
    words = [re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word) for word in shlex.split(line)]
    assert not any("$" in word for word in words), f"{line}: a $NAME this test does not model"
    return words


@dataclass
class Service:
    """One rendered unit started the way systemd starts it (ExecStartPre, then ExecStart)."""

    name: str
    unit: dict
    argv: list[str]
    check_argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    proc: subprocess.Popen | None = None

    @classmethod
    def of(cls, units_dir: Path, template: str, state_dir: Path, instance: str = "") -> Service:
        unit = read_unit(units_dir / template)
        env = unit_environment(unit, state_dir)
        (pre,) = values(unit, "ExecStartPre")
        (start,) = values(unit, "ExecStart")
        (cwd,) = values(unit, "WorkingDirectory")
        name = template.replace("@", f"@{instance}") if instance else template
        return cls(name, unit, command_line(start, instance, env), command_line(pre, instance, env), env,
                   Path(cwd.replace(STATE, str(state_dir))), state_dir / "journal" / f"{name}.log")

    def start(self) -> Service:
        self.cwd.mkdir(parents=True, exist_ok=True)  # StateDirectory=quax
        self.log.parent.mkdir(parents=True, exist_ok=True)
        check = subprocess.run(self.check_argv, env=self.env, cwd=self.cwd, capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0, f"{self.name}: ExecStartPre {self.check_argv} failed: {check.stderr}"
        assert "all valid" in check.stdout, check.stdout
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def alive(self) -> bool:
        """Still running; AssertionError with the end of its log if it exited."""
        assert self.running(), f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
        return True

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 120.0) -> int:
        """systemctl stop: SIGTERM (to the main process; KillMode=mixed and control-group alike, since
        our main processes stop their children themselves), then SIGKILL after TimeoutStopSec."""
        if not self.running():
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not stop within {timeout_s} s of SIGTERM:\n{self.tail()}")

    def stopped_cleanly(self, code: int) -> bool:
        """What systemd calls a clean stop: exit 0, death by SIGTERM, or a SuccessExitStatus=."""
        success = {int(word) for line in values(self.unit, "SuccessExitStatus") for word in line.split()}
        return code in {0, -signal.SIGTERM} | success


def get(url: str, timeout_s: float = 5.0) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except OSError:
        return None


# --- the installed units --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """install-services.sh into a temporary directory: units, settings file path, DAQ root."""
    root = tmp_path_factory.mktemp("services")
    units, conf, daq_root = root / "units", root / "etc" / "quax.env", root / "daq"
    daq_root.mkdir()
    done = subprocess.run(["bash", str(INSTALL), "--prefix", str(PREFIX), "--dest", str(units), "--conf", str(conf),
                           "--daq-root", str(daq_root)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return SimpleNamespace(root=root, units=units, conf=conf, daq_root=daq_root, state=root / "state",
                           stdout=done.stdout)


def test_install_services_renders_every_unit_and_says_what_comes_next(installed):
    assert sorted(p.name for p in installed.units.iterdir()) == sorted(UNITS)
    for name in UNITS:
        text = (installed.units / name).read_text()
        assert not re.search(r"@[A-Z_]+@", text), f"{name}: a placeholder is left"
        assert f"  {name}\n" in installed.stdout
        if name.endswith(".service"):
            unit = read_unit(installed.units / name)
            assert values(unit, "User") == ["quax"] and values(unit, "Restart") == ["on-failure"]
            assert values(unit, "StateDirectory") == ["quax"] and values(unit, "StandardOutput") == ["journal"]
            assert values(unit, "NoNewPrivileges") == ["yes"] and values(unit, "PrivateTmp") == ["yes"]
            assert values(unit, "ProtectSystem") == ["strict"]
            assert values(unit, "EnvironmentFile") == [f"-{installed.conf}"]  # our check reports it missing
            assert values(unit, "ExecStartPre") == [f"{PREFIX}/bin/quax settings --check {installed.conf}"]
            assert values(unit, "WantedBy", "Install") == ["quax.target"]
    for step in ("systemctl daemon-reload", "systemctl enable --now quax.target", "quax-worker@{0..3}.service",
                 f"quax settings --check {installed.conf}", "quax-producer@RUN.service", "journalctl -u"):
        assert step in installed.stdout, step


def test_install_services_refuses_a_prefix_without_quax(tmp_path):
    done = subprocess.run(["bash", str(INSTALL), "--prefix", str(tmp_path), "--dest", str(tmp_path / "units")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and f"{tmp_path}/bin/quax is missing" in done.stderr
    assert not (tmp_path / "units").exists()


def test_the_dashboard_units_defaults_are_the_settings_defaults(installed):
    """The dashboard's command line needs web_host and dashboard_port as variables: the unit sets
    them to settings.py's defaults, which the settings file may override."""
    env = unit_environment(read_unit(installed.units / "quax-dashboard.service"), installed.state)
    defaults = Settings()
    for name in ("web_host", "dashboard_port"):
        assert env[ENV_PREFIX + name.upper()] == str(getattr(defaults, name))


def test_systemd_analyze_verify_accepts_the_units(installed):
    """systemd's own parser on the rendered units, templates as instances: unknown keys, bad values
    and commands that are not executable are errors here. (It does not check that User= exists.)"""
    names = [n.replace("@.", "@0.") if "worker" in n else n.replace("@.", f"@{RUN}.") for n in UNITS]
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *[f"./{n}" for n in names]],
                          cwd=installed.units, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), done.stderr + done.stdout
    for name in names[:-1]:  # the hardening of each service, as systemd scores it (0 safe .. 10 exposed)
        done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", f"./{name}"],
                              cwd=installed.units, capture_output=True, text=True, timeout=120)
        score = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
        assert score and float(score.group(1)) <= 4.5, f"{name}: {done.stdout[-2000:]}{done.stderr}"


def test_the_settings_check_refuses_a_missing_or_invalid_file_with_one_clear_line(installed, tmp_path):
    """Every unit's ExecStartPre, given a missing file, an unknown name, a bad value, a line that is
    not NAME=VALUE or an incomplete broker login: exit != 0 and one line naming the file (and the
    line), which is what the journal shows. Under systemd the environment holds the file's own
    (bad) values, so the check must not trip over them first."""
    unit = read_unit(installed.units / "quax-worker@.service")
    (pre,) = values(unit, "ExecStartPre")
    argv = command_line(pre, "0", {})
    assert argv[-1] == str(installed.conf)
    env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}

    def check(k: int, text: str | None) -> subprocess.Popen:
        """The check of file k holding text (None: no file), started with the environment systemd
        gives it: the file's own NAME=VALUE lines."""
        path = tmp_path / f"{k}.env"
        loaded = {}
        if text is not None:
            path.write_text(text)
            loaded = {name: value for name, value in read_env_file(path).items() if name.isidentifier()}
        return subprocess.Popen([*argv[:-1], str(path)], env={**env, **loaded}, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    cases = {
        None: (3, "settings file {path} does not exist: write it"),
        "QUAX_BROKER=kafka1.lab:9092\nQUAX_PARTITION=8\n": (2, "{path}:2: QUAX_PARTITION is not a quax setting "
                                                               "(did you mean QUAX_PARTITIONS?)"),
        "# workers\nQUAX_WORKERS=four\n": (2, "{path}:2: QUAX_WORKERS: setting workers: 'four' is not a valid int"),
        "QUAX_BROKER kafka1.lab:9092\n": (2, "{path}:1: expected NAME=VALUE, got 'QUAX_BROKER kafka1.lab:9092'"),
        "QUAX_SECURITY_PROTOCOL=SASL_SSL\n": (2, "{path}: security_protocol SASL_SSL needs sasl_username"),
    }
    good = "QUAX_BROKER=kafka1.lab:9092\nKAFKA_HEAP=\"-Xmx2g -Xms1g\"\n"
    checks = [check(k, text) for k, text in enumerate([*cases, good])]  # side by side: ~3 s each
    for k, (text, (code, message)) in enumerate(cases.items()):
        stderr = checks[k].communicate(timeout=60)[1]
        expected = "quax settings --check: " + message.format(path=tmp_path / f"{k}.env")
        assert checks[k].returncode == code, (text, checks[k].returncode, stderr)
        assert stderr.startswith(expected) and stderr.count("\n") == 1, (text, stderr)
    stdout, stderr = checks[-1].communicate(timeout=60)
    assert checks[-1].returncode == 0 and "1 quax settings, all valid (QUAX_BROKER)" in stdout, stderr


def test_the_example_settings_file_passes_the_check(installed):
    example = REPO / "ops" / "systemd" / "quax.env.example"
    done = subprocess.run([str(PREFIX / "bin" / "quax"), "settings", "--check", str(example)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "all valid" in done.stdout, done.stderr


# --- the chain, one unit at a time ----------------------------------------------------------------

@pytest.fixture(scope="module")
def chain(installed):
    """The settings file of an isolated chain, the broker unit's commands started on it, and a
    place for the other services; everything still running is stopped at the end."""
    kafka_port = free_port(2)
    settings = stack_settings(SimpleNamespace(bootstrap=f"127.0.0.1:{kafka_port}"), installed.state,
                              workers=1, producer_metrics_port=free_port(), dashboard_port=free_port(),
                              prometheus_port=free_port(), prometheus_scrape_interval_s=1.0)
    defaults = Settings()
    lines = [f"{ENV_PREFIX}{f.name.upper()}={getattr(settings, f.name)}" for f in fields(Settings)
             if f.name != "var_dir" and getattr(settings, f.name) != getattr(defaults, f.name)]
    # The broker service's own knobs; the jars are the checkout's (ops/setup.sh), not fetched again.
    lines += ["KAFKA_HOST=127.0.0.1", f"KAFKA_PORT={kafka_port}", 'KAFKA_HEAP="-Xmx512m -Xms128m"',
              f"KAFKA_LIB={Settings.from_env().kafka_lib_dir}", f"ALERTMANAGER_PORT={free_port()}"]
    installed.conf.parent.mkdir(parents=True, exist_ok=True)
    installed.conf.write_text("# written by tests/test_services.py\n" + "\n".join(lines) + "\n")
    services: dict[str, Service] = {}

    def start(template: str, instance: str = "") -> Service:
        service = Service.of(installed.units, template, installed.state, instance)
        services[service.name] = service
        return service.start()

    broker = start("quax-broker.service")
    try:
        wait_until(lambda: broker.alive() and _listening(kafka_port), 120, f"the broker unit on port {kafka_port}")
    except AssertionError:
        broker.stop()
        raise
    yield SimpleNamespace(settings=settings, services=services, start=start, broker=broker,
                          kafka_port=kafka_port, **vars(installed))
    try:
        for name in sorted(services, key=lambda n: n == "quax-broker.service"):  # the broker last
            try:
                services[name].stop()
            except AssertionError:  # killed after its timeout; the others must still be stopped
                pass
    finally:
        _kill_left_jvm(installed.state)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _broker_jvm(state: Path) -> int | None:
    """The pid of the broker unit's JVM (broker.sh runs it in a session of its own and writes its pid
    beside KAFKA_DATA_DIR) while it runs, else None. A pid reused by another process is not it."""
    try:
        pid = int((state / "kafka.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    zombie = stat.rsplit(")", 1)[1].split()[0] == "Z"
    return pid if "kafka.Kafka" in cmdline and str(state) in cmdline and not zombie else None


def _kill_left_jvm(state: Path) -> None:
    """broker.sh stops its JVM on SIGTERM; were it killed instead, its JVM would stay."""
    pid = _broker_jvm(state)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)


def test_the_broker_unit_serves_kafka_with_its_data_under_the_state_directory(chain):
    assert chain.broker.alive()
    assert (chain.state / "kafka" / "log" / "meta.properties").is_file()
    assert (chain.state / "kafka" / "server.properties").read_text().count(f":{chain.kafka_port}") >= 1


def test_the_worker_unit_joins_and_answers_its_views_and_metrics(chain):
    worker = chain.start("quax-worker@.service", "0")
    url = chain.settings.worker_url(0)
    assert worker.argv == [f"{PREFIX}/bin/quax", "worker", "--index", "0"]

    def assigned():
        worker.alive()
        answer = get(url + "/quax/health/")
        return answer and f'"{chain.settings.slices_topic}/' in answer[1] and answer

    wait_until(assigned, 180, f"worker 0 of the unit assigned the slices partitions at {url}", interval_s=0.5)
    status, metrics = get(url + "/metrics")
    assert status == 200 and "quax_" in metrics
    assert (chain.state / "workers" / "0").is_dir()  # its tables under the state directory


def test_the_producer_unit_follows_its_run_directory_and_sends_each_pair(chain):
    write_synthetic_run(chain.daq_root / RUN, N_FILES, N_SAMPLES, seed=17)
    producer = chain.start("quax-producer@.service", RUN)
    assert producer.argv == [f"{PREFIX}/bin/quax", "produce", "--source", f"{chain.daq_root}/{RUN}", "--run", RUN,
                             "--follow"]
    summary = wait_for_run(chain.settings, RUN, N_FILES, timeout_s=120)
    assert summary["n_files"] == N_FILES and producer.alive()  # --follow: still watching for the next pair
    status, metrics = get(f"http://127.0.0.1:{chain.settings.producer_metrics_port}/metrics")
    assert status == 200 and "quax_producer" in metrics
    assert (chain.state / "producer").is_dir()  # its checkpoint under the state directory
    code = producer.stop()
    assert producer.stopped_cleanly(code), f"exit {code}:\n{producer.tail()}"


def test_the_dashboard_unit_serves_the_page(chain):
    dashboard = chain.start("quax-dashboard.service")
    port = chain.settings.dashboard_port
    assert dashboard.argv[dashboard.argv.index("--port") + 1] == str(port)
    assert f"--allow-websocket-origin=127.0.0.1:{port}" in dashboard.argv
    page = wait_until(lambda: dashboard.alive() and get(f"http://127.0.0.1:{port}/dashboard"), 120,
                      f"the dashboard unit's page on port {port}", interval_s=0.5)
    assert page[0] == 200 and "bokeh" in page[1].lower()


def test_the_prometheus_unit_scrapes_the_worker(chain):
    prometheus = chain.start("quax-prometheus.service")
    base = f"http://127.0.0.1:{chain.settings.prometheus_port}"
    worker_target = f"127.0.0.1:{chain.settings.web_port_base}"

    def worker_up():
        prometheus.alive()
        answer = get(base + "/api/v1/targets")
        return answer and re.search(rf'"instance":"{worker_target}".*?"health":"up"', answer[1])

    wait_until(worker_up, 120, f"the Prometheus unit scraping worker 0 at {worker_target}", interval_s=0.5)
    assert (chain.state / "prometheus" / str(chain.settings.prometheus_port)).is_dir()


def test_the_alertmanager_unit_gets_the_prometheus_units_alerts(chain):
    """The Alertmanager unit on ALERTMANAGER_PORT of the settings file, which the Prometheus unit
    sends its alerts to (tests/test_alert_routing.py routes a real alert through it)."""
    port = read_env_file(chain.conf)["ALERTMANAGER_PORT"]
    alertmanager = chain.start("quax-alertmanager.service")
    assert alertmanager.argv == ["/bin/bash", str(ops_dir() / "alertmanager" / "run.sh")]
    wait_until(lambda: alertmanager.alive() and get(f"http://127.0.0.1:{port}/-/ready"), 60,
               f"the Alertmanager unit on port {port}", interval_s=0.5)
    assert (chain.state / "alertmanager" / port).is_dir()  # silences under the state directory
    answer = get(f"http://127.0.0.1:{chain.settings.prometheus_port}/api/v1/alertmanagers")
    assert answer and f'"url":"http://127.0.0.1:{port}/api/v2/alerts"' in answer[1]


def test_every_unit_stops_cleanly_on_sigterm_the_broker_last(chain):
    for name in [n for n in chain.services if n != "quax-broker.service"] + ["quax-broker.service"]:
        service = chain.services[name]
        if not service.running():
            assert service.stopped_cleanly(service.proc.returncode), f"{name}:\n{service.tail()}"
            continue
        code = service.stop()
        assert service.stopped_cleanly(code), f"{name}: exit {code}:\n{service.tail()}"
    assert not _listening(chain.kafka_port)
    assert _broker_jvm(chain.state) is None  # broker.sh stopped its JVM and waited for it
