"""``quax campaign``: the campaign analysis of many runs, offline, from the live tables or exports.

Each run's average, N slices, sample rate and metadata come from the workers' run views
(client.fetch_run_average: ``--runs R1 R2 ...`` or ``--all``) or from files written by
``quax export`` (exports.load_run: ``--exports FILE ...``). The physics is quax_faust.search's
(docs/analysis.md, "The campaign analysis"): grand_spectrum, rescan_list, exclusion_curve. The
result goes to a campaign file (exports/campaign.py: .h5 or .npz) and a summary is printed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quax_faust.client import RunAverage
from quax_faust.search import exclusion, rescan
from quax_faust.search.axion import ksvz_coupling_gev
from quax_faust.search.grand import GrandSpectrum, grand_spectrum
from quax_faust.search.run_excess import CampaignConfig, RunSpectrum
from quax_faust.settings import Settings
from quax_faust.tools.commands import EXIT_OK, _progress

if TYPE_CHECKING:
    from quax_faust.exports.load import RunExport

log = logging.getLogger("quax")
Progress = Callable[[int, int], None]
"""progress(runs_read, n_runs), called after each run."""
LIVE = "live tables"
G2_UNIT = "(g/g_KSVZ)**2"
SHOWN_RUNS = 20
"""Runs named in the summary's list of those used (the file lists them all)."""


# --- reading the runs ----------------------------------------------------------------------------

def spectrum_of_average(average: RunAverage) -> RunSpectrum:
    """A run of the live tables (a run view's document) as the campaign analysis takes it."""
    return RunSpectrum(average.run, average.mean, average.n_slices, average.sample_rate_hz, average.metadata)


def spectrum_of_export(export: RunExport, path: Path) -> RunSpectrum:
    """A run export as the campaign analysis takes it: the run's own metadata is its
    "run_metadata" ({} in an export written before metadata existed: the run is left out)."""
    meta = export.metadata
    if "n_slices" not in meta:
        raise ValueError(f"{path}: not a quax export: it says nothing of the slices averaged (n_slices)")
    n_bins = export.run_mean.size
    rate = meta.get("sample_rate_hz")
    if rate is None:  # no export metadata: the rate from the axis' span (to 1 mHz: a GHz LO loses digits)
        span = export.frequency_hz[-1] - export.frequency_hz[0]
        rate = float(np.round(span * n_bins / (n_bins - 1), 3))
    return RunSpectrum(export.run or path.stem, np.asarray(export.run_mean, dtype=np.float64), int(meta["n_slices"]),
                       float(rate), dict(meta.get("run_metadata") or {}))


def read_exports(paths: Sequence[Path], progress: Progress | None = None) -> list[tuple[RunSpectrum, str]]:
    """(run, its source: the path) of each export, in the order given; FileNotFoundError naming a
    missing file, RuntimeError for one that cannot be read, ValueError for a run given twice or a
    file that is no export by its suffix."""
    from quax_faust.exports.load import load_run  # with h5py: when used, not by every quax command

    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such export: {', '.join(missing)}")
    found: list[tuple[RunSpectrum, str]] = []
    seen: dict[str, str] = {}
    for k, path in enumerate(paths, 1):
        try:
            export = load_run(Path(path), spectra=False)
        except (OSError, KeyError, zipfile.BadZipFile) as exc:  # h5py's, a missing entry, a broken .npz
            raise RuntimeError(f"{path}: not a readable quax export: {type(exc).__name__}: {exc}") from None
        spectrum = spectrum_of_export(export, Path(path))
        if spectrum.run in seen:
            raise ValueError(f"run {spectrum.run} twice: in {seen[spectrum.run]} and {path}")
        seen[spectrum.run] = str(path)
        found.append((spectrum, str(path)))
        if progress is not None:
            progress(k, len(paths))
    return found


