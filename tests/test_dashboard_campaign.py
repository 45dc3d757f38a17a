"""The dashboard's campaign page in a real headless Chromium, fed by the real chain: a broker, two
Faust workers, ``quax campaign-live`` and ``bokeh serve dashboard``, each its own process.

Three runs are produced with their metadata (two with their cavity, LOs a whole number of bins
apart; one without its cavity). What the page holds (its named ColumnDataSources) must equal what
the service serves at /campaign/, and the reason a run is left out must be readable in the page.
One more file grows a run: the page must show the new version. The service is stopped: the page
must say it is unreachable (STALE), keeping its plots; restarted: the page recovers by itself.
Screenshots: test-artifacts/dashboard_campaign.png (and -stale.png, the service stopped).
"""

from __future__ import annotations

import asyncio
import math
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from quax_faust.ingest.producer import produce_directory
from quax_faust.tools.launch import CampaignLive, wait_for_run
from tests.conftest import ARTIFACTS, campaign_records, write_synthetic_run
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, bokeh_server

playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.broker, pytest.mark.slow]  # a real browser on the live stack

N_FILES, SLICES_PER_FILE = 2, 16
GRID_SOURCES = {"campaign_significance": ("frequency_hz", "significance", "g2", "sigma", "n_runs"),
                "campaign_limit": ("frequency_hz", "g_limit_gev", "g_sensitivity_gev", "ksvz_gev", "dfsz_gev")}


def values(page, source: str, col: str) -> list:
    return page.evaluate(f"() => Array.from(Bokeh.documents[0].get_model_by_name('{source}').data['{col}'])")


def floats(items) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in items], dtype=float)


def used_table_cell(page, run: str, column_index: int):
    """The runs-used table's cell as drawn (SlickGrid cells l0, l1, ...: run, LO, cavity, Q_L, N, files)."""
    row = page.locator(".slick-row", has=page.locator(".slick-cell.l0", has_text=re.compile(f"^{run}$")))
    return row.locator(f".slick-cell.l{column_index}")


def produce(settings, directory, run: str, metadata: dict) -> None:
    """`quax produce` of a directory (in a thread: Playwright's sync API owns this thread's loop)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, produce_directory(settings, directory, run, "max", progress=False,
                                                   metadata=metadata)).result()


def health_text(page) -> str:
    return page.evaluate("() => Bokeh.documents[0].get_model_by_name('campaign_health').text")


def wait_for_health(page, text: str) -> None:
    page.wait_for_function(f"() => Bokeh.documents.length > 0 && Bokeh.documents[0]"
                           f".get_model_by_name('campaign_health').text.includes({text!r})", timeout=WAIT_MS)


def assert_page_shows(page, doc: dict) -> None:
    """The page's sources hold the document: grid, limits, candidates, runs used and left out."""
    for source, cols in GRID_SOURCES.items():
        for col in cols:
            np.testing.assert_array_equal(floats(values(page, source, col)), floats(doc["grid"][col]),
                                          err_msg=f"{source}/{col}")
    served = doc["candidates"]
    assert values(page, "campaign_candidates", "frequency_hz") == [c["frequency_hz"] for c in served]
    assert values(page, "campaign_candidates", "significance") == [c["significance"] for c in served]
    assert values(page, "campaign_candidates", "rescan_lo_frequency_hz") == [c["rescan_lo_frequency_hz"]
                                                                              for c in served]
    for col in ("run", "lo_frequency_hz", "cavity_frequency_hz", "n_slices", "n_files"):
        assert values(page, "campaign_runs_used", col) == [r[col] for r in doc["runs_used"]], col
    assert values(page, "campaign_runs_left_out", "run") == [r["run"] for r in doc["runs_left_out"]]
    assert values(page, "campaign_runs_left_out", "reason") == [r["reason"] for r in doc["runs_left_out"]]


