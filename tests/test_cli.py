"""The quax command: settings from flags and environment, short help, clear errors with the documented
exit codes, no surprises at import."""

import argparse
import fcntl
import json
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import types
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points, version
from urllib.parse import parse_qs, urlparse

import pytest

from quax_faust.settings import Settings
from quax_faust.tools import cli


def quax(*args, env=None):
    return subprocess.run([sys.executable, "-m", "quax_faust.tools.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (choices,) = [a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return choices


def settings_values(stdout: str) -> dict[str, str]:
    """name -> value from `quax settings` (the lines that are not indented docstrings)."""
    rows = [line.split() for line in stdout.splitlines() if line and not line.startswith(" ")]
    return {row[0]: row[2] if len(row) == 3 else "" for row in rows}


def test_a_busy_metrics_port_does_not_stop_the_producer(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = quax("produce", "--source", str(tmp_path / "missing"), "--run", "r1",
                   "--producer-metrics-port", str(port))
    assert "producer metrics not served" in out.stderr
    assert out.returncode == 3 and "does not exist" in out.stderr  # a missing directory: a runtime error


def test_produce_with_loop_flag_reaches_our_own_checks(tmp_path):
    # faust reads --loop from sys.argv when imported; the producer must not import it.
    out = quax("produce", "--source", str(tmp_path / "missing"), "--run", "r1", "--loop", "3")
    assert out.returncode == 3
    assert "DAQ directory" in out.stderr and "does not exist" in out.stderr
    assert "ModuleNotFoundError" not in out.stderr and "Traceback" not in out.stderr


def test_bad_run_id_and_bad_pace_are_explained(tmp_path):
    (tmp_path / "d").mkdir()
    out = quax("produce", "--source", str(tmp_path / "d"), "--run", "a run")
    assert out.returncode == 2 and "run id 'a run'" in out.stderr
    out = quax("produce", "--source", str(tmp_path / "d"), "--run", "r", "--pace", "fast")
    assert out.returncode == 2 and "pace 'fast'" in out.stderr


def test_flags_beat_environment_beat_defaults():
    env = {"QUAX_SLICE_LEN": "1024", "QUAX_BROKER": "10.0.0.1:9092", "PATH": "/usr/bin"}
    out = quax("settings", "--broker", "127.0.0.1:19092", env=env)
    lines = dict(line.split()[0::2] for line in out.stdout.splitlines() if len(line.split()) == 3)
    assert lines["slice_len"] == "1024" and lines["broker"] == "127.0.0.1:19092"
    assert lines["sample_rate_hz"] == str(Settings().sample_rate_hz)


def test_set_and_setting_flags_beat_the_environment_and_the_last_one_wins():
    env = {"QUAX_SLICE_LEN": "1024", "QUAX_WORKERS": "3", "PATH": "/usr/bin"}
    out = quax("settings", "--set", "slice_len=2048", "--workers", "5", "--set", "workers=6",
               "--set", "web-port-base=7000", env=env)
    assert out.returncode == 0, out.stderr
    values = settings_values(out.stdout)
    assert (values["slice_len"], values["workers"], values["web_port_base"]) == ("2048", "6", "7000")
    assert values["sample_rate_hz"] == str(Settings().sample_rate_hz)


def test_the_command_passes_settings_and_leaves_the_environment_alone(capsys):
    before = dict(os.environ)
    assert cli.main(["settings", "--broker", "192.0.2.1:9092", "--set", "partitions=8"]) == 0
    assert os.environ == before  # settings reach the commands as an object, never through os.environ
    values = settings_values(capsys.readouterr().out)
    assert values["broker"] == "192.0.2.1:9092" and values["partitions"] == "8"


def test_password_is_not_printed():
    out = quax("settings", env={"QUAX_SASL_PASSWORD": "hunter2", "PATH": "/usr/bin"})
    assert "hunter2" not in out.stdout and "********" in out.stdout


def test_bad_setting_value_is_explained():
    out = quax("settings", "--slice-len", "many")
    assert out.returncode == 2 and "slice_len: 'many' is not a valid int" in out.stderr
    out = quax("settings", "--set", "slice_len=many")
    assert out.returncode == 2 and "slice_len: 'many' is not a valid int" in out.stderr
    out = quax("settings", env={"QUAX_SLICE_LEN": "many", "PATH": "/usr/bin"})
    assert out.returncode == 2 and "in the environment: setting slice_len: 'many' is not a valid int" in out.stderr


def test_a_misspelt_setting_in_the_environment_is_reported():
    out = quax("settings", env={"QUAX_SLICES_PER_MESAGE": "64", "QUAX_DEMO_FILES": "3", "PATH": "/usr/bin"})
    assert out.returncode == 0
    assert "QUAX_SLICES_PER_MESAGE is not a quax setting" in out.stderr
    assert "did you mean QUAX_SLICES_PER_MESSAGE?" in out.stderr
    assert "QUAX_DEMO_FILES" not in out.stderr, "the demo script's own knobs are not settings"


def test_quax_settings_shows_each_setting_with_its_variable_value_and_docstring():
    out = quax("settings", env={"QUAX_SLICE_LEN": "1024", "PATH": "/usr/bin"})
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines if not line.startswith(" ")] == [f.name for f in fields(Settings)]
    row = next(i for i, line in enumerate(lines) if line.startswith("slice_len "))
    assert lines[row].split() == ["slice_len", "QUAX_SLICE_LEN", "1024"]
    assert lines[row + 1].startswith("    Samples per FFT slice (3 x 1024)")
    # a docstring over several source lines comes out whole, in one paragraph
    text = " ".join(out.stdout.split())
    assert ("How long the producer waits for the broker (metadata, room in a batch, acks) before it calls "
            "the broker unreachable") in text


def test_each_command_help_is_short_and_lists_its_own_options():
    commands = subcommands()
    assert {"synth", "topics", "produce", "worker", "settings", "export", "analyse", "bench",
            "reprocess", "verify"} <= set(commands)
    for name, parser in commands.items():
        text = parser.format_help()
        assert len(text.splitlines()) < 60, f"quax {name} --help: {len(text.splitlines())} lines"
        assert "--set NAME=VALUE" in text and "quax settings" in text and "--help-all" in text, name
        assert "-v, --verbose" in text and "-q, --quiet" in text, name
        for f in fields(Settings):  # the settings are not listed one by one ...
            assert f"  --{f.name.replace('_', '-')} V" not in text, (name, f.name)
        assert "--slice-len" in parser._option_string_actions, name  # ... but their flags still work
    out = quax("produce", "--help")
    assert out.returncode == 0 and len(out.stdout.splitlines()) < 35, out.stdout
    for flag in ("--source", "--run", "--pace", "--loop", "--strict", "--follow", "--quarantine"):
        assert flag in out.stdout
    assert "--slice-len" not in out.stdout and "--sasl-password" not in out.stdout


def test_help_all_adds_every_setting_with_its_default_and_meaning():
    out = quax("export", "--help-all")
    assert out.returncode == 0
    assert "--run RUN" in out.stdout
    for f in fields(Settings):
        assert f"\n{f.name} " in out.stdout, f.name
    assert "Kafka bootstrap servers, host:port[,host:port...]." in out.stdout
    assert f"default {Settings().slice_len}" in out.stdout


def test_top_level_help_documents_the_exit_codes():
    out = quax("--help")
    assert out.returncode == 0
    codes = out.stdout[out.stdout.index("exit codes:"):]
    for line in ("0    done", "1    a verdict", "2    usage error", "3    runtime error"):
        assert line in codes


def test_version_is_the_installed_package_version():
    out = quax("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"quax {version('quax-stream')}"


def test_usage_errors_exit_2():
    assert quax("produce", "--no-such-flag").returncode == 2  # argparse's own
    assert quax("synth", "--out", "x", "--files", "many").returncode == 2
    out = quax("settings", "--set", "slice_lenn=1")
    assert out.returncode == 2 and "did you mean slice_len?" in out.stderr
    out = quax("synth", "--out", "x", "--tone-hz", "1000")
    assert out.returncode == 2 and "give one --tone-amplitude per --tone-hz" in out.stderr


def test_runtime_errors_exit_3(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on: no worker answers
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = quax("export", "--run", "r1", "--out", str(tmp_path / "r1.npz"), "--web-port-base", str(port),
               "--workers", "1", "--http-timeout-s", "2")
    assert out.returncode == 3, out.stderr
    assert "no worker answered" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r1.npz").exists()


@pytest.mark.parametrize("flags, ours, libraries", [([], logging.INFO, logging.INFO),
                                                     (["-v"], logging.DEBUG, logging.INFO),
                                                     (["--quiet"], logging.WARNING, logging.WARNING)])
def test_verbose_and_quiet_set_the_log_level(flags, ours, libraries, capsys):
    loggers = [logging.getLogger(name) for name in ("", *cli.OUR_LOGGERS)]
    saved = [logger.level for logger in loggers]
    try:
        for argv in ([*flags, "settings"], ["settings", *flags]):  # before or after the command
            assert cli.main(argv) == 0
            for name in ("quax", "quax_faust.ingest.producer", "spark_batch.job"):
                assert logging.getLogger(name).getEffectiveLevel() == ours, (argv, name)
            for name in ("aiokafka", "py4j.clientserver"):  # -v does not flood the log with theirs
                assert logging.getLogger(name).getEffectiveLevel() == libraries, (argv, name)
    finally:
        for logger, level in zip(loggers, saved):
            logger.setLevel(level)


@pytest.mark.parametrize("flags, loglevel", [([], "info"), (["-q"], "warn"), (["--loglevel", "ERROR", "-v"], "error")])
def test_worker_gets_the_settings_object_with_the_flags(flags, loglevel, monkeypatch):
    calls = []
    worker = types.ModuleType("quax_faust.stream.worker")
    worker.run_worker = lambda settings, index, loglevel: calls.append((settings, index, loglevel))
    monkeypatch.setitem(sys.modules, "quax_faust.stream.worker", worker)  # records, runs no Faust
    monkeypatch.setenv("QUAX_WEB_PORT_BASE", "7100")
    before = dict(os.environ)
    root = logging.getLogger()
    saved = root.level
    try:
        assert cli.main(["worker", "--index", "2", "--broker", "192.0.2.1:9092", *flags]) == 0
    finally:
        root.setLevel(saved)
    ((settings, index, level),) = calls
    assert (settings.broker, settings.web_port_base, index, level) == ("192.0.2.1:9092", 7100, 2, loglevel)
    assert os.environ == before


def test_spark_commands_come_from_the_entry_point():
    (spark,) = [e for e in entry_points(group=cli.COMMANDS_GROUP) if e.name == "spark"]
    assert spark.value == "spark_batch.cli:register"
    commands = subcommands()
    assert commands["verify"].get_default("func").__module__ == "spark_batch.cli"
    assert commands["reprocess"].get_default("func").__module__ == "spark_batch.cli"


def test_progress_bar_only_on_a_terminal(tmp_path):
    args = [sys.executable, "-m", "quax_faust.tools.cli", "synth", "--files", "3", "--samples", "4096"]
    piped = subprocess.run([*args, "--out", str(tmp_path / "piped")], capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "3/3" not in piped.stderr and "\r" not in piped.stderr
    assert piped.stdout.count("wrote duck_i_") == 3

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        proc = subprocess.Popen([*args, "--out", str(tmp_path / "tty")], stdout=subprocess.PIPE,
                                stderr=follower, text=True)
        os.close(follower)
        stderr = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            stderr += chunk
        stdout = proc.communicate(timeout=120)[0]
    finally:
        os.close(leader)
    assert proc.returncode == 0
    assert "synth: 100%" in stderr.decode() and "3/3" in stderr.decode()
    assert stdout.count("wrote duck_i_") == 3  # the per-file lines still go to stdout


def test_export_reports_its_paging_progress():
    """fetch_run calls progress(files fetched, files in the run) after each page of the files view."""
    from quax_faust.client import fetch_run

    n_files, n_bins = 5, 4
    file_doc = {"mean": [1.0] * n_bins, "std": [0.1] * n_bins, "n_slices": 2, "latency_s": 0.5}

    class Views(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/quax/runs/r/":
                doc = {"run": "r", "n_files": n_files, "n_slices": 2 * n_files, "frequency_hz": list(range(n_bins)),
                       "mean": [1.0] * n_bins, "sem": [0.0] * n_bins, "std": [0.1] * n_bins,
                       "file_indices": list(range(n_files)), "sample_rate_hz": float(n_bins)}
            else:
                query = parse_qs(url.query)
                start, limit = int(query["start"][0]), int(query["limit"][0])
                doc = {"files": [{"file_index": i, **file_doc} for i in range(start, min(start + limit, n_files))]}
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Views)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = Settings(web_port_base=server.server_address[1], workers=1)
        calls = []
        data = fetch_run(settings, "r", page_size=2, progress=lambda done, total: calls.append((done, total)))
    finally:
        server.shutdown()
        server.server_close()
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert data["file_index"].tolist() == [0, 1, 2, 3, 4]
