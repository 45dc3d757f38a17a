"""Drills of the detector alerts on the real stack: a broker, a Faust worker, the producer and Debian's
Prometheus with the shipped alert rules, fed a synthetic run that goes wrong the ways a detector does.

One run, four acts (about 1 min):

1. four quiet files with a steady line at 195 kHz: the line becomes a persistent candidate
   (QuaxNewPersistentCandidate); no gain jump, no noise rise;
2. two files with the gain 15 % up: QuaxGainJumped (a step over 10 %), not QuaxNoiseRose (1.15);
3. four files creeping up by 6 % each (no step over 10 %): the noise passes 1.2x the run's start,
   QuaxNoiseRose;
4. the DAQ stops: QuaxDaqStopped.

The rules are ops/prometheus/rules.yml as shipped (promtool tests them in test_metrics.py), except
two constants a drill cannot wait for: QuaxDaqStopped's 42 s becomes 5 s and QuaxNoiseRose's 1 min
`for` becomes 2 s. The worker's figures are also checked against the pure computation
(quax_faust/search/detector_figures.py) on the same files.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import numpy as np
import pytest
import yaml

from quax_faust.core import daq, dsp, synth
from quax_faust.ingest.producer import produce_directory
from quax_faust.search import detector_figures
from quax_faust.search_settings import config_from_settings
from quax_faust.tools.launch import free_port, wait_for_run
from quax_faust.tools.prometheus import RULES, Prometheus
from tests.conftest import wait_until

RUN = "drill"
SLICE_LEN, FS = 3072, 2e6
N_SAMPLES = SLICE_LEN * 64  # 64 slices per file
TONE = (300 * FS / SLICE_LEN, 0.1)  # on a bin centre, ~100 sigma in one file
POWER_GAIN = {4: 1.15, 5: 1.15, 6: 1.15 * 1.06, 7: 1.15 * 1.06 ** 2, 8: 1.15 * 1.06 ** 3, 9: 1.15 * 1.06 ** 4}
DRILL_CONSTANTS = {"QuaxDaqStopped": ("> 42", "> 5"), "QuaxNoiseRose": None}

pytestmark = [pytest.mark.broker,
              pytest.mark.skipif(shutil.which("prometheus") is None,
                                 reason="Debian's prometheus package is not installed (ops/setup.sh)")]


def drill_rules() -> dict:
    """rules.yml with the drill's two constants, checked to be where the shipped rules have them."""
    rules = yaml.safe_load(RULES.read_text())
    detector = next(g for g in rules["groups"] if g["name"] == "quax-detector-alerts")
    alerts = {r["alert"]: r for r in detector["rules"]}
    assert set(alerts) == {"QuaxDaqStopped", "QuaxGainJumped", "QuaxNoiseRose", "QuaxNewPersistentCandidate"}
    shipped, drill = DRILL_CONSTANTS["QuaxDaqStopped"]
    assert alerts["QuaxDaqStopped"]["expr"].count(shipped) == 1
    alerts["QuaxDaqStopped"]["expr"] = alerts["QuaxDaqStopped"]["expr"].replace(shipped, drill)
    assert alerts["QuaxNoiseRose"]["for"] == "1m"
    alerts["QuaxNoiseRose"]["for"] = "2s"
    return rules


class DrillPrometheus(Prometheus):
    """The test's Prometheus, on the drill's copy of the rules."""

    def command(self) -> list[str]:
        command = super().command()
        rules_path = self.data_dir / "rules.yml"
        rules_path.write_text(yaml.safe_dump(drill_rules(), sort_keys=False))
        config_path = self.data_dir / "prometheus.yml"
        config = yaml.safe_load(config_path.read_text())
        config["rule_files"] = [str(rules_path)]
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return command


def write_file(directory, k: int) -> np.ndarray:
    """File k of the drill run: noise, the line, the gain of its act."""
    samples = synth.synth_file(k, N_SAMPLES, synth.SynthModel(tones=(TONE,)), seed=17)
    samples *= np.float32(np.sqrt(POWER_GAIN.get(k, 1.0)))
    daq.write_pair(directory, k, samples)
    return samples


def expected_figures(samples: np.ndarray, settings) -> detector_figures.FileFigures:
    config = config_from_settings(settings)
    band = detector_figures.in_band(SLICE_LEN, FS, config.search_band_fraction, config.dc_exclude_hz)
    sums = dsp.power_sums(daq.whole_slices(samples, SLICE_LEN), FS)
    return detector_figures.file_figures(sums.power_sum / sums.n_slices, FS, band)