def read_live(settings: Settings, runs: Sequence[str] | None,
              progress: Progress | None = None) -> list[tuple[RunSpectrum, str]]:
    """(run, LIVE) of each run from the workers' views; ``runs`` None: every run they hold.
    RuntimeError naming the runs the workers do not hold (and those they do)."""
    from quax_faust.client import fetch_run_average, get_json

    held = [doc["run"] for doc in get_json(settings, "/quax/runs/")["runs"]]
    if runs is None:
        if not held:
            raise RuntimeError(f"the workers ({', '.join(settings.worker_urls)}) hold no runs")
        runs = held
    twice = sorted({run for run in runs if list(runs).count(run) > 1})
    if twice:
        raise ValueError(f"run {', '.join(twice)} given twice")
    unknown = [run for run in runs if run not in held]
    if unknown:
        shown = ", ".join(held[:20]) + (f" and {len(held) - 20} more" if len(held) > 20 else "")
        raise RuntimeError(f"the workers hold no run {', '.join(map(repr, unknown))} "
                           f"(they hold {len(held)}: {shown or 'none'})")
    found = []
    for k, run in enumerate(runs, 1):
        found.append((spectrum_of_average(fetch_run_average(settings, run)), LIVE))
        if progress is not None:
            progress(k, len(runs))
    return found


# --- the analysis and its file ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Campaign:
    """The analysis of the runs read: grand spectrum, rescan list, exclusion curve, and the goal."""

    grand: GrandSpectrum
    entries: list[rescan.RescanEntry]
    curve: exclusion.ExclusionCurve
    threshold_sigma: float
    expected_false_candidates: float
    sources: dict[str, str]
    """run -> where it was read (an export's path, or LIVE)."""


def analyse(read: Sequence[tuple[RunSpectrum, str]], config: CampaignConfig, threshold_sigma: float,
            confidence: float = exclusion.CONFIDENCE, power_floor_sigma: float = 0.0) -> Campaign:
    """The campaign analysis of the runs; RuntimeError if none can enter it (each one's reason)."""
    grand = grand_spectrum([spectrum for spectrum, _ in read], config)
    if not grand.runs:
        raise RuntimeError("no usable run: every run was left out of the campaign analysis:\n  "
                           + "\n  ".join(str(left) for left in grand.left_out))
    return Campaign(grand, rescan.rescan_list(grand, threshold_sigma),
                    exclusion.exclusion_curve(grand, confidence, power_floor_sigma), threshold_sigma,
                    rescan.expected_false_candidates(grand, threshold_sigma),
                    {spectrum.run: source for spectrum, source in read})


