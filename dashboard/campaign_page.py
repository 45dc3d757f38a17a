"""The campaign page (``/dashboard?page=campaign``): the live campaign's grand spectrum, rescan list,
exclusion curve and runs, as ``quax campaign-live`` serves them.

    every dashboard_refresh_s:  thread: CampaignFeed.poll (HTTP) + campaign_shaping (numpy)  ->  CampaignUpdate
                                event loop: replace the named ColumnDataSources when the version changed

Named models (the browser test reads them): sources campaign_significance, campaign_limit,
campaign_candidates, campaign_runs_used, campaign_runs_left_out; Divs campaign_health (the status
line), campaign_left_out (the runs left out with their reasons), campaign_status.
"""

from __future__ import annotations

import html
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (ColumnDataSource, DataTable, Div, HoverTool, NumberFormatter, ScientificFormatter,
                          Span, TableColumn)
from bokeh.plotting import figure

from quax_faust.settings import Settings

from . import campaign_shaping as shaping
from .bokeh_session import hand_to_session, redraw_on_new_data
from .campaign_feed import CampaignFeed, CampaignPoll
from .page import (BAD_COLOUR, BASELINE_COLOUR, FILE_COLOUR, IDLE_COLOUR, LEFT_WIDTH, OK_COLOUR, RIGHT_WIDTH,
                   RUN_COLOUR, WARN_COLOUR, _health_html, _style)

_EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="campaign-feed")
WIDTH = LEFT_WIDTH + RIGHT_WIDTH
TOOLS = "xpan,xwheel_zoom,xbox_zoom,box_zoom,reset,save"
CANDIDATE_COLOUR, KSVZ_COLOUR, DFSZ_COLOUR = "#ff8c00", "#6a3d9a", "#1a7f37"
LIVE_LINK = "?page=live"
SIGNIFICANCE_TITLE = "Grand spectrum: significance of an axion line at each RF frequency"


@dataclass
class CampaignUpdate:
    """One poll, shaped off the event loop: the new document's columns, or None if unchanged."""

    poll: CampaignPoll
    key: tuple | None = None
    columns: dict[str, dict] = field(default_factory=dict)
    reference_hz: float = 0.0


