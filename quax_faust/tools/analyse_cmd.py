"""``quax analyse``: the candidates of a run, from an export file or the live tables, as a table or JSON.

The live search replayed offline (candidates.replay_run: one search after each file, in file order)
or one search of the final average. The knobs are the settings' (search_settings.py), the LO
frequency the export's own.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from quax_faust.search import candidates
from quax_faust.search.spectrum_search import SearchConfig
from quax_faust.search_settings import config_from_settings
from quax_faust.settings import Settings


def load_export(path: Path) -> dict[str, np.ndarray]:
    """An export written by ``quax export --out FILE.npz`` (the layout of client.fetch_run)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: quax analyse reads the .npz export (the .csv has no slice counts)")
    with np.load(path) as npz:
        data = {k: npz[k] for k in npz.files}
    missing = {"frequency_hz", "run_mean", "n_slices_total", "file_index", "file_mean",
               "file_n_slices"} - set(data)
    if missing:
        raise ValueError(f"{path}: not a quax export, missing {', '.join(sorted(missing))}")
    return data


def analyse_export(data: dict[str, np.ndarray], config: SearchConfig,
                   replay: bool = True) -> dict[str, Any]:
    """Candidates of an exported run: the replay over its files, or one search of the final average."""
    freq = np.asarray(data["frequency_hz"], dtype=np.float64)
    n_bins = freq.size
    # fs from the whole span (the axis may carry a GHz LO: single steps lose digits); to 1 mHz
    sample_rate_hz = float(np.round((freq[-1] - freq[0]) * n_bins / (n_bins - 1), 3))
    lo = float(freq[n_bins // 2])  # the DC bin carries the LO frequency the workers added
    config = dataclasses.replace(config, lo_frequency_hz=lo)
    run = str(data.get("run", "run"))
    if replay and len(data["file_index"]):
        return candidates.replay_run(run, data["file_index"], data["file_mean"], data["file_n_slices"],
                                     sample_rate_hz, config=config)
    last = int(np.max(data["file_index"])) if len(data["file_index"]) else 0
    doc, _ = candidates.search_run(None, run, data["run_mean"], int(data["n_slices_total"]),
                                   sample_rate_hz, last, len(data["file_index"]), config=config)
    return doc


def format_table(doc: dict[str, Any]) -> str:
    """The candidates as a fixed-width text table, with the search's context above it."""
    lines = [
        f"run {doc['run']}: {doc['n_files']} files, {doc['n_slices']} slices; "
        f"{doc.get('n_trials', 0)} blocks of {doc.get('block_bins', 1)} bin(s) searched; "
        f"threshold {doc['threshold_sigma']:g} sigma global = "
        f"{doc.get('local_threshold_sigma', float('nan')):.2f} sigma local; "
        f"noise scale {doc.get('noise_scale', float('nan')):.3f}",
    ]
    if not doc["candidates"]:
        lines.append("no candidates")
        return "\n".join(lines)
    lines.append(f"{'frequency_hz':>18} {'sigma':>8} {'local':>8} {'power_V2':>11} "
                 f"{'first_file':>10} {'persistent':>10} {'now':>5}")
    for c in doc["candidates"]:
        sig = "-" if c["significance"] is None else f"{c['significance']:.2f}"
        loc = "-" if c["local_significance"] is None else f"{c['local_significance']:.2f}"
        lines.append(f"{c['frequency_hz']:18.1f} {sig:>8} {loc:>8} {c['power']:11.3e} "
                     f"{c['first_seen_file']:>10} {str(c['persistent']).lower():>10} "
                     f"{'above' if c['above_threshold'] else 'below':>5}")
    return "\n".join(lines)


def cmd_analyse(args, settings: Settings) -> int:
    if args.from_export is not None:
        data = load_export(args.from_export)
        if args.run is not None and str(data.get("run")) != args.run:
            raise ValueError(f"{args.from_export} holds run {str(data.get('run'))!r}, not {args.run!r}")
    elif args.run is not None:
        from quax_faust.client import fetch_run

        data = fetch_run(settings, args.run)
    else:
        raise ValueError("give --run NAME (live tables) or --from-export FILE.npz")
    doc = analyse_export(data, config_from_settings(settings), replay=not args.final_only)
    print(json.dumps(doc, indent=1) if args.json else format_table(doc))
    return 0


def register(sub, common) -> None:
    """Add ``quax analyse`` to the CLI's subparsers."""
    p = sub.add_parser("analyse", parents=[common],
                       help="search a run's average for line candidates (export file or live tables)")
    p.add_argument("--run", help="run id; read live from the workers unless --from-export is given")
    p.add_argument("--from-export", type=Path, help="an export .npz written by `quax export`")
    p.add_argument("--final-only", action="store_true",
                   help="search only the final average (default: replay file by file, as live)")
    p.add_argument("--json", action="store_true", help="print the candidates document as JSON")
    p.set_defaults(func=cmd_analyse)
