"""The campaign page without a browser: a synthetic campaign's document (one axion injected, one run
without its cavity) shaped into the page's columns, read over HTTP from a small local server, and
drawn into a Bokeh document whose sources must hold what the document holds."""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from bokeh.document import Document

from dashboard import campaign_shaping as shaping
from dashboard.campaign_feed import CampaignFeed
from dashboard.campaign_page import CampaignDashboard
from quax_faust.campaign.document import campaign_document
from quax_faust.campaign.state import CampaignState
from quax_faust.search import rescan
from quax_faust.search.campaign_result import analyse
from quax_faust.search.run_excess import CampaignConfig, RunSpectrum
from quax_faust.search.synthetic_campaign import Axion, CampaignPlan, synthetic_campaign
from quax_faust.settings import Settings

AXION = Axion(10.4e9 + 275e3, 80.0)
"""Near the cavities of all four runs, strong enough to be a candidate."""
UPDATED_AT_S = 1_796_000_000.0


def make_document(version: int = 3, seed: int = 3) -> dict:
    """A served document (through JSON, as the page gets it): four runs and one left out."""
    runs = synthetic_campaign(CampaignPlan(n_runs=4), [AXION], seed=seed)
    nocavity = RunSpectrum("nocavity", runs[0].mean.copy(), runs[0].n_slices, runs[0].sample_rate_hz,
                           {"lo_frequency_hz": 10.4e9, "sample_rate_hz": 2e6})
    c = analyse([(r, "synthetic") for r in runs + [nocavity]], CampaignConfig(), rescan.threshold_for_goal())
    state = CampaignState(files_folded=40)
    doc = campaign_document(c, state, version=version, updated_at_s=UPDATED_AT_S + version, analysis_s=0.07)
    return json.loads(json.dumps(doc, allow_nan=False))


@pytest.fixture(scope="module")
def doc() -> dict:
    return make_document()


def as_float(values) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


# --- shaping ---------------------------------------------------------------------------------------

def test_significance_and_coverage_are_the_grid_on_a_mhz_axis(doc):
    ref = shaping.reference_frequency_hz(doc)
    grid = doc["grid"]
    assert ref == 10_399e6  # the whole MHz below the grid's first bin (10,399.3 MHz)
    assert shaping.frequency_axis_label(ref) == "RF frequency − 10,399 MHz (MHz)"
    cols = shaping.significance_columns(doc, ref)
    np.testing.assert_array_equal(cols["frequency_hz"], grid["frequency_hz"])
    np.testing.assert_array_equal(cols["significance"], as_float(grid["significance"]))
    np.testing.assert_array_equal(cols["n_runs"], grid["n_runs"])
    np.testing.assert_allclose(cols["frequency_mhz"], (np.array(grid["frequency_hz"]) - ref) / 1e6, rtol=0, atol=1e-9)
    # 651 Hz bins stay apart on the MHz axis; the bins no run holds whole are NaN (gaps in the line).
    assert np.all(np.diff(cols["frequency_mhz"]) > 6e-4)
    assert np.isnan(cols["significance"]).any() and np.isfinite(cols["significance"]).sum() > 2000


def test_candidates_are_the_rescan_list_with_the_injected_axion_first(doc):
    cols = shaping.candidate_columns(doc, 10_399e6)
    served = doc["candidates"]
    assert cols["frequency_hz"] == [c["frequency_hz"] for c in served]
    assert cols["significance"] == [c["significance"] for c in served]
    assert cols["global_significance"] == [c["global_significance"] for c in served]
    assert cols["rescan_lo_frequency_hz"] == [c["rescan_lo_frequency_hz"] for c in served]
    # The strongest candidate is the injected axion: within one line (16 bins of 651 Hz).
    assert abs(cols["frequency_hz"][0] - AXION.frequency_hz) < 16 * 651
    assert cols["significance"][0] > doc["threshold_sigma"]
    assert cols["g2_text"][0] == f"{served[0]['g2']:.3g} ± {served[0]['sigma']:.2g}"
    shares = [float(part.split("(")[1].split(" %")[0]) for part in cols["runs"][0].split(", ")]
    assert cols["runs"][0].startswith(served[0]["runs"][0]["run"] + " (")
    assert sum(shares) == pytest.approx(100, abs=2)


