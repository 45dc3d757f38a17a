"""Run Debian's Prometheus for the chain and ask it questions (`make demo`, tests, `quax bench`).

ops/prometheus/prometheus.yml is the configuration for the default ports; ``render_config`` gives a
copy with the ports of any Settings (workers at web_port_base + k, the producer at
producer_metrics_port) and the Alertmanager it sends alerts to (ops/alertmanager/run.sh), and
``Prometheus`` runs the server on 127.0.0.1 with its data under var/.
The rules (ops/prometheus/rules.yml) are used in place (an installed wheel ships ops/ as
quax_faust/ops: ops_files.py). docs/metrics.md explains the metrics.

    python -m quax_faust.tools.prometheus run      # what ops/prometheus/run.sh (Procfile) does

`run` sends the alerts to ALERTMANAGER_HOST:ALERTMANAGER_PORT (127.0.0.1:9095, where
ops/alertmanager/run.sh listens with the same variables; port 0: no alerts are sent).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from quax_faust.ops_files import ops_dir
from quax_faust.settings import Settings

OPS_DIR = ops_dir() / "prometheus"
CONFIG = OPS_DIR / "prometheus.yml"
RULES = OPS_DIR / "rules.yml"


def render_config(settings: Settings, scrape_interval_s: float | None = None,
                  alertmanager: str | None = None) -> dict:
    """ops/prometheus/prometheus.yml with the targets, interval and rule paths of ``settings``,
    sending alerts to the Alertmanager at ``alertmanager`` ("host:port"; None: to none)."""
    config = yaml.safe_load(CONFIG.read_text())
    if alertmanager is None:
        del config["alerting"]
    else:
        config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    interval_s = scrape_interval_s or settings.prometheus_scrape_interval_s
    config["global"].update(scrape_interval=_duration(interval_s), evaluation_interval=_duration(interval_s),
                            scrape_timeout=_duration(min(4.0, 0.8 * interval_s)))
    config["rule_files"] = [str(OPS_DIR / name) for name in config["rule_files"]]
    host = settings.web_host
    targets = {  # each worker at its own host (web_hosts), else web_host
        "quax-workers": [f"{settings.worker_host(k)}:{settings.web_port_base + k}" for k in range(settings.workers)],
        "quax-producer": [f"{host}:{settings.producer_metrics_port}"],
        "quax-campaign": [f"{host}:{settings.campaign_port}"],
        "prometheus": [f"{host}:{settings.prometheus_port}"],
    }
    for job in config["scrape_configs"]:
        if job["job_name"] not in targets:
            raise ValueError(f"{CONFIG}: unknown job {job['job_name']!r}; expected {sorted(targets)}")
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    return config


def _duration(seconds: float) -> str:
    """A Prometheus duration (whole units only: '1500ms', not '1.5s')."""
    return f"{max(1, round(seconds * 1000))}ms"


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise RuntimeError("no `prometheus` on PATH: install Debian's package (ops/setup.sh does, as root)")
    return path


class PrometheusError(RuntimeError):
    """Prometheus answered with an error (bad query) or not at all."""


@dataclass
class Prometheus:
    """A Prometheus server on settings.web_host:settings.prometheus_port, data in data_dir."""

    settings: Settings
    data_dir: Path
    scrape_interval_s: float | None = None
    retention: str = "15d"
    alertmanager: str | None = None
    """host:port of the Alertmanager the alerts go to; None (the tests): nowhere."""
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.prometheus_port}"

    def command(self) -> list[str]:
        """Write the rendered config into data_dir; the command line that runs Prometheus on it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.data_dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(render_config(self.settings, self.scrape_interval_s,
                                                            self.alertmanager), sort_keys=False))
        return [prometheus_binary(), f"--config.file={config_path}",
                f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                f"--storage.tsdb.retention.time={self.retention}",
                f"--web.listen-address={self.settings.web_host}:{self.settings.prometheus_port}",
                "--log.level=warn"]

    def start(self, timeout_s: float = 60.0) -> "Prometheus":
        command = self.command()
        with open(self.data_dir / "prometheus.log", "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}; see {self.data_dir}/prometheus.log")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"prometheus not ready at {self.url} within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def api(self, path: str, **params) -> dict | list:
        """GET /api/v1/<path>?params; the ``data`` member of the answer."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        except OSError as exc:
            raise PrometheusError(f"{url}: {exc}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query: [{"metric": {...}, "value": [t, "v"]}, ...] (a scalar as one sample)."""
        data = self.api("query", query=expr, **({"time": f"{at:.3f}"} if at is not None else {}))
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[dict]:
        """Range query: [{"metric": {...}, "values": [[t, "v"], ...]}, ...]."""
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                        step=f"{step_s:g}")["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value of an expression that aggregates to one series, or None if empty."""
        result = self.query(expr, at)
        return float(result[0]["value"][1]) if result else None

    def targets_up(self) -> dict[str, bool]:
        """scrapeUrl -> is the last scrape healthy, for every active target."""
        return {t["scrapeUrl"]: t["health"] == "up" for t in self.api("targets")["activeTargets"]}

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]


def alertmanager_address(environ: Mapping[str, str]) -> str | None:
    """host:port of ALERTMANAGER_HOST (127.0.0.1) and ALERTMANAGER_PORT (9095), the variables
    ops/alertmanager/run.sh listens on; None for port 0."""
    host, port = environ.get("ALERTMANAGER_HOST", "127.0.0.1"), environ.get("ALERTMANAGER_PORT", "9095")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"ALERTMANAGER_PORT={port!r}: expected a port number (0: send no alerts)")
    return f"{host}:{int(port)}" if int(port) else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["run"]:
        print("usage: python -m quax_faust.tools.prometheus run   (settings from QUAX_* variables)", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    try:
        alertmanager = alertmanager_address(os.environ)
    except ValueError as exc:
        print(f"[prometheus] {exc}", file=sys.stderr)
        return 2
    server = Prometheus(settings, Path(settings.var_dir) / "prometheus" / str(settings.prometheus_port),
                        alertmanager=alertmanager)
    command = server.command()
    print(f"[prometheus] {server.url} scraping workers {settings.web_host}:{settings.web_port_base}.."
          f"{settings.web_port_base + settings.workers - 1} and the producer :{settings.producer_metrics_port}; "
          f"alerts to {alertmanager or 'nowhere (ALERTMANAGER_PORT=0)'}; data in {server.data_dir}", flush=True)
    os.execv(command[0], command)  # in the foreground, so honcho's signals reach Prometheus itself


if __name__ == "__main__":
    sys.exit(main())