def poll(what: str, probe, timeout_s: float = 45.0):
    """probe() once it is truthy (every 0.5 s); an AssertionError naming `what` after timeout_s."""
    return wait_until(probe, timeout_s, what, interval_s=0.5)


def firing(prometheus, alertname: str) -> list[dict]:
    return [a for a in prometheus.alerts() if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def test_drill_rules_keep_the_shipped_expressions():
    shipped = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    drilled = {r["alert"]: r for g in drill_rules()["groups"] for r in g["rules"] if "alert" in r}
    for name, rule in shipped.items():
        if name == "QuaxDaqStopped":
            assert drilled[name]["expr"] == rule["expr"].replace("> 42", "> 5")
        elif name == "QuaxNoiseRose":
            assert {**drilled[name], "for": rule["for"]} == rule
        else:
            assert drilled[name] == rule, name


def test_each_detector_alert_fires_on_the_real_stack(make_stack, tmp_path):
    settings, workers = make_stack(workers=1, producer_metrics_port=free_port(), prometheus_port=free_port())
    prometheus = DrillPrometheus(settings, tmp_path / "prometheus", scrape_interval_s=1).start()
    directory = tmp_path / "daq"
    files = {k: write_file(directory, k) for k in range(10)}
    selector = f'{{run="{RUN}"}}'

    def send(indices: range) -> None:
        report = asyncio.run(produce_directory(settings, directory, RUN, "max", progress=False, indices=indices))
        assert report.files_sent == len(indices)
        wait_for_run(settings, RUN, indices.stop)
        poll(f"Prometheus to see {indices.stop} files of {RUN}",
             lambda: (prometheus.value(f"max(quax_run_inband_power_step_ratio_count{selector})") or 0)
             >= indices.stop - 1)

    def figure(metric: str) -> float | None:
        return prometheus.value(f"max({metric}{selector})")

    try:
        poll("Prometheus to scrape the worker", lambda: any(prometheus.targets_up().values()))

        # 1. A steady line: a candidate from the first file, persistent after the third search.
        send(range(0, 4))
        alert = poll("QuaxNewPersistentCandidate", lambda: firing(prometheus, "QuaxNewPersistentCandidate"))
        assert alert[0]["labels"]["run"] == RUN and alert[0]["labels"]["severity"] == "info"
        assert figure("quax_run_candidates") == 1 and figure("quax_run_persistent_candidates") == 1
        assert figure("quax_run_bins_over_threshold") >= 1
        assert figure("quax_run_noise_level_ratio") == pytest.approx(1.0, abs=0.03)
        assert not firing(prometheus, "QuaxGainJumped") and not firing(prometheus, "QuaxNoiseRose")

        # 2. The gain steps up 15 %: a gain jump, not (yet) a noise rise.
        send(range(4, 6))
        alert = poll("QuaxGainJumped", lambda: firing(prometheus, "QuaxGainJumped"))
        assert alert[0]["labels"]["run"] == RUN
        assert figure("quax_run_noise_level_ratio") == pytest.approx(1.15, abs=0.03)
        time.sleep(3)  # longer than the drill's `for` of QuaxNoiseRose
        assert not firing(prometheus, "QuaxNoiseRose")

        # 3. The noise creeps up 6 % a file: past 1.2x the start, with no step over 10 %.
        send(range(6, 10))
        alert = poll("QuaxNoiseRose", lambda: firing(prometheus, "QuaxNoiseRose"))
        assert alert[0]["labels"]["run"] == RUN and float(alert[0]["value"]) > 1.2
        steps_over = prometheus.value(f"sum(quax_run_inband_power_step_ratio_count{selector})"
                                      f" - sum(quax_run_inband_power_step_ratio_bucket{{run=\"{RUN}\",le=\"0.1\"}})")
        assert steps_over == 1  # files 3 -> 4 only
        assert figure("quax_run_inband_power_step_ratio_count") == 9  # each consecutive pair once

        # The worker's figures are the pure computation on the same files.
        last, first = expected_figures(files[9], settings), expected_figures(files[0], settings)
        assert figure("quax_run_inband_power_volts_squared") == pytest.approx(last.inband_power_v2, rel=1e-5)
        assert figure("quax_run_noise_level_ratio") == pytest.approx(last.noise_psd / first.noise_psd, rel=1e-5)

        # 4. The DAQ stops.
        alert = poll("QuaxDaqStopped", lambda: firing(prometheus, "QuaxDaqStopped"), timeout_s=30)
        assert alert[0]["labels"]["run"] == RUN and alert[0]["labels"]["severity"] == "critical"
        assert float(alert[0]["value"]) > 5
    finally:
        prometheus.stop()
        workers.stop()
