"""The live dashboard page: Bokeh figures, widgets and the update loop of one browser session.

    every dashboard_refresh_s:  thread: TableFeed.poll (HTTP) + shape (numpy)  ->  PageUpdate
                                event loop: stream/patch the named ColumnDataSources, redraw health

Named data sources (the browser test reads them from the page): latest_file, run_average, excess,
excess_marks, candidates, waterfall, files, throughput, download; and the waterfall's row labels
(waterfall_row_labels: file index and acquisition time in UTC).
"""

from __future__ import annotations

import base64
import html
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (Button, ColorBar, ColumnDataSource, CustomJS, CustomJSTickFormatter, DataTable,
                          Div, HoverTool, LinearColorMapper, NumberFormatter, RadioButtonGroup,
                          Range1d, RangeSlider, ScientificFormatter, Select, Span, TableColumn, Toggle)
from bokeh.palettes import RdBu11, interp_palette
from bokeh.plotting import figure

from quax_faust.settings import Settings

from . import shaping
from .bokeh_session import hand_to_session, redraw_on_new_data
from .feed import Poll, PollRequest, TableFeed, spectrum_arrays

FILES_KEPT = 50_000
"""Rows kept in the per-file latency plot (about 58 hours of files at 4.19 s each)."""
THROUGHPUT_POINTS = 7_200
"""Points kept in the throughput timeline (two hours at one poll per second)."""

# One pool for all browser sessions of this server: the slow part (HTTP) never runs on the loop.
_EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dashboard-feed")

LEFT_WIDTH, RIGHT_WIDTH = 1060, 470
RUN_COLOUR, FILE_COLOUR, BASELINE_COLOUR = "#b2182b", "#4d4d4d", "#2166ac"
OK_COLOUR, BAD_COLOUR, WARN_COLOUR, IDLE_COLOUR = "#1a7f37", "#c62828", "#b35900", "#6e7781"
SPECTRUM_TOOLS = "xpan,xwheel_zoom,xbox_zoom,box_zoom,reset,save"
EXCESS_TITLE = "Normalised excess δ·√N over the smooth baseline"


@dataclass
class PageUpdate:
    """Everything one poll changes, shaped off the event loop and applied on it."""

    generation: int
    poll: Poll
    new_run: bool = False
    version: tuple | None = None
    run_columns: dict | None = None
    excess_scatter: float | None = None
    noise_scale: float = 1.0
    excess_columns: dict | None = None
    marks_columns: dict | None = None
    latest_columns: dict | None = None
    latest_index: int | None = None
    latest_latency_s: float | None = None
    waterfall_rows: dict = field(default_factory=dict)
    waterfall_spectra: dict = field(default_factory=dict)
    """file_index -> mean spectrum of the files given rows in this update."""
    waterfall_acquired: dict = field(default_factory=dict)
    """file_index -> acquisition time (Unix s, None unknown) of the same files."""
    file_rows: dict = field(default_factory=dict)
    seen: list[int] = field(default_factory=list)
    candidates_columns: dict | None = None
    run_spectrum: shaping.RunSpectrum | None = None
    colour_limit_percent: float | None = None
    lo_frequency_hz: float | None = None
    """The shown run's LO (Hz): its metadata's, else the setting's."""