class CampaignDashboard:
    """One browser session's campaign page. Build it with the session's Document; it updates itself."""

    def __init__(self, doc: Document, settings: Settings):
        self.doc, self.settings = doc, settings
        self.feed = CampaignFeed(settings)
        self.campaign: dict | None = None  # the document shown
        self.key: tuple | None = None
        self.poll_version: int | None = None  # None after a failure: read the whole document again
        self.starting: dict | None = None
        self.last_ok_s: float | None = None
        self.stale_since_s: float | None = None
        self.started_s = time.time()
        self.last_error: str | None = None
        self._inflight: Future | None = None
        self._closed = threading.Event()
        self._build()
        doc.title = "QUAX campaign"
        doc.add_root(self.layout)
        doc.add_root(self.left_out_src)  # shown as the campaign_left_out Div (long reasons wrap there)
        doc.add_periodic_callback(self._tick, int(settings.dashboard_refresh_s * 1000))
        doc.on_session_destroyed(lambda _ctx: self._closed.set())
        doc.add_next_tick_callback(self._tick)

    # ----------------------------------------------------------------------------------------
    # layout

    def _build(self) -> None:
        self.sig_src = ColumnDataSource(
            {k: [] for k in ("frequency_hz", "frequency_mhz", "significance", "g2", "sigma", "n_runs")},
            name="campaign_significance")
        self.limit_src = ColumnDataSource(
            {k: [] for k in ("frequency_hz", "frequency_mhz", "g_limit_gev", "g_sensitivity_gev", "ksvz_gev",
                             "dfsz_gev")}, name="campaign_limit")
        self.cand_src = ColumnDataSource({k: [] for k in shaping.CANDIDATE_COLUMNS}, name="campaign_candidates")
        self.used_src = ColumnDataSource({k: [] for k in shaping.RUNS_USED_COLUMNS}, name="campaign_runs_used")
        self.left_out_src = ColumnDataSource({k: [] for k in shaping.RUNS_LEFT_OUT_COLUMNS}, name="campaign_runs_left_out")
        x_label = shaping.frequency_axis_label(0.0)

        sig = figure(height=300, width=WIDTH, tools=TOOLS, toolbar_location="above", x_axis_label=x_label,
                     title=SIGNIFICANCE_TITLE,
                     y_axis_label="significance (σ)", output_backend="canvas")
        line = sig.line("frequency_mhz", "significance", source=self.sig_src, color=FILE_COLOUR, line_width=1,
                        legend_label="line-shape-filtered significance")
        self.threshold_span = Span(location=0.0, dimension="width", line_color=RUN_COLOUR, line_dash="dashed",
                                   line_width=1.5)
        sig.add_layout(self.threshold_span)
        cand = sig.scatter("frequency_mhz", "significance", source=self.cand_src, marker="inverted_triangle",
                           size=13, color=CANDIDATE_COLOUR, line_color="black", legend_label="candidate to rescan")
        sig.add_tools(HoverTool(visible=False, renderers=[cand], tooltips=[
            ("candidate", "@frequency_hz{0,0.0} Hz"), ("local", "@significance{0.00} σ"),
            ("global", "@global_significance{0.00} σ"), ("g2", "@g2_text"), ("runs", "@runs")]))
        sig.add_tools(HoverTool(visible=False, renderers=[line], mode="vline", tooltips=[
            ("f", "@frequency_hz{0,0.0} Hz"), ("significance", "@significance{0.00} σ"),
            ("g2", "@g2{0.00} ± @sigma{0.00}"), ("runs", "@n_runs")]))
        _style(sig)
        _legend_above(sig)
        self.significance_fig = sig

        cov = figure(height=150, width=WIDTH, x_range=sig.x_range, tools=TOOLS, toolbar_location="above",
                     x_axis_label=x_label, y_axis_label="runs", output_backend="canvas",
                     title="Coverage: runs holding an axion line at each frequency whole")
        cov.step("frequency_mhz", "n_runs", source=self.sig_src, mode="center", color=BASELINE_COLOUR, line_width=1.5)
        cov.yaxis.ticker.min_interval = 1  # whole runs
        cov.yaxis.ticker.desired_num_ticks = 3
        _style(cov)

        lim = figure(height=320, width=WIDTH, x_range=sig.x_range, y_axis_type="log", tools=TOOLS,
                     toolbar_location="above", x_axis_label=x_label, y_axis_label="|g_aγγ| (GeV⁻¹)",
                     title="Exclusion: upper limit on the axion-photon coupling", output_backend="canvas")
        limit_line = lim.line("frequency_mhz", "g_limit_gev", source=self.limit_src, color=RUN_COLOUR, line_width=1.5,
                              legend_label="limit")
        lim.line("frequency_mhz", "g_sensitivity_gev", source=self.limit_src, color=FILE_COLOUR, line_dash="dashed",
                 legend_label="sensitivity (expected limit without a signal)")
        lim.line("frequency_mhz", "ksvz_gev", source=self.limit_src, color=KSVZ_COLOUR, line_width=2,
                 legend_label="KSVZ")
        lim.line("frequency_mhz", "dfsz_gev", source=self.limit_src, color=DFSZ_COLOUR, line_width=2,
                 legend_label="DFSZ")
        lim.add_tools(HoverTool(visible=False, renderers=[limit_line], mode="vline", tooltips=[
            ("f", "@frequency_hz{0,0.0} Hz"), ("limit", "@g_limit_gev{0.000e+0} GeV⁻¹"),
            ("sensitivity", "@g_sensitivity_gev{0.000e+0}"), ("KSVZ", "@ksvz_gev{0.000e+0}")]))
        _style(lim)
        _legend_above(lim)
        lim.legend.click_policy = "hide"
        self.figures = (sig, cov, lim)
        self.limit_fig = lim

        hz = NumberFormatter(format="0,0.0")
        sigma = NumberFormatter(format="0.00")
        self.cand_table = DataTable(source=self.cand_src, width=WIDTH, height=160, index_position=None, columns=[
            TableColumn(field="frequency_hz", title="frequency (Hz)", formatter=hz, width=150),
            TableColumn(field="significance", title="local σ", formatter=sigma, width=60),
            TableColumn(field="global_significance", title="global σ", formatter=sigma, width=60),
            TableColumn(field="g2_text", title="g2 = (g/g_KSVZ)² ± σ", width=130),
            TableColumn(field="coupling_gev", title="|g| (GeV⁻¹)", formatter=ScientificFormatter(precision=3),
                        width=90),
            TableColumn(field="rescan_cavity_frequency_hz", title="rescan: cavity (Hz)", formatter=hz, width=150),
            TableColumn(field="rescan_lo_frequency_hz", title="rescan: LO (Hz)", formatter=hz, width=150),
            TableColumn(field="runs", title="runs (share of the weight)", width=400)])
        self.used_table = DataTable(source=self.used_src, width=RIGHT_WIDTH + 330, height=200, index_position=None,
                                    columns=[
            TableColumn(field="run", title="run", width=90),
            TableColumn(field="lo_frequency_hz", title="LO (Hz)", formatter=hz, width=140),
            TableColumn(field="cavity_frequency_hz", title="cavity (Hz)", formatter=hz, width=140),
            TableColumn(field="loaded_q", title="Q_L", formatter=NumberFormatter(format="0,0"), width=70),
            TableColumn(field="n_slices", title="N slices", formatter=NumberFormatter(format="0,0"), width=80),
            TableColumn(field="n_files", title="files", formatter=NumberFormatter(format="0,0"), width=50),
            TableColumn(field="noise_ratio", title="noise ratio", formatter=NumberFormatter(format="0.000"),
                        width=70)])
        for table in (self.cand_table, self.used_table):
            redraw_on_new_data(table)
        self.left_out_div = Div(text=_left_out_html({"run": []}), name="campaign_left_out",
                                width=WIDTH - RIGHT_WIDTH - 360)

        self.header = Div(text=self._header_html(), width=WIDTH)
        self.health_div = Div(text="", name="campaign_health", width=WIDTH)
        self.status_div = Div(text="", name="campaign_status", width=WIDTH)
        title = partial(Div, width=WIDTH)
        self.layout = column(
            self.header, self.health_div, sig, cov, lim,
            title(text="<b>Candidates to rescan</b>, strongest first: revisit with the cavity and LO given"),
            self.cand_table,
            row(column(Div(text="<b>Runs used</b> (noise ratio: measured scatter over 1/√N, about 1)"),
                       self.used_table),
                column(Div(text="<b>Runs left out</b>, and why"), self.left_out_div)),
            self.status_div)
        self._render_health()

    def _header_html(self) -> str:
        return (f"<div style='font-family:sans-serif'><span style='font-size:20px;font-weight:600'>"
                f"QUAX haloscope — campaign</span>"
                f"<a href='{LIVE_LINK}' style='margin-left:16px;font-size:13px'>← live spectrum</a>"
                f"<span style='font-size:12px;color:#555;margin-left:16px'>from the live campaign service "
                f"{html.escape(self.feed.url)}</span></div>")

    # ----------------------------------------------------------------------------------------
    # the update loop

    def _tick(self) -> None:
        self._render_health()
        if self._inflight is not None and not self._inflight.done():
            return
        future = _EXECUTOR.submit(self._fetch, self.poll_version)
        future.add_done_callback(partial(hand_to_session, self.doc, self._closed, self._apply))
        self._inflight = future

    def _fetch(self, shown_version: int | None) -> CampaignUpdate:
        """Runs in the feed thread: HTTP, then numpy; touches no Bokeh model."""
        update = CampaignUpdate(self.feed.poll(shown_version))
        doc = update.poll.doc
        if doc is not None:
            update.key = shaping.document_key(doc)
            update.reference_hz = ref = shaping.reference_frequency_hz(doc)
            update.columns = {"significance": shaping.significance_columns(doc, ref),
                              "limit": shaping.limit_columns(doc, ref),
                              "candidates": shaping.candidate_columns(doc, ref),
                              "used": shaping.runs_used_columns(doc),
                              "left_out": shaping.runs_left_out_columns(doc)}
        return update

    def _apply(self, future: Future) -> None:
        """Runs on the event loop: redraw when the analysis changed; always the status line."""
        self._inflight = None
        try:
            update: CampaignUpdate = future.result()
        except Exception as exc:  # a bug or an unexpected answer: show it, keep polling
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        poll = update.poll
        if not poll.ok:
            self._failed(poll.error)
            return
        self.last_ok_s, self.stale_since_s, self.last_error = poll.time_s, None, None
        self.starting = poll.starting
        if poll.starting is not None:
            self.poll_version = None
        elif poll.doc is not None:
            self.poll_version = poll.doc["version"]
            if update.key != self.key:
                self._redraw(update)
        self._render_health()

    def _redraw(self, update: CampaignUpdate) -> None:
        doc, cols = update.poll.doc, update.columns
        self.sig_src.data = cols["significance"]
        self.limit_src.data = cols["limit"]
        self.cand_src.data = cols["candidates"]
        self.used_src.data = cols["used"]
        self.left_out_src.data = cols["left_out"]
        self.left_out_div.text = _left_out_html(cols["left_out"])
        self.threshold_span.location = threshold = float(doc["threshold_sigma"])
        self.significance_fig.title.text = f"{SIGNIFICANCE_TITLE}; dashed: the candidate threshold, {threshold:.3f} σ"
        label = shaping.frequency_axis_label(update.reference_hz)
        for fig in self.figures:
            fig.xaxis.axis_label = label
        self.campaign, self.key = doc, update.key

    def _failed(self, error: str | None) -> None:
        """No usable answer: keep the plots, forget the version (the service may have restarted)."""
        self.last_error, self.poll_version = error, None
        if self.stale_since_s is None:
            self.stale_since_s = self.last_ok_s if self.last_ok_s is not None else self.started_s
        self._render_health()

    # ----------------------------------------------------------------------------------------
    # the status line

    def _render_health(self) -> None:
        now = time.time()
        s = self.settings
        stale_after = max(3 * s.dashboard_refresh_s, s.dashboard_http_timeout_s + 2 * s.dashboard_refresh_s)
        if self.stale_since_s is None and self.last_ok_s is not None and now - self.last_ok_s > stale_after:
            self.stale_since_s = self.last_ok_s  # polls hang: as bad as no answer
        if self.stale_since_s is None and self.last_ok_s is None and now - self.started_s > stale_after:
            self.stale_since_s = self.started_s
        url, c = self.feed.url, self.campaign
        shown = f" (showing version {c['version']})" if c else ""
        if self.stale_since_s is not None:
            state, colour = (f"STALE since {shaping.clock(self.stale_since_s)} — campaign service unreachable at "
                             f"{url}, retrying{shown}"), BAD_COLOUR
        elif self.starting is not None:
            state, colour = (f"STARTING — the campaign service at {url} has not analysed yet "
                             f"({self.starting.get('files_folded', '?')} files folded){shown}"), WARN_COLOUR
        elif c is None:
            state, colour = f"WAITING for the campaign service at {url}", IDLE_COLOUR
        elif c["status"] == "ok":
            state, colour = f"LIVE — campaign version {c['version']}", OK_COLOUR
        elif c["status"] == "no usable run":
            state, colour = "NO USABLE RUN — every run is left out (the reasons are below)", WARN_COLOUR
        else:
            state, colour = f"WAITING for runs — the campaign service has none yet ({c['status']})", IDLE_COLOUR
        cells = [("status", state)] + (shaping.status_cells(c, now) if c else [])
        self.health_div.text = _health_html(cells, colour)
        lines = [f"page updated {shaping.clock(self.last_ok_s) if self.last_ok_s else 'never'}; polling "
                 f"{html.escape(url)} every {s.dashboard_refresh_s:g} s (timeout {s.dashboard_http_timeout_s:g} s)"]
        if c and c.get("analysis_s") is not None:
            lines.append(f"last analysis took {1e3 * c['analysis_s']:.0f} ms; bins of {c.get('bin_width_hz') or 0:.2f} Hz")
        if self.last_error:
            lines.append(f"<span style='color:{BAD_COLOUR}'>last error: "
                         f"{html.escape(' '.join(self.last_error.split())[:300])}</span>")
        self.status_div.text = "<div style='font-size:12px;color:#444;line-height:1.5'>" + "<br>".join(lines) + "</div>"


