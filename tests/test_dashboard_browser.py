"""The live dashboard in a real headless Chromium, fed by a real broker and two Faust workers.

Files are sent one at a time and the page must show each one; at the end what the page holds
(read from its named ColumnDataSources) must equal what the workers' tables serve as JSON. The
workers are then stopped and restarted: the page must say "STALE since ..." and recover by itself,
showing the next file.
A screenshot is saved to test-artifacts/dashboard.png.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest

from quax_faust.core import daq, synth
from quax_faust.client import get_json
from quax_faust.tools.launch import free_port, settings_env, wait_for_run
from quax_faust.ingest.sender import DaqProducer
from quax_faust.settings import REPO_DIR, Settings
from dashboard import shaping
from tests.conftest import ARTIFACTS

playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.broker, pytest.mark.slow]  # a real browser on the live stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-extensions"]
N_FILES, N_SAMPLES, WATERFALL = 5, 65536, 4
ACQUIRED_AT_S = 1_764_470_400.0  # 2025-11-30 02:40:00 UTC: file k acquired 4.19 k s later
TONE_HZ = 250_000.0
RUN = "dash"
WAIT_MS = 120_000  # bounds on waiting for the page (a failure, not a speed requirement)


@contextmanager
def bokeh_server(settings: Settings, log_path):
    """`bokeh serve dashboard` on a free 127.0.0.1 port, with the stack's settings in its environment."""
    port = free_port()
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bokeh", "serve", "dashboard", "--address", "127.0.0.1", "--port",
             str(port), f"--allow-websocket-origin=127.0.0.1:{port}"],
            cwd=REPO_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/dashboard"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bokeh serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def length(name: str) -> str:
    return f"Bokeh.documents[0].get_model_by_name('{name}').get_length()"


def column(page, source: str, col: str) -> np.ndarray:
    return np.array(page.evaluate(
        f"() => Array.from(Bokeh.documents[0].get_model_by_name('{source}').data['{col}'])"), dtype=float)


def health_text(page) -> str:
    return page.evaluate("() => Bokeh.documents[0].get_model_by_name('health').text")


def send_file(settings: Settings, daq_dir, k: int) -> None:
    """Send one file pair (in a thread: Playwright's sync API owns this thread's event loop)."""
    pair = daq.pair_paths(daq_dir, k)

    async def send():
        async with DaqProducer(settings) as producer:
            await producer.send_file(RUN, k, *daq.read_channels(pair), daq.acquired_at_s(pair))
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, send()).result()


@pytest.fixture
def daq_dir(tmp_path):
    model = synth.SynthModel(tones=((TONE_HZ, 0.2),))
    for k in range(N_FILES + 1):
        pair = daq.write_pair(tmp_path / "daq", k, synth.synth_file(k, N_SAMPLES, model, seed=11))
        for path in (pair.i_path, pair.q_path):
            os.utime(path, (ACQUIRED_AT_S + 4.19 * k, ACQUIRED_AT_S + 4.19 * k))
    return tmp_path / "daq"