class LiveDashboard:
    """One browser session's page. Build it with the session's Document; it updates itself."""

    def __init__(self, doc: Document, settings: Settings):
        self.doc = doc
        self.settings = settings
        self.feed = TableFeed(settings)
        self.rates = shaping.RateHistory(settings.dashboard_rate_window_s)
        # Session state, touched only on the event loop.
        self.generation = 0
        self.wanted_run: str | None = None
        self.run: str | None = None
        self.version: tuple | None = None
        self.seen: set[int] = set()
        self.latest_index: int | None = None
        self.latest_latency_s: float | None = None
        self.noise_scale = 1.0
        self.waterfall_spectra: dict[int, np.ndarray] = {}
        self.waterfall_acquired: dict[int, float | None] = {}
        self.waterfall_normalised_at = 1
        self.run_spectrum: shaping.RunSpectrum | None = None
        self.run_summary: dict | None = None
        self.lo_frequency_hz: float | None = None
        self.last_ok_s: float | None = None
        self.stale_since_s: float | None = None
        self.started_s = time.time()
        self.last_error: str | None = None
        self.health: shaping.Health | None = None
        self.downloads = 0
        self._inflight: Future | None = None
        self._closed = threading.Event()

        self._build()
        doc.title = "QUAX live spectrum"
        doc.add_root(self.layout)
        doc.add_root(self.download_src)  # drawn by nothing, so not reachable from the layout
        doc.add_periodic_callback(self._tick, int(settings.dashboard_refresh_s * 1000))
        doc.on_session_destroyed(lambda _ctx: self._closed.set())
        doc.add_next_tick_callback(self._tick)

    # ----------------------------------------------------------------------------------------
    # layout

    def _build(self) -> None:
        s = self.settings
        spectrum_cols = ["frequency_hz", "frequency_khz", "mean", "lower", "upper"]
        self.latest_src = ColumnDataSource({k: [] for k in spectrum_cols + ["std"]}, name="latest_file")
        self.run_src = ColumnDataSource({k: [] for k in spectrum_cols + ["sem", "std", "baseline"]},
                                        name="run_average")
        self.excess_src = ColumnDataSource({k: [] for k in ("frequency_hz", "frequency_khz", "excess")},
                                           name="excess")
        self.marks_src = ColumnDataSource({k: [] for k in ("frequency_hz", "frequency_khz", "excess")},
                                          name="excess_marks")
        self.cand_src = ColumnDataSource(shaping.candidate_columns(None, 0.0), name="candidates")
        self.waterfall_src = ColumnDataSource({k: [] for k in shaping.WATERFALL_COLUMNS}, name="waterfall")
        self.files_src = ColumnDataSource({k: [] for k in ("file_index", "latency_s", "n_slices")}, name="files")
        self.throughput_src = ColumnDataSource(
            {k: [] for k in ("time", "realtime_factor", "files_per_s", "slices_per_s")}, name="throughput")
        self.download_src = ColumnDataSource({"filename": [], "mime": [], "b64": [], "nonce": []},
                                             name="download")
        self.download_src.js_on_change("data", CustomJS(code=_DOWNLOAD_JS))

        # Until a run is shown; each run's own LO relabels the axes (_load_run).
        x_label = shaping.frequency_axis_label(s.lo_frequency_hz)
        half_khz = s.sample_rate_hz / 2 / 1e3
        self.x_range = Range1d(-half_khz, half_khz, bounds=(-half_khz, half_khz))

        self.spectrum_lin = self._spectrum_figure("linear", x_label)
        self.spectrum_log = self._spectrum_figure("log", x_label)
        self.spectrum_log.visible = False

        ex = figure(toolbar_location="above", height=240, width=LEFT_WIDTH, x_range=self.x_range, tools=SPECTRUM_TOOLS,
                    title=EXCESS_TITLE,
                    x_axis_label=x_label, y_axis_label="δ·√N  (σ)", output_backend="canvas")
        ex.line("frequency_khz", "excess", source=self.excess_src, color=FILE_COLOUR, line_width=1,
                legend_label="δ·√N per bin")
        self.threshold_span = Span(location=s.excess_threshold_sigma, dimension="width",
                                   line_color=RUN_COLOUR, line_dash="dashed", line_width=1.5)
        ex.add_layout(self.threshold_span)
        ex.add_layout(Span(location=0, dimension="width", line_color="#999999", line_width=1))
        ex.scatter("frequency_khz", "excess", source=self.marks_src, size=7, color=RUN_COLOUR,
                   legend_label=f"above the threshold ({s.excess_threshold_sigma:g} σ × noise scale)")
        cand = ex.scatter("frequency_khz", "significance", source=self.cand_src, marker="inverted_triangle",
                          size=13, color="#ff8c00", line_color="black",
                          legend_label="candidate (analysis view), at its global significance")
        ex.add_tools(HoverTool(visible=False, renderers=[cand], tooltips=[
            ("candidate", "@frequency_hz{0,0.0} Hz"), ("significance", "@significance{0.0} σ"),
            ("first seen", "file @first_seen_file"), ("persistent", "@persistent")]))
        ex.add_tools(HoverTool(visible=False, renderers=[ex.renderers[0]], mode="vline", tooltips=[
            ("f", "@frequency_hz{0,0.0} Hz"), ("δ·√N", "@excess{0.00} σ")]))
        _style(ex)
        ex.legend.location = "top_left"
        self.excess_fig = ex

        self.colour = LinearColorMapper(palette=interp_palette(RdBu11, 255), low=-8, high=8,
                                        nan_color=(0, 0, 0, 0))
        wf = figure(toolbar_location="above", height=300, width=LEFT_WIDTH, x_range=self.x_range, tools="xpan,xwheel_zoom,box_zoom,reset,save",
                    title=f"Waterfall of the last {s.waterfall_files} files: file / run average − 1",
                    x_axis_label=x_label, y_axis_label="file index · acquired (UTC)",
                    output_backend="canvas")
        img = wf.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.waterfall_src,
                       color_mapper=self.colour)
        wf.yaxis.formatter = CustomJSTickFormatter(args={"src": self.waterfall_src}, code=_ROW_LABEL_JS,
                                                   name="waterfall_row_labels")
        wf.add_tools(HoverTool(visible=False, renderers=[img], tooltips=[
            ("file", "@file_index"), ("acquired", "@acquired_utc"), ("f", "$x{0,0.00} kHz"),
            ("deviation", "@image{0.00} %")]))
        wf.add_layout(ColorBar(color_mapper=self.colour, title="%", width=12), "right")
        _style(wf)
        self.waterfall_fig = wf

        lat = figure(toolbar_location="above", height=230, width=RIGHT_WIDTH, tools="pan,wheel_zoom,box_zoom,reset,save",
                     title="End-to-end latency of each file", x_axis_label="file index",
                     y_axis_label="latency (s)")
        lat.scatter("file_index", "latency_s", source=self.files_src, size=4, color=BASELINE_COLOUR)
        lat.add_layout(Span(location=s.dashboard_behind_s, dimension="width", line_color=BAD_COLOUR,
                            line_dash="dashed"))
        lat.add_tools(HoverTool(visible=False, tooltips=[("file", "@file_index"), ("latency", "@latency_s{0.000} s"),
                                          ("slices", "@n_slices")]))
        _style(lat)

        rtf = figure(toolbar_location="above", height=230, width=RIGHT_WIDTH, x_axis_type="datetime", tools="pan,wheel_zoom,box_zoom,reset,save",
                     title=f"Real-time factor (data s per wall s, {s.dashboard_rate_window_s:g} s mean)",
                     y_axis_label="× real time")
        rtf.line("time", "realtime_factor", source=self.throughput_src, color=OK_COLOUR, line_width=2)
        rtf.add_layout(Span(location=1.0, dimension="width", line_color="#999999", line_dash="dashed"))
        rtf.add_tools(HoverTool(visible=False, tooltips=[("time", "@time{%H:%M:%S}"), ("RTF", "@realtime_factor{0.00}"),
                                          ("files/s", "@files_per_s{0.00}"), ("slices/s", "@slices_per_s{0}")],
                                formatters={"@time": "datetime"}))
        _style(rtf)

        self.cand_table = DataTable(source=self.cand_src, width=RIGHT_WIDTH, height=170, index_position=None,
                                    columns=[
                                        TableColumn(field="frequency_hz", title="frequency (Hz)",
                                                    formatter=NumberFormatter(format="0,0.0")),
                                        TableColumn(field="significance", title="global σ",
                                                    formatter=NumberFormatter(format="0.0")),
                                        TableColumn(field="power", title="power (V²)",
                                                    formatter=ScientificFormatter(precision=2)),
                                        TableColumn(field="first_seen_file", title="first file"),
                                        TableColumn(field="persistent", title="persists")])
        redraw_on_new_data(self.cand_table)  # a candidate's significance grows in the same row

        self.header = Div(text=_header_html(s), width=LEFT_WIDTH + RIGHT_WIDTH)
        self.health_div = Div(text="", name="health", width=LEFT_WIDTH + RIGHT_WIDTH)
        self.status_div = Div(text="", name="status", width=RIGHT_WIDTH)

        self.run_select = Select(title="Run", value="", options=[("", "follow the newest run")], width=280)
        self.run_select.on_change("value", self._on_run_selected)
        self.scale = RadioButtonGroup(labels=["linear power", "log power"], active=0, width=220)
        self.scale.on_change("active", self._on_scale)
        self.pause = Toggle(label="pause updates", button_type="default", width=140)
        self.pause.on_change("active", self._on_pause)
        self.zoom = RangeSlider(start=-half_khz, end=half_khz, value=(-half_khz, half_khz), step=0.1,
                                title="frequency window (kHz)", width=420, format="0,0.0")
        self.zoom.js_on_change("value", CustomJS(args={"r": self.x_range}, code=_ZOOM_TO_RANGE_JS))
        self.x_range.js_on_change("start", CustomJS(args={"s": self.zoom, "r": self.x_range},
                                                    code=_RANGE_TO_ZOOM_JS))
        self.x_range.js_on_change("end", CustomJS(args={"s": self.zoom, "r": self.x_range},
                                                  code=_RANGE_TO_ZOOM_JS))
        self.csv_button = Button(label="run spectrum .csv", width=150, name="download_csv")
        self.csv_button.on_click(partial(self._on_download, "csv"))
        self.npz_button = Button(label="run spectrum .npz", width=150, name="download_npz")
        self.npz_button.on_click(partial(self._on_download, "npz"))

        controls = row(self.run_select, column(Div(text="&nbsp;", height=12), self.scale),
                       column(Div(text="&nbsp;", height=12), self.pause), self.zoom,
                       column(Div(text="&nbsp;", height=12), row(self.csv_button, self.npz_button)))
        cand_title = Div(text="<b>Candidate lines</b> (analysis view; none when it has none)",
                         width=RIGHT_WIDTH)
        left = column(self.spectrum_lin, self.spectrum_log, self.excess_fig, self.waterfall_fig)
        right = column(cand_title, self.cand_table, lat, rtf, self.status_div)
        self.layout = column(self.header, self.health_div, controls, row(left, right))
        self._render_health()

    def _spectrum_figure(self, scale: str, x_label: str):
        p = figure(toolbar_location="above", height=340, width=LEFT_WIDTH, x_range=self.x_range, y_axis_type=scale, name=f"spectrum_{scale}",
                   tools=SPECTRUM_TOOLS, title="Power spectral density: latest file and run average",
                   x_axis_label=x_label, y_axis_label="power density (V²/Hz)", output_backend="canvas")
        p.varea("frequency_khz", "lower", "upper", source=self.latest_src, color=FILE_COLOUR, alpha=0.25,
                legend_label="latest file ±σ/√n")
        p.line("frequency_khz", "mean", source=self.latest_src, color=FILE_COLOUR, line_width=1,
               alpha=0.8, legend_label="latest file ±σ/√n")
        p.varea("frequency_khz", "lower", "upper", source=self.run_src, color=RUN_COLOUR, alpha=0.35,
                legend_label="run average ±σ/√N")
        run_line = p.line("frequency_khz", "mean", source=self.run_src, color=RUN_COLOUR, line_width=1.5,
                          legend_label="run average ±σ/√N")
        p.line("frequency_khz", "baseline", source=self.run_src, color=BASELINE_COLOUR, line_width=1.5,
               line_dash="dashed", legend_label="smooth baseline")
        p.add_tools(HoverTool(visible=False, renderers=[run_line], mode="vline", tooltips=[
            ("f", "@frequency_hz{0,0.0} Hz"), ("run average", "@mean{0.0000e+0} V²/Hz"),
            ("σ/√N", "@sem{0.00e+0}"), ("baseline", "@baseline{0.0000e+0}")]))
        p.legend.click_policy = "hide"
        p.legend.orientation = "horizontal"
        p.legend.location = "top_right"
        legend = p.legend[0]
        p.center.remove(legend)
        p.add_layout(legend, "above")
        _style(p)
        return p

    # ----------------------------------------------------------------------------------------
    # widgets

    def _on_run_selected(self, _attr, _old, new: str) -> None:
        self.wanted_run = new or None
        if self.wanted_run != self.run:
            self._reset()
            self._tick()

    def _on_scale(self, _attr, _old, new: int) -> None:
        self.spectrum_lin.visible = new == 0
        self.spectrum_log.visible = new == 1

    def _on_pause(self, _attr, _old, paused: bool) -> None:
        self.pause.label = "resume updates" if paused else "pause updates"
        self.pause.button_type = "warning" if paused else "default"
        self._render_health()
        if not paused:
            self._tick()

    def _on_download(self, kind: str) -> None:
        spec = self.run_spectrum
        if spec is None:
            return
        payload = spec.csv_bytes() if kind == "csv" else spec.npz_bytes()
        self.downloads += 1
        self.download_src.data = {
            "filename": [f"quax-{spec.run}-{spec.n_files}files.{kind}"],
            "mime": ["text/csv" if kind == "csv" else "application/octet-stream"],
            "b64": [base64.b64encode(payload).decode()], "nonce": [self.downloads]}

    # ----------------------------------------------------------------------------------------
    # the update loop

    def _tick(self) -> None:
        self._render_health()
        if self.pause.active or (self._inflight is not None and not self._inflight.done()):
            return
        request = PollRequest(self.wanted_run, self.run, self.version, frozenset(self.seen))
        generation, latest = self.generation, self.latest_index
        future = _EXECUTOR.submit(self._fetch, request, generation, latest)
        future.add_done_callback(partial(hand_to_session, self.doc, self._closed, self._apply))
        self._inflight = future

    def _fetch(self, request: PollRequest, generation: int, latest_index: int | None) -> PageUpdate:
        """Runs in the feed thread: HTTP, then numpy; touches no Bokeh model."""
        poll = self.feed.poll(request)
        update = PageUpdate(generation, poll)
        doc = poll.run_doc
        if not poll.ok or doc is None:
            return update
        update.new_run = poll.run != request.shown_run
        update.version = shaping.run_version(doc)
        s = self.settings
        update.lo_frequency_hz = lo = shaping.run_lo_frequency_hz(doc, s.lo_frequency_hz)
        freq_hz = shaping.as_array(doc["frequency_hz"])
        freq_khz = shaping.frequency_khz(freq_hz, lo)
        mean, sem, std = (shaping.as_array(doc[k]) for k in ("mean", "sem", "std"))
        n_slices = int(doc["n_slices"])
        shown = shaping.baseline_and_excess(mean, n_slices, float(doc["sample_rate_hz"]), s)
        baseline, excess = shown.baseline, shown.excess
        lower, upper = shaping.band(mean, sem)
        update.run_columns = {"frequency_hz": freq_hz, "frequency_khz": freq_khz, "mean": mean,
                              "lower": lower, "upper": upper, "sem": sem, "std": std, "baseline": baseline}
        update.excess_columns = {"frequency_hz": freq_hz, "frequency_khz": freq_khz, "excess": excess}
        update.excess_scatter = shaping.robust_scatter(excess)
        update.noise_scale = shown.noise_scale
        above = shaping.bins_above(excess, s.excess_threshold_sigma * update.noise_scale)
        update.marks_columns = {"frequency_hz": freq_hz[above], "frequency_khz": freq_khz[above],
                                "excess": excess[above]}
        update.run_spectrum = shaping.RunSpectrum(poll.run, freq_hz, mean, sem, std, n_slices, int(doc["n_files"]))
        if poll.candidates_known:
            update.candidates_columns = shaping.candidate_columns(poll.candidates, lo)

        if update.new_run:
            latest_index = None
        rows, file_rows = [], []
        newest_doc = None
        for f in poll.files:
            file_rows.append(f)
            if "mean" not in f:
                continue
            f_mean, f_std = spectrum_arrays(f)
            if update.colour_limit_percent is None and update.new_run:
                update.colour_limit_percent = shaping.waterfall_colour_limit_percent(f["n_slices"])
            rows.append(shaping.waterfall_row(f["file_index"], shaping.relative_deviation_percent(f_mean, mean),
                                              freq_khz, f.get("acquired_at_s")))
            update.waterfall_spectra[f["file_index"]] = f_mean
            update.waterfall_acquired[f["file_index"]] = f.get("acquired_at_s")
            if latest_index is None or f["file_index"] > latest_index:
                latest_index, newest_doc = f["file_index"], (f, f_mean, f_std)
        update.waterfall_rows = shaping.merge_rows(rows)
        update.file_rows = {"file_index": [f["file_index"] for f in file_rows],
                            "latency_s": [f["latency_s"] for f in file_rows],
                            "n_slices": [f["n_slices"] for f in file_rows]}
        update.seen = [f["file_index"] for f in file_rows]
        if newest_doc is not None:
            f, f_mean, f_std = newest_doc
            f_lower, f_upper = shaping.band(f_mean, shaping.file_standard_error(f_std, f["n_slices"]))
            update.latest_columns = {"frequency_hz": freq_hz, "frequency_khz": freq_khz, "mean": f_mean,
                                     "lower": f_lower, "upper": f_upper, "std": f_std}
            update.latest_index, update.latest_latency_s = latest_index, f["latency_s"]
        return update

    def _apply(self, future: Future) -> None:
        """Runs on the event loop: stream/patch the sources with one poll's news."""
        self._inflight = None
        try:
            update: PageUpdate = future.result()
        except Exception as exc:  # a bug or an unexpected answer: show it, keep polling
            self._mark_failure(time.time(), f"{type(exc).__name__}: {exc}")
            self._render_health()
            return
        poll = update.poll
        if update.generation != self.generation or self.pause.active:
            self._record_workers(poll)
            self._render_health()
            return  # the run was switched or updates paused while this poll was out
        if not poll.ok:
            self._mark_failure(poll.time_s, poll.error)
            self._record_workers(poll)
            self._render_health()
            return
        self.last_ok_s, self.stale_since_s, self.last_error = poll.time_s, None, None
        self._update_run_options(poll.runs or [])
        # Workers recovering their tables may briefly list no runs: keep showing the last summary.
        self.run_summary = next((r for r in poll.runs or [] if r["run"] == poll.run), None) \
            if poll.runs else self.run_summary
        if update.run_columns is not None and not update.new_run \
                and update.lo_frequency_hz != self.lo_frequency_hz:
            # The run's metadata arrived after its first files (usage.md, Run metadata): its axis
            # moved, so reload it whole rather than patch columns on the old axis.
            self._reset()
            self._record_workers(poll)
            self._render_health()
            return
        if update.run_columns is not None:
            if update.new_run or len(self.run_src.data["mean"]) != len(update.run_columns["mean"]):
                self._load_run(poll.run, update)
            else:
                self._patch_run(update)
            self.version = update.version
            self.run_spectrum = update.run_spectrum
            self.noise_scale = update.noise_scale
            self.threshold_span.location = self.settings.excess_threshold_sigma * update.noise_scale
            self.excess_fig.title.text = _excess_title(update.excess_scatter, update.noise_scale)
        self._record_workers(poll)
        self._render_health()

    def _load_run(self, run: str, update: PageUpdate) -> None:
        """A different run (or the first one): replace every source's contents."""
        self.run = run
        self.seen = set(update.seen)
        self.latest_index, self.latest_latency_s = update.latest_index, update.latest_latency_s
        self.run_src.data = update.run_columns
        self.excess_src.data = update.excess_columns
        self.marks_src.data = update.marks_columns
        self.latest_src.data = update.latest_columns or {k: [] for k in self.latest_src.data}
        self.waterfall_src.data = update.waterfall_rows or {k: [] for k in self.waterfall_src.data}
        self.waterfall_spectra = dict(update.waterfall_spectra)
        self.waterfall_acquired = dict(update.waterfall_acquired)
        self.waterfall_normalised_at = update.run_spectrum.n_files
        self.files_src.data = update.file_rows
        if update.candidates_columns is not None:
            self.cand_src.data = update.candidates_columns
        if update.colour_limit_percent is not None:
            self.colour.low, self.colour.high = -update.colour_limit_percent, update.colour_limit_percent
        self.lo_frequency_hz = update.lo_frequency_hz
        x_label = shaping.frequency_axis_label(update.lo_frequency_hz)
        for fig in (self.spectrum_lin, self.spectrum_log, self.excess_fig, self.waterfall_fig):
            fig.xaxis.axis_label = x_label
        freq = update.run_columns["frequency_khz"]
        bin_khz = float(freq[1] - freq[0]) if len(freq) > 1 else 1.0
        lo_edge, hi_edge = float(freq[0]) - bin_khz / 2, float(freq[-1]) + bin_khz / 2
        self.x_range.update(bounds=(lo_edge, hi_edge), start=lo_edge, end=hi_edge)
        self.zoom.update(start=lo_edge, end=hi_edge, value=(lo_edge, hi_edge), step=bin_khz)

    def _patch_run(self, update: PageUpdate) -> None:
        """The same run grew: patch the averages, stream the new files (with rollover)."""
        n = len(update.run_columns["mean"])
        whole = slice(0, n)
        self.run_src.patch({k: [(whole, update.run_columns[k])]
                            for k in ("mean", "lower", "upper", "sem", "std", "baseline")})
        self.excess_src.patch({"excess": [(whole, update.excess_columns["excess"])]})
        self.marks_src.data = update.marks_columns
        if update.latest_columns is not None:
            self.latest_index, self.latest_latency_s = update.latest_index, update.latest_latency_s
            if len(self.latest_src.data["mean"]) == n:
                self.latest_src.patch({k: [(whole, update.latest_columns[k])]
                                       for k in ("mean", "lower", "upper", "std")})
            else:
                self.latest_src.data = update.latest_columns
        if update.waterfall_rows:
            self._update_waterfall(update)
        if update.file_rows["file_index"]:
            self.files_src.stream(update.file_rows, rollover=FILES_KEPT)
        if update.candidates_columns is not None:
            self.cand_src.data = update.candidates_columns
        self.seen.update(update.seen)

    def _update_waterfall(self, update: PageUpdate) -> None:
        """Stream the new rows; redo the whole window against the current average when the run doubled."""
        self.waterfall_spectra.update(update.waterfall_spectra)
        self.waterfall_acquired.update(update.waterfall_acquired)
        for old in sorted(self.waterfall_spectra)[:-self.settings.waterfall_files]:
            del self.waterfall_spectra[old]
            self.waterfall_acquired.pop(old, None)
        n_files = update.run_spectrum.n_files
        if shaping.waterfall_needs_renormalising(n_files, self.waterfall_normalised_at):
            self.waterfall_src.data = shaping.waterfall_rows(
                self.waterfall_spectra, update.run_columns["mean"], update.run_columns["frequency_khz"],
                self.waterfall_acquired)
            self.waterfall_normalised_at = n_files
        else:
            self.waterfall_src.stream(update.waterfall_rows, rollover=self.settings.waterfall_files)

    def _reset(self) -> None:
        """Forget the shown run (the next poll loads the wanted one from scratch)."""
        self.generation += 1
        self.run, self.version, self.seen = None, None, set()
        self.latest_index = self.latest_latency_s = None
        self.run_spectrum, self.noise_scale, self.lo_frequency_hz = None, 1.0, None
        self.waterfall_spectra, self.waterfall_acquired, self.waterfall_normalised_at = {}, {}, 1

    def _mark_failure(self, time_s: float, error: str | None) -> None:
        self.last_error = error
        if self.stale_since_s is None:
            self.stale_since_s = self.last_ok_s if self.last_ok_s is not None else self.started_s

    def _record_workers(self, poll: Poll) -> None:
        counters = {w.url: w.counters for w in poll.workers if w.counters is not None}
        if counters:
            self.rates.add(poll.time_s, counters)
        # Rates only from workers answering now: a silent pipeline has no throughput to show.
        files_per_s, slices_per_s = self.rates.rates() if counters else (math.nan, math.nan)
        latency = self.latest_latency_s if self.run is not None else None
        self.health = shaping.assess_health(
            files_per_s=files_per_s, slices_per_s=slices_per_s,
            slice_duration_s=self.settings.slice_duration_s,
            slices_per_message=self.settings.slices_per_message, last_file_latency_s=latency,
            counters=list(counters.values()), workers_expected=self.settings.workers,
            behind_s=self.settings.dashboard_behind_s)
        if math.isfinite(slices_per_s):
            self.throughput_src.stream({"time": [poll.time_s * 1000], "realtime_factor": [self.health.realtime_factor],
                                        "files_per_s": [files_per_s], "slices_per_s": [slices_per_s]},
                                       rollover=THROUGHPUT_POINTS)

    def _update_run_options(self, runs: list[dict]) -> None:
        options = [("", "follow the newest run")] + [(r["run"], r["run"]) for r in
                                                     sorted(runs, key=lambda r: r.get("last_completed_at_s") or 0,
                                                            reverse=True)]
        if options != [tuple(o) if isinstance(o, (list, tuple)) else (o, o) for o in self.run_select.options]:
            self.run_select.options = options

    # ----------------------------------------------------------------------------------------
    # the health strip

    def _render_health(self) -> None:
        now = time.time()
        s = self.settings
        stale_after = max(3 * s.dashboard_refresh_s, s.dashboard_http_timeout_s + 2 * s.dashboard_refresh_s)
        if self.stale_since_s is None and self.last_ok_s is not None and now - self.last_ok_s > stale_after:
            self.stale_since_s = self.last_ok_s
        if self.stale_since_s is None and self.last_ok_s is None and now - self.started_s > stale_after:
            self.stale_since_s = self.started_s
        h = self.health
        if self.pause.active:
            state, colour = "PAUSED — the plots are frozen; press resume", IDLE_COLOUR
        elif self.stale_since_s is not None:
            state, colour = f"STALE since {_clock(self.stale_since_s)} — workers unreachable, retrying", BAD_COLOUR
        elif self.run is None:
            state, colour = "WAITING for a run in the tables", IDLE_COLOUR
        elif h is not None and not h.ok:
            state, colour = "ALERT — " + "; ".join(h.problems), BAD_COLOUR
        elif self._quiet_since(now) is not None:
            state, colour = (f"NO NEW FILES since {_clock(self._quiet_since(now))} — DAQ stopped, "
                             "or the broker unreachable?"), WARN_COLOUR
        else:
            state, colour = "LIVE — keeping up with the DAQ", OK_COLOUR
        cells = [("status", state)]
        if h is not None:
            cells += [
                ("files/s", _num(h.files_per_s, "{:.2f}")),
                ("slices/s", _num(h.slices_per_s, "{:,.0f}")),
                ("real-time factor", _num(h.realtime_factor, "{:.2f}×")),
                ("last file latency", "n/a" if h.last_file_latency_s is None else f"{h.last_file_latency_s:.2f} s"),
                ("consumer lag", "n/a" if h.consumer_lag_messages is None else
                 f"{h.consumer_lag_messages:,.0f} msgs ≈ {h.consumer_lag_s:.1f} s"),
                ("rejected msgs", f"{h.rejected_messages:,.0f}"),
                ("workers alive", f"{h.workers_alive}/{h.workers_expected}"),
            ]
        last_file_s = (self.run_summary or {}).get("last_completed_at_s") if self.run else None
        if last_file_s:
            cells.append(("newest file", f"{_clock(last_file_s)} ({_age(now - last_file_s)} ago)"))
        self.health_div.text = _health_html(cells, colour)
        self.status_div.text = self._status_html(now)

    def _quiet_since(self, now: float) -> float | None:
        """When the shown run last grew, if no file came for three file periods (dashboard_behind_s)."""
        last = (self.run_summary or {}).get("last_completed_at_s") if self.run else None
        if last and now - last > 3 * self.settings.dashboard_behind_s:
            return last
        return None

    def _status_html(self, now: float) -> str:
        r = self.run_summary
        lines = []
        if r is not None and self.run is not None:
            lines.append(f"<b>run</b> {html.escape(self.run)}: {r['n_files']:,} files, {r['n_slices']:,} slices, "
                         f"{_duration(r['data_seconds'])} of data")
            if r.get("last_completed_at_s"):
                lines.append(f"latest file #{r.get('latest_file_index')} completed at {_clock(r['last_completed_at_s'])}")
        lines.append(f"page updated {_clock(self.last_ok_s) if self.last_ok_s else 'never'}; "
                     f"polling every {self.settings.dashboard_refresh_s:g} s")
        if self.last_error:
            lines.append("<span style='color:%s'>last error: %s</span>"
                         % (BAD_COLOUR, html.escape(" ".join(self.last_error.split())[:300])))
        return "<div style='font-size:12px;color:#444;line-height:1.5'>" + "<br>".join(lines) + "</div>"