def _legend_above(p) -> None:
    p.legend.orientation = "horizontal"
    p.legend.spacing = 14
    legend = p.legend[0]
    p.center.remove(legend)
    p.add_layout(legend, "above")


def _left_out_html(cols: dict[str, list]) -> str:
    """The runs left out as an HTML table whose reason column wraps (a reason is a sentence)."""
    if not cols["run"]:
        return "<div style='font-size:12px;color:#555'>none: every run is in the physics</div>"
    rows = "".join(
        f"<tr><td style='padding:2px 8px;vertical-align:top'>{html.escape(run)}</td>"
        f"<td style='padding:2px 8px;vertical-align:top;text-align:right'>{_count(files)}</td>"
        f"<td style='padding:2px 8px;vertical-align:top;text-align:right'>{_count(slices)}</td>"
        f"<td style='padding:2px 8px'>{html.escape(reason)}</td></tr>"
        for run, reason, slices, files in zip(cols["run"], cols["reason"], cols["n_slices"], cols["n_files"]))
    return ("<table style='font-size:12px;border-collapse:collapse;font-family:sans-serif'>"
            "<tr style='text-align:left;border-bottom:1px solid #ccc'><th>run</th><th>files</th><th>N slices</th>"
            f"<th>reason</th></tr>{rows}</table>")


def _count(value: float) -> str:
    return "?" if value != value else f"{value:,.0f}"
