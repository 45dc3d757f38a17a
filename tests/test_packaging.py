"""`pip install .` without the checkout: the wheel carries the code and the ops/ files the code reads,
and the installed `quax` runs from any directory, its runtime data under ./var (or QUAX_VAR_DIR).

The wheel is built from a copy of the sources (the shared tree gets no build/ or egg-info) with this
venv's setuptools, and installed with --no-deps into a new venv. That venv borrows the dependencies
of this one through a .pth line written after the install: a directory named in a .pth file joins
sys.path, but its own .pth files do not run, so the editable install of the checkout stays out.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from quax_faust.tools.launch import free_port

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("quax_faust", "spark_batch", "dashboard")
SHIPPED_OPS = ("kafka", "prometheus", "alertmanager", "grafana", "spark", "systemd")
"""The ops/ folders the wheel carries as quax_faust/ops, with ops/install-services.sh (ops/setup.sh and the
demo stay in the checkout)."""
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@dataclass
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path
    work: Path
    """The working directory of every command: no checkout in it or above it."""

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("QUAX_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        return {**env, "PYTHONNOUSERSITE": "1", **extra}

    def run(self, program: str, *args: str, timeout: float = 120, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.venv / "bin" / program), *args], cwd=self.work, env=self.env(**extra_env),
                              capture_output=True, text=True, timeout=timeout)

    def python(self, code: str, timeout: float = 120, **extra_env: str) -> str:
        done = self.run("python", "-c", code, timeout=timeout, **extra_env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def quax(self, *args: str, **extra_env: str) -> str:
        done = self.run("quax", *args, **extra_env)
        assert done.returncode == 0, f"quax {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
        return done.stdout


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    # The build runs offline with this venv's setuptools: it must be the one pyproject asks for.
    build_requirement = Requirement(PYPROJECT["build-system"]["requires"][0])
    setuptools_version = importlib.metadata.version("setuptools")
    assert build_requirement.specifier.contains(setuptools_version), (
        f"setuptools {setuptools_version} in {sys.prefix} does not meet {build_requirement}: run ops/setup.sh")

    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in (*PACKAGES, "ops"):
        shutil.copytree(REPO / name, src / name, ignore=junk)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), "./src", cwd=tmp)
    (wheel,) = (tmp / "dist").glob("quax_stream-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # Installed before the .pth exists: pip must not see (and replace) the checkout's editable install.
    _pip("--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", str(wheel), cwd=tmp)
    site_packages = Path(subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    borrowed = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages / "zz_borrowed_dependencies.pth").write_text("".join(f"{path}\n" for path in borrowed))

    work = tmp / "work"
    work.mkdir()
    return Installed(wheel, venv, site_packages, work)


def test_the_wheel_holds_every_module_of_the_checkout_and_the_ops_files(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                assert str(path.relative_to(REPO)) in names, f"{path.relative_to(REPO)}: its package is not in " \
                                                             "pyproject.toml's [tool.setuptools] packages"
    for folder in SHIPPED_OPS:
        for path in sorted((REPO / "ops" / folder).rglob("*")):
            if path.is_file():
                assert f"quax_faust/{path.relative_to(REPO)}" in names, path
    assert "quax_faust/ops/install-services.sh" in names
    assert not any(name.startswith("quax_faust/ops/") and name.endswith(("setup.sh", "demo.sh")) for name in names)


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    found = json.loads(installed.python(
        "import json, sys, quax_faust, spark_batch, dashboard\n"
        "print(json.dumps({'modules': [m.__file__ for m in (quax_faust, spark_batch, dashboard)], 'path': sys.path}))"))
    for module_file in found["modules"]:
        assert Path(module_file).is_relative_to(installed.site_packages), module_file
    assert str(REPO) not in found["path"]


def test_the_wheel_declares_the_runtime_dependencies_and_the_extras(installed):
    requires = json.loads(installed.python(
        "import importlib.metadata, json; print(json.dumps(importlib.metadata.requires('quax-stream')))"))
    core = {Requirement(r).name.lower() for r in requires if "extra ==" not in r}
    extras = {Requirement(r).name.lower(): str(Requirement(r).marker) for r in requires if "extra ==" in r}
    assert "pyyaml" in core  # tools/prometheus.py
    assert {"honcho", "matplotlib", "playwright"}.isdisjoint(core)
    assert 'extra == "demo"' in extras["honcho"]
    assert 'extra == "bench"' in extras["matplotlib"]
    assert 'extra == "test"' in extras["playwright"]
    # Every core dependency is satisfied by what the new venv sees (this venv's packages).
    missing = installed.python(
        "import importlib.metadata as m\nfrom packaging.requirements import Requirement\n"
        "for r in m.requires('quax-stream'):\n"
        "    req = Requirement(r)\n"
        "    if req.marker is None and not req.specifier.contains(m.version(req.name), prereleases=True):\n"
        "        print(req)\n")
    assert missing == ""


def test_quax_version(installed):
    done = installed.run("quax", "--version")
    if done.returncode != 0 and "--version" not in (REPO / "quax_faust" / "tools" / "cli.py").read_text():
        pytest.xfail("quax_faust/tools/cli.py has no --version yet")
    assert done.returncode == 0, done.stderr
    assert PYPROJECT["project"]["version"] in done.stdout + done.stderr


def _settings(installed: Installed, **env: str) -> dict[str, str]:
    """name -> value from `quax settings` (rows "name  QUAX_NAME  value", docstrings indented below)."""
    rows = [line.split(None, 2) for line in installed.quax("settings", **env).splitlines() if line[:1].strip()]
    return {row[0]: row[2] if len(row) == 3 else "" for row in rows}


def test_quax_settings_puts_runtime_data_under_the_working_directory(installed, tmp_path):
    settings = _settings(installed)
    assert settings["var_dir"] == str(installed.work / "var")
    assert settings["kafka_lib_dir"] == str(installed.work / "var" / "kafka-lib")
    assert settings["spark_jars_dir"] == str(installed.work / "var" / "spark-jars")
    moved = _settings(installed, QUAX_VAR_DIR=str(tmp_path / "var"), QUAX_KAFKA_LIB_DIR=str(tmp_path / "jars"))
    assert (moved["var_dir"], moved["kafka_lib_dir"]) == (str(tmp_path / "var"), str(tmp_path / "jars"))


def test_quax_synth_writes_a_pair(installed, tmp_path):
    installed.quax("synth", "--out", str(tmp_path / "daq"), "--files", "1", "--samples", "8192")
    written = sorted(p.name for p in (tmp_path / "daq").iterdir())
    assert written == ["duck_i_00000.dat", "duck_q_00000.dat"]
    assert all((tmp_path / "daq" / name).stat().st_size == 8192 * 4 for name in written)  # float32


@pytest.mark.parametrize("command", ["worker", "produce", "topics", "export", "analyse", "bench", "reprocess"])
def test_every_command_answers_help(installed, command):
    assert "usage: quax " + command in installed.quax(command, "--help")


def test_the_ops_files_resolve_inside_the_installed_package(installed):
    found = json.loads(installed.python(
        "import json\n"
        "from quax_faust.ops_files import ops_dir\n"
        "from quax_faust.settings import Settings\n"
        "from quax_faust.tools import launch, prometheus\n"
        "config = prometheus.render_config(Settings())\n"
        "print(json.dumps({'ops': str(ops_dir()), 'broker': str(launch.BROKER_SCRIPT),\n"
        "                  'prometheus': str(prometheus.CONFIG), 'rules': config['rule_files']}))"))
    ops = Path(found["ops"])
    assert ops == installed.site_packages / "quax_faust" / "ops"
    broker = Path(found["broker"])
    assert broker == ops / "kafka" / "broker.sh" and os.access(broker, os.X_OK)
    for template in ("server.properties.in", "log4j2.properties", "pom.xml"):
        assert (broker.parent / template).is_file(), template
    assert Path(found["prometheus"]) == ops / "prometheus" / "prometheus.yml"
    assert [Path(p) for p in found["rules"]] == [ops / "prometheus" / "rules.yml"]
    assert all(Path(p).is_file() for p in found["rules"])
    assert (ops / "grafana" / "dashboards" / "quax-stream.json").is_file()


def _checkout_kafka_lib() -> Path:
    """The checkout's Kafka jars (ops/setup.sh), skipping when they do not match ops/kafka/pom.xml
    (broker.sh would fetch them again from Maven Central)."""
    lib = REPO / "var" / "kafka-lib"
    want = hashlib.sha256((REPO / "ops" / "kafka" / "pom.xml").read_bytes()).hexdigest()
    stamp = lib / ".pom.sha256"
    if not stamp.is_file() or stamp.read_text().strip() != want:
        pytest.skip(f"no Kafka jars for ops/kafka/pom.xml in {lib}: run ops/setup.sh")
    return lib


@pytest.mark.broker
@pytest.mark.slow
def test_installed_broker_worker_and_producer_fold_a_file(installed, tmp_path):
    """The installed package starts its shipped broker on the jars named by QUAX_KAFKA_LIB_DIR, a
    `quax worker` and a `quax produce` from it fold a file, and both keep their data in ./var."""
    lib = _checkout_kafka_lib()
    uid = uuid.uuid4().hex[:8]
    port, web_port = free_port(2), free_port()
    env = dict(QUAX_KAFKA_LIB_DIR=str(lib), QUAX_BROKER=f"127.0.0.1:{port}", QUAX_APP_ID=f"pkg-{uid}",
               QUAX_SLICES_TOPIC=f"slices-{uid}", QUAX_SPECTRA_TOPIC=f"spectra-{uid}",
               QUAX_CANDIDATES_TOPIC=f"candidates-{uid}", QUAX_WORKERS="1", QUAX_WEB_PORT_BASE=str(web_port),
               QUAX_PRODUCER_METRICS_PORT="0")
    broker = ("from pathlib import Path\nfrom quax_faust.tools.launch import Broker\n"
              f"Broker(port={port}, data_dir=Path({str(tmp_path / 'kafka')!r})).{{}}()\n")
    installed.python(broker.format("start"), timeout=300, **env)
    worker = None
    try:
        installed.quax("synth", "--out", str(tmp_path / "daq"), "--files", "1", "--samples", str(4 * 3072))
        with open(tmp_path / "worker.log", "wb") as log:
            worker = subprocess.Popen([str(installed.venv / "bin" / "quax"), "worker", "--index", "0",
                                       "--loglevel", "warn"], cwd=installed.work, env=installed.env(**env),
                                      stdout=log, stderr=subprocess.STDOUT)
        _wait_for_json(f"http://127.0.0.1:{web_port}/quax/health/", worker, tmp_path / "worker.log",
                       lambda doc: sum(tp.startswith(f"slices-{uid}/") for tp in doc["assigned"]) == 4)
        installed.quax("produce", "--source", str(tmp_path / "daq"), "--run", "pkg", "--pace", "max", **env)
        _wait_for_json(f"http://127.0.0.1:{web_port}/quax/runs/", worker, tmp_path / "worker.log",
                       lambda doc: any(r["run"] == "pkg" and r["n_files"] == 1 for r in doc["runs"]))
        assert (installed.work / "var" / "workers" / "0").is_dir()
        assert (installed.work / "var" / "producer" / "pkg.json").is_file()
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        installed.python(broker.format("stop"), timeout=300, **env)


def _wait_for_json(url: str, worker: subprocess.Popen, log: Path, done, timeout_s: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    last: object = "no answer"
    while time.monotonic() < deadline:
        assert worker.poll() is None, f"quax worker exited {worker.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                last = json.loads(answer.read())
            if done(last):
                return last
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url}: last answer {last!r}; worker log:\n{log.read_text()[-3000:]}")