# --------------------------------------------------------------------------------------------
# small formatting pieces

def _style(p) -> None:
    p.title.text_font_size = "13px"
    p.axis.axis_label_text_font_size = "12px"
    p.axis.axis_label_text_font_style = "normal"
    p.axis.major_label_text_font_size = "11px"
    p.toolbar.logo = None
    p.min_border_left = 70
    if p.legend:
        p.legend.label_text_font_size = "11px"
        p.legend.background_fill_alpha = 0.7
        p.legend.spacing = 2
        p.legend.padding = 4


def _excess_title(scatter: float | None, noise_scale: float) -> str:
    if scatter is None or not math.isfinite(scatter):
        return EXCESS_TITLE
    title = f"{EXCESS_TITLE} — scatter {scatter:.2f} σ"
    if noise_scale > 1.0:
        return title + f"; threshold ×{noise_scale:.2f}: fewer independent slices than N"
    return title + " (1.00 for independent slices)"


def _age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"


def _num(value: float, fmt: str) -> str:
    return fmt.format(value) if value is not None and math.isfinite(value) else "n/a"


def _header_html(s: Settings) -> str:
    return (f"<div style='font-family:sans-serif'><span style='font-size:20px;font-weight:600'>"
            f"QUAX haloscope — live spectrum</span>"
            f"<a href='?page=campaign' style='margin-left:16px;font-size:13px'>campaign →</a>"
            f"<span style='font-size:12px;color:#555;margin-left:16px'>"
            f"{s.sample_rate_hz / 1e6:g} MS/s · {s.slice_len} bins of {s.bin_width_hz:.2f} Hz · "
            f"workers {html.escape(', '.join(u.removeprefix('http://') for u in s.worker_urls))}"
            f"</span></div>")