def test_limit_columns_hold_the_curve_and_the_models_in_gev(doc):
    cols = shaping.limit_columns(doc, 10_399e6)
    for key in ("g_limit_gev", "g_sensitivity_gev", "ksvz_gev", "dfsz_gev"):
        np.testing.assert_array_equal(cols[key], as_float(doc["grid"][key]))
    ksvz, dfsz = cols["ksvz_gev"], cols["dfsz_gev"]
    assert np.all((ksvz > 1.5e-14) & (ksvz < 1.7e-14))  # |g_KSVZ| at 10.4 GHz: 1.59e-14 GeV^-1
    np.testing.assert_allclose(dfsz / ksvz, 0.371, rtol=0.01)
    limited = np.isfinite(cols["g_limit_gev"])
    assert np.all(cols["g_limit_gev"][limited] >= cols["g_sensitivity_gev"][limited] * (1 - 1e-12))


def test_runs_used_and_left_out_keep_the_reason_whole(doc):
    used = shaping.runs_used_columns(doc)
    assert used["run"] == ["run000", "run001", "run002", "run003"]
    assert used["lo_frequency_hz"] == [r["lo_frequency_hz"] for r in doc["runs_used"]]
    assert all(math.isnan(n) for n in used["n_files"])  # the hand-built state holds no accumulators
    assert used["noise_ratio"] == pytest.approx([1.0] * 4, abs=0.05)
    left = shaping.runs_left_out_columns(doc)
    assert left["run"] == ["nocavity"]
    assert left["reason"] == [doc["runs_left_out"][0]["reason"]]
    assert "its metadata lacks cavity_frequency_hz" in left["reason"][0]


def test_status_cells_give_version_files_update_false_candidates_and_best_limit(doc):
    cells = dict(shaping.status_cells(doc, now_s=UPDATED_AT_S + 3 + 12))
    assert cells["version"] == "3"
    assert cells["files folded"] == "40"
    assert cells["updated"].endswith("(12 s ago)")
    assert cells["runs used / left out"] == "4 / 1"
    scoped = dict(shaping.status_cells({**doc, "runs_pattern": "run*", "other_runs": 2}, now_s=UPDATED_AT_S))
    assert scoped["runs used / left out"] == "4 / 1 (runs run*; 2 others skipped)"
    assert cells["candidates"] == f"{len(doc['candidates'])} above {doc['threshold_sigma']:.3f} σ"
    assert cells["false candidates expected"] == f"{doc['expected_false_candidates']:.2f}"
    best = doc["best_limit"]
    assert cells["best limit (90 % CL)"] == (f"|g| < {best['g_limit_gev']:.3g} GeV⁻¹ = {best['limit_over_ksvz']:.3g}"
                                             f" × KSVZ at {best['frequency_hz'] / 1e6:,.4f} MHz")
    assert shaping.best_limit_text({"best_limit": {}}) == "none"
    assert shaping.band_text({"band": {"covered_low_hz": None, "covered_high_hz": None}}) == "none"


def test_a_document_that_is_not_one_is_named_with_what_it_lacks(doc):
    with pytest.raises(shaping.BadDocument, match=r"http://x/campaign/: not a campaign document: missing grid$"):
        shaping.check_document({k: v for k, v in doc.items() if k != "grid"}, "http://x/campaign/")
    broken = {**doc, "grid": {**doc["grid"], "g2": doc["grid"]["g2"][:-1]}}
    with pytest.raises(shaping.BadDocument, match="grid arrays of different lengths: .*g2 2381"):
        shaping.check_document(broken)
    with pytest.raises(shaping.BadDocument, match="expected a JSON object, got list"):
        shaping.check_document([1, 2])
    assert shaping.document_key(doc) == (3, UPDATED_AT_S + 3)


# --- the feed, against a small local server ----------------------------------------------------------

class FakeService:
    """/campaign/health and /campaign/ as the live campaign serves them; answer settable."""

    def __init__(self):
        self.doc: dict | None = None
        self.status = 200
        self.requests: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                service.requests.append(self.path)
                if service.status != 200:
                    body, code = b'{"status": "starting", "files_folded": 7}', service.status
                elif self.path == "/campaign/health":
                    body, code = json.dumps({"version": service.doc["version"]}).encode(), 200
                elif self.path == "/campaign/":
                    body, code = json.dumps(service.doc).encode(), 200
                else:
                    body, code = b"not found", 404
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service():
    s = FakeService()
    yield s
    s.stop()


def settings_for(port: int) -> Settings:
    return Settings(campaign_port=port, dashboard_http_timeout_s=2.0, dashboard_refresh_s=0.5)