def tables(c: Campaign) -> dict[str, dict[str, tuple[np.ndarray, str]]]:
    """The campaign file's tables (exports/campaign.py): column -> (values, unit)."""
    g, curve = c.grand, c.curve
    runs = g.runs
    used_bins = [np.flatnonzero(use.response.used) for use in runs]
    n_bins = [use.response.used.size for use in runs]
    candidate_runs = [(row, setting) for row, entry in enumerate(c.entries) for setting in entry.runs]
    entry_frequency = np.array([e.frequency_hz for e in c.entries])
    entry_g2 = np.array([e.g2 for e in c.entries])
    return {
        "grand": {
            "frequency_hz": (g.frequency_hz, "Hz"), "g2": (g.g2, G2_UNIT), "sigma": (g.sigma, G2_UNIT),
            "significance": (g.significance, "sigma"), "efficiency": (g.efficiency, "1"),
            "noise_width": (g.noise_width, "1"), "neighbour_correlation": (g.neighbour_correlation, "1"),
            "n_runs": (g.n_runs, "1"), "combined_g2": (g.combined_g2, G2_UNIT),
            "combined_sigma": (g.combined_sigma, G2_UNIT)},
        "candidates": {
            "frequency_hz": (entry_frequency, "Hz"), "significance": (np.array([e.significance for e in c.entries]), "sigma"),
            "global_significance": (np.array([e.global_significance for e in c.entries]), "sigma"),
            "g2": (entry_g2, G2_UNIT), "sigma": (np.array([e.sigma for e in c.entries]), G2_UNIT),
            "coupling_gev": (np.sqrt(np.maximum(entry_g2, 0.0)) * ksvz_coupling_gev(entry_frequency), "GeV**-1"),
            "n_runs": (np.array([len(e.runs) for e in c.entries], dtype=np.int64), "1"),
            "rescan_cavity_frequency_hz": (np.array([e.rescan_cavity_frequency_hz for e in c.entries]), "Hz"),
            "rescan_lo_frequency_hz": (np.array([e.rescan_lo_frequency_hz for e in c.entries]), "Hz")},
        "candidate_runs": {
            "candidate": (np.array([row for row, _ in candidate_runs], dtype=np.int64), "row of candidates"),
            "run": (np.array([s.run for _, s in candidate_runs], dtype=str), ""),
            "lo_frequency_hz": (np.array([s.lo_frequency_hz for _, s in candidate_runs]), "Hz"),
            "cavity_frequency_hz": (np.array([s.cavity_frequency_hz for _, s in candidate_runs]), "Hz"),
            "weight": (np.array([s.weight for _, s in candidate_runs]), "share of the inverse variance")},
        "exclusion": {
            "frequency_hz": (curve.frequency_hz, "Hz"), "g_limit_gev": (curve.g_limit_gev, "GeV**-1"),
            "g_sensitivity_gev": (curve.g_sensitivity_gev, "GeV**-1"),
            "g_radiometer_gev": (curve.g_radiometer_gev, "GeV**-1"), "ksvz_gev": (curve.ksvz_gev, "GeV**-1"),
            "dfsz_gev": (curve.dfsz_gev, "GeV**-1"), "limit_over_ksvz": (curve.limit_over_ksvz, "1")},
        "runs_used": {
            "run": (np.array([u.run for u in runs], dtype=str), ""),
            "source": (np.array([c.sources.get(u.run, "") for u in runs], dtype=str), ""),
            "lo_frequency_hz": (np.array([u.lo_frequency_hz for u in runs]), "Hz"),
            **{name: (np.array([getattr(u.cavity, name) for u in runs]), unit) for name, unit in (
                ("cavity_frequency_hz", "Hz"), ("loaded_q", "1"), ("coupling_beta", "1"), ("b_field_t", "T"),
                ("volume_m3", "m**3"), ("form_factor", "1"), ("t_sys_k", "K"))},
            "n_slices": (np.array([u.n_slices for u in runs], dtype=np.int64), "1"),
            "live_time_s": (np.array([u.live_time_s for u in runs]), "s"),
            "used_low_hz": (np.array([u.lo_frequency_hz + (b[0] - n // 2) * g.bin_width_hz
                                      for u, b, n in zip(runs, used_bins, n_bins)]), "Hz"),
            "used_high_hz": (np.array([u.lo_frequency_hz + (b[-1] - n // 2) * g.bin_width_hz
                                       for u, b, n in zip(runs, used_bins, n_bins)]), "Hz"),
            "noise_ratio": (np.array([u.noise_ratio for u in runs]), "measured sigma / (1/sqrt(N))")},
        "runs_left_out": {
            "run": (np.array([left.run for left in g.left_out], dtype=str), ""),
            "source": (np.array([c.sources.get(left.run, "") for left in g.left_out], dtype=str), ""),
            "reason": (np.array([left.reason for left in g.left_out], dtype=str), "")},
    }


def band(g: GrandSpectrum) -> dict[str, float]:
    """The candidate frequencies with a result: lowest and highest (Hz), and their total width."""
    covered = g.frequency_hz[g.covered]
    if not covered.size:
        return {"covered_low_hz": float("nan"), "covered_high_hz": float("nan"), "covered_hz": 0.0}
    return {"covered_low_hz": float(covered[0]), "covered_high_hz": float(covered[-1]),
            "covered_hz": float(covered.size * g.bin_width_hz)}


def best_limit(c: Campaign) -> dict[str, float]:
    """The lowest limit over the band, where it is, and how much of the band excludes KSVZ/DFSZ."""
    covered = c.grand.covered
    if not covered.any():
        return {}
    curve = c.curve
    k = int(np.nanargmin(np.where(covered, curve.limit_over_ksvz, np.nan)))
    width = c.grand.bin_width_hz
    return {"frequency_hz": float(curve.frequency_hz[k]), "g_limit_gev": float(curve.g_limit_gev[k]),
            "limit_over_ksvz": float(curve.limit_over_ksvz[k]),
            "ksvz_excluded_hz": float(np.count_nonzero(covered & (curve.g_limit_gev <= curve.ksvz_gev)) * width),
            "dfsz_excluded_hz": float(np.count_nonzero(covered & (curve.g_limit_gev <= curve.dfsz_gev)) * width)}


def file_metadata(c: Campaign, inputs: dict[str, Any], goal: dict[str, float]) -> dict[str, Any]:
    """The campaign file's metadata: when, by which code, from what, with which knobs and goal."""
    from quax_faust.exports.layout import software

    return {"created_at_s": time.time(), **software(), "inputs": inputs,
            "config": dataclasses.asdict(c.grand.config), "threshold_sigma": c.threshold_sigma, **goal,
            "expected_false_candidates": c.expected_false_candidates, "bin_width_hz": c.grand.bin_width_hz,
            "band": band(c.grand), "best_limit": best_limit(c),
            "n_runs_used": len(c.grand.runs), "n_runs_left_out": len(c.grand.left_out)}


def summary(c: Campaign, goal: dict[str, float]) -> str:
    """What a physicist reads first: runs used and left out, band, threshold, candidates, best limit."""
    g = c.grand
    covered = band(g)
    lines = [f"campaign of {len(g.runs) + len(g.left_out)} runs: {len(g.runs)} used, {len(g.left_out)} left out"]
    names = [use.run for use in g.runs]
    lines.append(f"  used: {', '.join(names[:SHOWN_RUNS])}"
                 + (f" and {len(names) - SHOWN_RUNS} more (runs_used in the file)" if len(names) > SHOWN_RUNS else ""))
    lines += [f"  left out: {left.run} ({c.sources.get(left.run, '?')}): {left.reason}" for left in g.left_out]
    if g.covered.any():
        lines.append(f"band: {covered['covered_low_hz']:.1f} .. {covered['covered_high_hz']:.1f} Hz "
                     f"({covered['covered_hz'] / 1e6:.3f} MHz in {np.count_nonzero(g.covered)} bins of "
                     f"{g.bin_width_hz:.2f} Hz), up to {int(g.n_runs.max(initial=0))} runs per bin")
    else:
        lines.append(f"band: none: no candidate frequency has its whole line ({g.config.line_bins} bins) "
                     "in the used bins of the runs")
    goal_text = (f"an axion expected at {goal['target_significance']:g} sigma passes it "
                 f"{100 * goal['detection_probability']:g} % of the time" if "target_significance" in goal
                 else "given with --threshold")
    lines.append(f"threshold {c.threshold_sigma:.3f} sigma ({goal_text}); "
                 f"{c.expected_false_candidates:.2f} false candidates expected over the band")
    if c.entries:
        lines.append(f"candidates to rescan, strongest first ({len(c.entries)}):")
        lines.append(f"  {'frequency_hz':>16} {'sigma':>6} {'global':>6} {'g2':>8} +- {'sigma':<6}  "
                     f"{'cavity_hz':>16} {'lo_hz':>16}  runs")
        for e in c.entries:
            lines.append(f"  {e.frequency_hz:16.1f} {e.significance:6.2f} {e.global_significance:6.2f} "
                         f"{e.g2:8.3g} +- {e.sigma:<6.3g}  {e.rescan_cavity_frequency_hz:16.1f} "
                         f"{e.rescan_lo_frequency_hz:16.1f}  {', '.join(s.run for s in e.runs)}")
    else:
        lines.append("no candidates above the threshold")
    best = best_limit(c)
    if best:
        lines.append(f"best limit ({100 * c.curve.confidence:g} % CL): |g_agg| < {best['g_limit_gev']:.3g} GeV^-1 = "
                     f"{best['limit_over_ksvz']:.2f} x KSVZ at {best['frequency_hz']:.1f} Hz; KSVZ excluded over "
                     f"{best['ksvz_excluded_hz']:.0f} Hz, DFSZ over {best['dfsz_excluded_hz']:.0f} Hz")
    return "\n".join(lines)


# --- the command ------------------------------------------------------------------------------------

def parse_config(pairs: Sequence[str]) -> CampaignConfig:
    """CampaignConfig from ``NAME=VALUE`` strings (--config), each VALUE of its knob's type."""
    fields = {f.name: type(f.default) for f in dataclasses.fields(CampaignConfig)}
    changes = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise ValueError(f"--config {pair!r}: expected NAME=VALUE, NAME one of {', '.join(fields)}")
        try:
            changes[name] = fields[name](value)
        except ValueError:
            raise ValueError(f"--config {pair!r}: {value!r} is not a {fields[name].__name__}") from None
        if changes[name] < 0:
            raise ValueError(f"--config {pair!r}: must not be negative")
    return dataclasses.replace(CampaignConfig(), **changes)


def cmd_campaign(args, settings: Settings) -> int:
    from quax_faust.exports import campaign as campaign_file

    campaign_file.check_output(args.out, force=args.force)  # before any run is read
    config = parse_config(args.config)
    for name in ("detection_probability", "confidence"):
        if not 0 < getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: a probability between 0 and 1")
    if args.threshold is not None:
        threshold, goal = args.threshold, {}
    else:
        threshold = rescan.threshold_for_goal(args.target_significance, args.detection_probability)
        goal = {"target_significance": args.target_significance, "detection_probability": args.detection_probability}
    goal |= {"confidence": args.confidence, "power_floor_sigma": args.power_floor_sigma}
    with _progress(unit="run", desc="campaign: read") as bar:
        def progress(read: int, total: int) -> None:
            bar.total = total
            bar.update(read - bar.n)

        if args.exports:
            read = read_exports(args.exports, progress)
            inputs: dict[str, Any] = {"exports": [str(p) for p in args.exports]}
        else:
            read = read_live(settings, None if args.all else args.runs, progress)
            inputs = {"live": settings.worker_urls, "runs": [spectrum.run for spectrum, _ in read]}
    log.info("campaign: %d runs read; analysing", len(read))
    c = analyse(read, config, threshold, args.confidence, args.power_floor_sigma)
    campaign_file.write_campaign(args.out, tables(c), file_metadata(c, inputs, goal), force=args.force)
    print(summary(c, goal))
    print(f"wrote {args.out}")
    return EXIT_OK


def register(sub, common) -> None:
    """Add ``quax campaign`` to the CLI's subparsers."""
    p = sub.add_parser("campaign", parents=[common],
                       help="grand spectrum, rescan list and exclusion limit of many runs (live tables or exports)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", nargs="+", metavar="RUN", help="runs read live from the workers")
    source.add_argument("--all", action="store_true", help="every run the workers hold")
    source.add_argument("--exports", nargs="+", type=Path, metavar="FILE", help="run exports written by `quax export`")
    p.add_argument("--out", type=Path, required=True, help="the campaign file, FILE.h5 or FILE.npz")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--target-significance", type=float, default=5.0, metavar="SIGMA",
                   help="threshold set so that an axion expected at this significance passes it ... (default 5)")
    p.add_argument("--detection-probability", type=float, default=0.95, metavar="P", help="... this often (default 0.95)")
    p.add_argument("--threshold", type=float, metavar="SIGMA", help="the candidate threshold itself, in sigma")
    p.add_argument("--confidence", type=float, default=exclusion.CONFIDENCE, metavar="CL",
                   help="confidence level of the exclusion limit (default 0.9)")
    p.add_argument("--power-floor-sigma", type=float, default=0.0, metavar="SIGMA",
                   help="power constraint: the measured g2 is floored at this many sigma (default 0)")
    p.add_argument("--config", action="append", default=[], metavar="NAME=VALUE",
                   help="a knob of the analysis (repeatable): " + ", ".join(
                       f"{f.name} ({f.default})" for f in dataclasses.fields(CampaignConfig)))
    p.set_defaults(func=cmd_campaign)