def _health_html(cells: list[tuple[str, str]], colour: str) -> str:
    status = cells[0][1]
    items = "".join(
        f"<div style='padding:2px 14px;border-left:1px solid rgba(255,255,255,.35)'>"
        f"<div style='font-size:11px;opacity:.85'>{html.escape(k)}</div>"
        f"<div style='font-size:15px;font-weight:600'>{html.escape(v)}</div></div>" for k, v in cells[1:])
    return (f"<div style='display:flex;align-items:center;flex-wrap:wrap;background:{colour};color:white;"
            f"font-family:sans-serif;border-radius:6px;padding:6px 8px;width:{LEFT_WIDTH + RIGHT_WIDTH - 20}px'>"
            f"<div style='font-size:15px;font-weight:700;padding-right:14px;max-width:520px'>"
            f"{html.escape(status)}</div>{items}</div>")


_DOWNLOAD_JS = """
const d = cb_obj.data;
if (!d.b64 || d.b64.length === 0) { return; }
const raw = atob(d.b64[0]);
const bytes = new Uint8Array(raw.length);
for (let i = 0; i < raw.length; i++) { bytes[i] = raw.charCodeAt(i); }
const link = document.createElement("a");
link.href = URL.createObjectURL(new Blob([bytes], {type: d.mime[0]}));
link.download = d.filename[0];
document.body.appendChild(link);
link.click();
setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
"""

# A waterfall row's label: its file index, and its acquisition time (UTC) when the file view knows it.
_ROW_LABEL_JS = """
const d = src.data;
const row = Array.from(d.file_index).indexOf(tick);
const at = row < 0 ? NaN : d.acquired_at_s[row];
return at >= 0 ? tick + " · " + new Date(at * 1000).toISOString().substring(11, 19) : String(tick);
"""

_ZOOM_TO_RANGE_JS = """
const [a, b] = cb_obj.value;
if (Math.abs(r.start - a) > 1e-9 || Math.abs(r.end - b) > 1e-9) { r.setv({start: a, end: b}); }
"""

_RANGE_TO_ZOOM_JS = """
const a = Math.max(r.start, s.start), b = Math.min(r.end, s.end);
const [va, vb] = s.value;
if (a < b && (Math.abs(va - a) > 1e-9 || Math.abs(vb - b) > 1e-9)) { s.value = [a, b]; }
"""