def test_feed_reads_the_document_only_when_its_version_changed(service, doc):
    service.doc = doc
    feed = CampaignFeed(settings_for(service.port))
    first = feed.poll(None)
    assert first.ok and first.doc == doc and service.requests == ["/campaign/"]
    again = feed.poll(doc["version"])
    assert again.ok and again.doc is None and service.requests[1:] == ["/campaign/health"]
    service.doc = {**doc, "version": 4, "updated_at_s": UPDATED_AT_S + 4}
    newer = feed.poll(doc["version"])
    assert newer.doc["version"] == 4 and service.requests[2:] == ["/campaign/health", "/campaign/"]
    service.status = 503
    starting = feed.poll(None)
    assert starting.ok and starting.doc is None and starting.starting == {"status": "starting", "files_folded": 7}
    service.status = 500
    failed = feed.poll(None)
    assert not failed.ok and "HTTP 500" in failed.error and f":{service.port}/campaign/" in failed.error


def test_feed_names_the_url_it_cannot_reach(service):
    port = service.port
    service.stop()
    poll = CampaignFeed(settings_for(port)).poll(None)
    assert not poll.ok and poll.error.startswith(f"http://127.0.0.1:{port}/campaign/: ")


# --- the page, without a browser ---------------------------------------------------------------------

def apply_one_poll(page: CampaignDashboard) -> None:
    """What a tick does, synchronously: fetch in this thread, apply as the event loop would."""
    future: Future = Future()
    future.set_result(page._fetch(page.poll_version))
    page._apply(future)


def test_page_holds_the_document_goes_stale_and_recovers(service, doc):
    service.doc = doc
    page = CampaignDashboard(Document(), settings_for(service.port))
    assert "WAITING for the campaign service" in page.health_div.text
    apply_one_poll(page)
    np.testing.assert_array_equal(page.sig_src.data["significance"], as_float(doc["grid"]["significance"]))
    np.testing.assert_array_equal(page.limit_src.data["g_limit_gev"], as_float(doc["grid"]["g_limit_gev"]))
    assert page.cand_src.data["frequency_hz"] == [c["frequency_hz"] for c in doc["candidates"]]
    assert page.used_src.data["run"] == ["run000", "run001", "run002", "run003"]
    assert page.left_out_src.data["reason"] == [doc["runs_left_out"][0]["reason"]]
    assert "its metadata lacks cavity_frequency_hz" in page.left_out_div.text
    assert page.threshold_span.location == doc["threshold_sigma"]
    assert all(f.xaxis.axis_label == "RF frequency − 10,399 MHz (MHz)" for f in page.figures)
    assert "LIVE — campaign version 3" in page.health_div.text
    # Unchanged version: only the health endpoint is asked, nothing redrawn.
    before = page.sig_src.data
    apply_one_poll(page)
    assert page.sig_src.data is before and service.requests[-1] == "/campaign/health"

    port = service.port
    service.stop()
    apply_one_poll(page)
    assert "STALE since" in page.health_div.text
    assert f"campaign service unreachable at http://127.0.0.1:{port}/campaign/" in page.health_div.text
    assert "(showing version 3)" in page.health_div.text
    assert "Connection refused" in page.status_div.text
    np.testing.assert_array_equal(page.sig_src.data["significance"], as_float(doc["grid"]["significance"]))

    # Back (restarted: its version counts from 1 again), the whole document is read and drawn.
    back = FakeService()
    try:
        page.feed = CampaignFeed(settings_for(back.port))
        back.doc = {**make_document(version=1, seed=4)}
        apply_one_poll(page)
        assert "STALE" not in page.health_div.text and "LIVE — campaign version 1" in page.health_div.text
        np.testing.assert_array_equal(page.sig_src.data["significance"], as_float(back.doc["grid"]["significance"]))
        assert back.requests == ["/campaign/"]
    finally:
        back.stop()


def test_page_says_when_the_service_starts_and_when_no_run_is_usable(service, doc):
    service.status = 503
    page = CampaignDashboard(Document(), settings_for(service.port))
    apply_one_poll(page)
    assert "STARTING — the campaign service at" in page.health_div.text and "(7 files folded)" in page.health_div.text
    service.status = 200
    service.doc = {**doc, "status": "no usable run", "runs_used": [], "candidates": [], "best_limit": {},
                   "grid": {k: [] for k in shaping.GRID_KEYS}}
    apply_one_poll(page)
    assert "NO USABLE RUN" in page.health_div.text and "nocavity" in page.left_out_div.text
    assert time.time() - page.last_ok_s < 60
