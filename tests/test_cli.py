"""The quax command: settings from flags and environment, clear errors, no surprises at import."""

import subprocess
import sys

from quax_faust.settings import Settings


def quax(*args, env=None):
    return subprocess.run([sys.executable, "-m", "quax_faust.tools.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_a_busy_metrics_port_does_not_stop_the_producer(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = quax("produce", "--source", str(tmp_path / "missing"), "--run", "r1",
                   "--producer-metrics-port", str(port))
    assert "producer metrics not served" in out.stderr
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_produce_with_loop_flag_reaches_our_own_checks(tmp_path):
    # faust reads --loop from sys.argv when imported; the producer must not import it.
    out = quax("produce", "--source", str(tmp_path / "missing"), "--run", "r1", "--loop", "3")
    assert out.returncode == 2
    assert "DAQ directory" in out.stderr and "does not exist" in out.stderr
    assert "ModuleNotFoundError" not in out.stderr


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


def test_password_is_not_printed():
    out = quax("settings", env={"QUAX_SASL_PASSWORD": "hunter2", "PATH": "/usr/bin"})
    assert "hunter2" not in out.stdout and "********" in out.stdout


def test_bad_setting_value_is_explained():
    out = quax("settings", "--slice-len", "many")
    assert out.returncode == 2 and "slice_len: 'many' is not a valid int" in out.stderr


def test_a_misspelt_setting_in_the_environment_is_reported():
    out = quax("settings", env={"QUAX_SLICES_PER_MESAGE": "64", "QUAX_DEMO_FILES": "3", "PATH": "/usr/bin"})
    assert out.returncode == 0
    assert "QUAX_SLICES_PER_MESAGE is not a quax setting" in out.stderr
    assert "did you mean QUAX_SLICES_PER_MESSAGE?" in out.stderr
    assert "QUAX_DEMO_FILES" not in out.stderr, "the demo script's own knobs are not settings"