def test_campaign_page_shows_the_live_campaign_and_survives_a_service_restart(make_stack, tmp_path):
    settings, _workers = make_stack(workers=2, dashboard_refresh_s=0.5, campaign_refresh_s=0.2,
                                    campaign_snapshot_s=0.5)
    records = campaign_records(settings)
    daq_dir = write_synthetic_run(tmp_path / "daq", N_FILES, SLICES_PER_FILE * settings.slice_len, seed=5)
    for run, fields in records.items():
        produce(settings, daq_dir, run, fields)
    for run in records:
        wait_for_run(settings, run, N_FILES)

    service = CampaignLive(settings, tmp_path / "campaign-live.log").start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        doc = service.wait_for(lambda d: d["files_folded"] == 3 * N_FILES and len(d["runs_used"]) == 2)
        with bokeh_server(settings, tmp_path / "bokeh.log") as url, playwright_sync.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1580, "height": 1400})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "?page=campaign")
            wait_for_health(page, f"LIVE — campaign version {doc['version']}")

            # What the page holds is what the service serves.
            assert_page_shows(page, doc)
            playwright_sync.expect(used_table_cell(page, "step0", 4)).to_have_text(f"{N_FILES * SLICES_PER_FILE}")
            assert [r["run"] for r in doc["runs_used"]] == ["step0", "step1"]
            assert sum(v is not None for v in doc["grid"]["significance"]) > 1000
            reason = doc["runs_left_out"][0]["reason"]
            assert doc["runs_left_out"][0]["run"] == "nocavity" and "its metadata lacks cavity_frequency_hz" in reason
            assert page.get_by_text(reason).is_visible()  # the physicist reads why, whole
            health = health_text(page)
            assert f"{doc['files_folded']}" in health and "2 / 1" in health
            assert f"{doc['expected_false_candidates']:.2f}" in health
            assert f"{doc['best_limit']['g_limit_gev']:.3g} GeV⁻¹" in health
            assert page.evaluate("() => Bokeh.documents[0].get_model_by_name('campaign_left_out').text")\
                .count("nocavity") == 1

            # One more file grows step0: the page shows the new version, with step0's N grown.
            more = write_synthetic_run(tmp_path / "more", N_FILES + 1, SLICES_PER_FILE * settings.slice_len, seed=6)
            for k in range(N_FILES):
                for side in "iq":
                    (more / f"duck_{side}_{k:05d}.dat").unlink()
            produce(settings, more, "step0", records["step0"])
            wait_for_run(settings, "step0", N_FILES + 1)
            grown = service.wait_for(lambda d: d["files_folded"] == 3 * N_FILES + 1)
            assert grown["version"] > doc["version"]
            wait_for_health(page, f"LIVE — campaign version {grown['version']}")
            assert values(page, "campaign_runs_used", "n_slices") == [(N_FILES + 1) * SLICES_PER_FILE,
                                                                     N_FILES * SLICES_PER_FILE]
            assert_page_shows(page, grown)
            # Drawn too, not only held: the table shows step0's new N and files (same rows as before).
            playwright_sync.expect(used_table_cell(page, "step0", 4)).to_have_text(
                f"{(N_FILES + 1) * SLICES_PER_FILE}", timeout=WAIT_MS)
            playwright_sync.expect(used_table_cell(page, "step0", 5)).to_have_text(f"{N_FILES + 1}")
            page.screenshot(path=str(ARTIFACTS / "dashboard_campaign.png"), full_page=True)

            # The service gone: the page says so and keeps its plots; back: it recovers by itself.
            assert service.stop() == 0
            wait_for_health(page, "campaign service unreachable at " + settings.campaign_url + "/campaign/")
            assert "STALE since" in health_text(page)
            assert f"showing version {grown['version']}" in health_text(page)
            assert_page_shows(page, grown)
            page.screenshot(path=str(ARTIFACTS / "dashboard_campaign-stale.png"), full_page=True)
            service.start()
            restarted = service.wait_for(lambda d: d["version"] >= 1)
            wait_for_health(page, "LIVE — campaign version")
            assert "STALE" not in health_text(page)
            page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('campaign_health').text"
                                   f".includes('LIVE — campaign version {restarted['version']}')", timeout=WAIT_MS)
            assert_page_shows(page, restarted)
            assert restarted["files_folded"] == grown["files_folded"]

            # The live page links here, and back.
            page.get_by_text("← live spectrum").click()
            page.wait_for_function("() => Bokeh.documents.length > 0 && "
                                   "Bokeh.documents[0].get_model_by_name('health') !== null", timeout=WAIT_MS)
            page.get_by_text("campaign →").click()
            wait_for_health(page, "LIVE — campaign version")
            assert not errors, errors
            browser.close()
    finally:
        service.stop()
