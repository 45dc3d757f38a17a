"""``quax campaign``: the campaign analysis of many runs, offline, from the live tables or exports.

Each run's average, N slices, sample rate and metadata come from the workers' run views
(client.fetch_run_average: ``--runs R1 R2 ...`` or ``--all``) or from files written by
``quax export`` (exports.load_run: ``--exports FILE ...``). The physics is quax_faust.search's
(docs/analysis.md, "The campaign analysis"): grand_spectrum, rescan_list, exclusion_curve. The
result goes to a campaign file (exports/campaign.py: .h5 or .npz) and a summary is printed.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quax_faust.client import RunAverage
from quax_faust.search.campaign_options import add_analysis_options, analysis_goal
from quax_faust.search.campaign_result import LIVE, analyse, summary, tables
from quax_faust.search.run_excess import RunSpectrum
from quax_faust.settings import Settings
from quax_faust.tools.commands import EXIT_OK, _progress

if TYPE_CHECKING:
    from quax_faust.exports.load import RunExport

log = logging.getLogger("quax")
Progress = Callable[[int, int], None]
"""progress(runs_read, n_runs), called after each run."""


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
    from quax_faust.exports.load import (
        load_run,  # with h5py: when used, not by every quax command
    )

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


# --- the command ------------------------------------------------------------------------------------

def cmd_campaign(args, settings: Settings) -> int:
    from quax_faust.exports import campaign as campaign_file

    campaign_file.check_output(args.out, force=args.force)  # before any run is read
    config, threshold, goal = analysis_goal(args)
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
    c = analyse(read, config, threshold, goal["confidence"], goal["power_floor_sigma"])
    campaign_file.write_campaign(args.out, tables(c), campaign_file.campaign_metadata(c, inputs, goal),
                                force=args.force)
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
    add_analysis_options(p)
    p.set_defaults(func=cmd_campaign)