def test_dashboard_shows_the_tables_file_by_file_and_survives_a_worker_restart(make_stack, daq_dir, tmp_path):
    settings, workers = make_stack(workers=2, slices_per_message=8, dashboard_refresh_s=0.5,
                                   waterfall_files=WATERFALL)
    ARTIFACTS.mkdir(exist_ok=True)
    with bokeh_server(settings, tmp_path / "bokeh.log") as url, playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1580, "height": 1250}, accept_downloads=True)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector("canvas", state="attached")
        page.wait_for_function("() => Bokeh.documents.length > 0 && "
                               "Bokeh.documents[0].get_model_by_name('health').text.includes('WAITING')",
                               timeout=WAIT_MS)

        # File by file: the page shows each new file, and the waterfall keeps only the last WATERFALL.
        for k in range(N_FILES):
            send_file(settings, daq_dir, k)
            page.wait_for_function(f"() => {length('files')} === {k + 1}", timeout=WAIT_MS)
            assert page.evaluate(f"() => {length('waterfall')}") == min(k + 1, WATERFALL)
        wait_for_run(settings, RUN, N_FILES)

        # What the page holds is what the tables serve.
        run_doc = get_json(settings, f"/quax/runs/{RUN}/")
        latest_doc = get_json(settings, f"/quax/runs/{RUN}/files/latest/")
        assert run_doc["n_files"] == N_FILES and latest_doc["file_index"] == N_FILES - 1
        page_freq = column(page, "run_average", "frequency_hz")
        np.testing.assert_allclose(page_freq, run_doc["frequency_hz"], rtol=1e-12)
        np.testing.assert_allclose(column(page, "run_average", "mean"), run_doc["mean"], rtol=1e-12)
        np.testing.assert_allclose(column(page, "run_average", "sem"), run_doc["sem"], rtol=1e-12)
        np.testing.assert_allclose(column(page, "latest_file", "mean"), latest_doc["mean"], rtol=1e-12)
        assert sorted(column(page, "files", "file_index")) == list(range(N_FILES))
        assert sorted(column(page, "waterfall", "file_index")) == list(range(N_FILES - WATERFALL, N_FILES))
        # Each waterfall row is labelled with its file's acquisition time, in UTC.
        labels = page.evaluate("() => { const d = Bokeh.documents[0].get_model_by_name('waterfall').data; "
                               "return [Array.from(d.file_index), Array.from(d.acquired_utc)]; }")
        assert dict(zip(*labels)) == {k: shaping.utc_label(ACQUIRED_AT_S + 4.19 * k)
                                      for k in range(N_FILES - WATERFALL, N_FILES)}
        ticks = page.evaluate(f"() => Bokeh.documents[0].get_model_by_name('waterfall_row_labels')"
                              f".doFormat([{N_FILES - 1}, 0.5], {{loc: 0}})")
        clock = shaping.utc_label(ACQUIRED_AT_S + 4.19 * (N_FILES - 1))[11:19]
        assert ticks == [f"{N_FILES - 1} · {clock}", "0.5"]
        # The band of the run average is its standard error, sigma/sqrt(N), not sigma.
        n_slices = run_doc["n_slices"]
        width = column(page, "run_average", "upper") - column(page, "run_average", "lower")
        np.testing.assert_allclose(width, 2 * np.array(run_doc["std"]) / np.sqrt(n_slices), rtol=1e-9)
        # The injected tone is the bin marked above threshold in the excess panel.
        marks = column(page, "excess_marks", "frequency_hz")
        tone_bin_hz = page_freq[np.argmin(np.abs(page_freq - TONE_HZ))]
        assert tone_bin_hz in marks
        # The candidates table draws the newest values: the tone's one row, whose significance grew
        # with every file (BokehJS redraws a table on its own only when its rows change in number).
        significance = column(page, "candidates", "significance")
        assert len(significance) == 1
        playwright_sync.expect(page.locator(".slick-row .slick-cell.l1").first).to_have_text(
            f"{significance[0]:.1f}", timeout=WAIT_MS)
        health = health_text(page)
        assert "2/2" in health and "STALE" not in health

        # Log power swaps the spectrum figure; the CSV download is the table's run average.
        page.get_by_text("log power").click()
        page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('spectrum_log').visible", timeout=WAIT_MS)
        with page.expect_download(timeout=WAIT_MS) as download:
            page.get_by_text("run spectrum .csv").click()
        rows = list(csv.reader(io.StringIO(download.value.path().read_text())))
        assert rows[1] == ["frequency_hz", "mean", "sem", "std"]
        table = np.array(rows[2:], dtype=float)
        np.testing.assert_allclose(table[:, 1], run_doc["mean"], rtol=1e-9)
        page.get_by_text("linear power").click()
        # Pause freezes the page and says so; resume goes back to live.
        page.get_by_text("pause updates").click()
        page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('health').text.includes('PAUSED')",
                               timeout=WAIT_MS)
        page.get_by_text("resume updates").click()
        page.wait_for_function("() => !Bokeh.documents[0].get_model_by_name('health').text.includes('PAUSED')",
                               timeout=WAIT_MS)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # Workers gone: the page says so and keeps its plots; workers back: it recovers by itself.
        workers.stop()
        page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('health').text.includes('STALE since')",
                               timeout=WAIT_MS)
        assert page.evaluate(f"() => {length('files')}") == N_FILES
        page.screenshot(path=str(ARTIFACTS / "dashboard-stale.png"), full_page=True)
        workers.start()
        workers.wait_assigned()
        page.wait_for_function("() => !Bokeh.documents[0].get_model_by_name('health').text.includes('STALE')",
                               timeout=WAIT_MS)
        send_file(settings, daq_dir, N_FILES)
        page.wait_for_function(f"() => {length('files')} === {N_FILES + 1}", timeout=WAIT_MS)
        wait_for_run(settings, RUN, N_FILES + 1)
        np.testing.assert_allclose(column(page, "run_average", "mean"),
                                   get_json(settings, f"/quax/runs/{RUN}/")["mean"], rtol=1e-12)
        assert not errors, errors
        browser.close()
