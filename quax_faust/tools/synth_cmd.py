"""``quax synth`` and ``quax synth-campaign``: synthetic DAQ pairs, with axions if asked, and their metadata.

``quax synth`` writes one run's duck_i/duck_q pairs (core.synth: noise through a passband, tones);
``--axion FREQ_HZ:G2`` adds an axion's signal, which needs the run's LO and cavity (``--meta`` /
``--meta-file``, the parsing of ``quax produce``); ``--meta-out`` writes the metadata file that
``quax produce --meta-file`` reads. ``quax synth-campaign`` writes K runs at stepped LOs, one
directory each with its pairs and run.toml (search/synthetic_campaign.py raw_campaign_runs), and
prints each run's ``quax produce`` command. The physics of the signal is search/axion_signal.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from quax_faust.core import daq, run_meta, synth
from quax_faust.search.axion_signal import Axion, axion_psd_excess, axions_in_band, lo_and_cavity
from quax_faust.search.synthetic_campaign import CampaignPlan, RawRun, raw_campaign_runs
from quax_faust.settings import Settings
from quax_faust.tools.commands import EXIT_OK, _progress

log = logging.getLogger("quax")
METADATA_FILE = "run.toml"
"""Name of each run's metadata file in a synth-campaign directory."""


def register(sub, common) -> None:
    """Add synth and synth-campaign to the `quax` subparsers."""
    p = sub.add_parser("synth", parents=[common], help="write synthetic duck_i/duck_q file pairs")
    p.add_argument("--out", type=Path, required=True, help="directory to write into")
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--samples", type=int, default=1 << 23, help="samples per file (default 2**23)")
    p.add_argument("--first-index", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    _tone_options(p)
    p.add_argument("--pace", help="like a DAQ: realtime (one file per file duration) or X times faster (default: max)")
    p.add_argument("--keep", type=int, metavar="K", help="delete the pairs it wrote beyond the newest K")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="the run's metadata (repeatable, as for quax produce): lo_frequency_hz, cavity_frequency_hz, ...")
    p.add_argument("--meta-file", type=Path, metavar="TOML", help="the run's metadata from a TOML file")
    _axion_option(p)
    p.add_argument("--meta-out", type=Path, metavar="PATH", help="write the run's metadata here (for quax produce --meta-file)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("synth-campaign", parents=[common],
                       help="write K synthetic runs at stepped LOs, each with its pairs and run.toml")
    p.add_argument("--out", type=Path, required=True, help="directory of the runs (OUT/run000, OUT/run001, ...)")
    p.add_argument("--runs", type=int, required=True, metavar="K")
    p.add_argument("--first-lo-hz", type=float, default=CampaignPlan.first_lo_hz)
    p.add_argument("--lo-step-bins", type=int, default=CampaignPlan.lo_step_bins,
                   help="LO step in whole bins of sample_rate_hz/slice_len (default 77: 50 kHz)")
    p.add_argument("--cavity-offset-hz", type=float, default=CampaignPlan.cavity_offset_hz,
                   help="cavity resonance minus LO (default 200e3)")
    p.add_argument("--files", type=int, default=4, help="files per run")
    p.add_argument("--samples", type=int, default=1 << 23, help="samples per file (default 2**23)")
    _axion_option(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-prefix", default="run", help="run names: PREFIX000, PREFIX001, ... (default run)")
    _tone_options(p)
    p.add_argument("--pace", help="like a DAQ stepping its cavity: realtime (one file per file duration) or X times "
                                  "faster (default: max); each run's run.toml is written before its first file")
    p.add_argument("--keep", type=int, metavar="K", help="in each run, delete the pairs it wrote beyond the newest K")
    p.set_defaults(func=cmd_synth_campaign)


def _tone_options(p) -> None:
    p.add_argument("--tone-hz", type=float, action="append", help="inject a line at this baseband frequency")
    p.add_argument("--tone-amplitude", type=float, action="append", help="its amplitude (V; noise is 1 V rms per channel)")


def _tones(args) -> tuple[tuple[float, float], ...]:
    if len(args.tone_hz or []) != len(args.tone_amplitude or []):
        raise ValueError("give one --tone-amplitude per --tone-hz")
    return tuple(zip(args.tone_hz or [], args.tone_amplitude or []))


def _axion_option(p) -> None:
    p.add_argument("--axion", type=_axion_argument, action="append", default=[], metavar="FREQ_HZ:G2",
                   help="inject an axion at RF rest frequency FREQ_HZ with (g/g_KSVZ)**2 = G2 (repeatable)")


def _axion_argument(spec: str) -> Axion:
    try:
        return parse_axion(spec)
    except ValueError as exc:  # argparse shows the message of this one only
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_axion(spec: str) -> Axion:
    """'FREQ_HZ:G2' -> Axion; ValueError (argparse: a usage error) naming the spec otherwise."""
    freq, sep, g2 = spec.partition(":")
    try:
        axion = Axion(float(freq), float(g2)) if sep else None
    except ValueError:
        axion = None
    if axion is None or not (math.isfinite(axion.frequency_hz) and axion.frequency_hz > 0
                             and math.isfinite(axion.g2) and axion.g2 > 0):
        raise ValueError(f"{spec!r}: expected FREQ_HZ:G2, an RF rest frequency in Hz and "
                         f"(g/g_KSVZ)**2, both positive numbers (e.g. 10400195000:2000)")
    return axion


def metadata_toml(fields: Mapping[str, Any], comment: str = "") -> str:
    """A run's metadata as the TOML file run_meta.read_file reads (``key = value`` lines)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    for key, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"metadata {key} = {value!r}: a number or a string expected")
        run_meta.parse_value(key, value)  # a key or value that read_file would refuse fails here
        text = json.dumps(value) if isinstance(value, str) else repr(value)  # JSON escapes are TOML's
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def write_metadata(path: Path, fields: Mapping[str, Any], comment: str = "") -> Path:
    """Write metadata_toml(fields) to path (its directory made); the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(metadata_toml(fields, comment))
    return path


def axion_excess_of(axions: Sequence[Axion], fields: Mapping[str, Any], n_samples: int,
                    sample_rate_hz: float) -> synth.PsdExcess | None:
    """The axions' synth.PsdExcess for files of n_samples; ValueError saying what the metadata
    lacks, or which axion lies outside the band LO +- fs/2."""
    if not axions:
        return None
    try:
        lo, _ = lo_and_cavity(fields)
    except ValueError as exc:
        raise ValueError(f"--axion needs the run's LO and cavity: {exc.args[0]}; give them with "
                         f"--meta KEY=VALUE or --meta-file run.toml (docs/usage.md, 'Run metadata')") from None
    outside = [a for a in axions if a not in axions_in_band(axions, lo, sample_rate_hz)]
    if outside:
        raise ValueError(f"--axion {outside[0].frequency_hz:.1f}:{outside[0].g2:g}: its line lies outside the band "
                         f"LO +- fs/2 = {lo - sample_rate_hz / 2:.1f} .. {lo + sample_rate_hz / 2:.1f} Hz")
    return axion_psd_excess(axions, fields, n_samples, sample_rate_hz)


def _given_metadata(args, settings: Settings) -> dict[str, Any]:
    given = run_meta.read_file(args.meta_file) if args.meta_file else {}
    given = run_meta.merge(given, run_meta.parse_pairs(args.meta), what="--meta-file")
    given.setdefault("sample_rate_hz", settings.sample_rate_hz)
    if given["sample_rate_hz"] != settings.sample_rate_hz:
        raise ValueError(f"metadata sample_rate_hz {given['sample_rate_hz']:g} Hz, but the files are written at "
                         f"{settings.sample_rate_hz:g} Hz (setting sample_rate_hz)")
    return given


def cmd_synth(args, settings: Settings) -> int:
    from quax_faust.ingest.producer import parse_pace

    model = synth.SynthModel(sample_rate_hz=settings.sample_rate_hz, tones=_tones(args))
    fields = _given_metadata(args, settings)
    excess = axion_excess_of(args.axion, fields, args.samples, settings.sample_rate_hz)
    if (args.meta or args.meta_file) and not (args.axion or args.meta_out):
        log.warning("synth: the metadata given is used by neither --axion nor --meta-out")
    if args.meta_out:
        write_metadata(args.meta_out, fields, _comment("quax synth", args.axion))
        print(f"wrote {args.meta_out} (for quax produce --source {args.out} --run RUN --meta-file {args.meta_out})")
    every_s = args.samples / settings.sample_rate_hz / parse_pace(args.pace) if args.pace else 0.0
    with _progress(total=args.files, unit="file", desc="synth") as bar:
        def wrote(pair: daq.FilePair) -> None:
            bar.write(f"wrote {pair.i_path.name} + {pair.q_path.name} ({args.samples} samples)", file=sys.stdout)
            sys.stdout.flush()
            bar.update()

        write_paced_pairs(args.out, args.first_index, args.files,
                          lambda index: synth.synth_file(index, args.samples, model, args.seed, excess),
                          every_s=every_s, keep=args.keep, on_file=wrote)
    return EXIT_OK


def write_paced_pairs(directory: Path, first_index: int, n_files: int, samples_of: Callable[[int], object], *,
                      every_s: float = 0.0, keep: int | None = None,
                      on_file: Callable[[daq.FilePair], None] | None = None) -> None:
    """Write the pairs first_index .. first_index + n_files - 1, samples_of(index) each, one every
    ``every_s`` seconds (a DAQ's pace; 0: at once), deleting the pairs this call wrote beyond the
    newest ``keep``; on_file(pair) after each."""
    started = time.monotonic()
    for k in range(n_files):
        index = first_index + k
        time.sleep(max(0.0, started + k * every_s - time.monotonic()))  # a DAQ: one file per duration
        pair = daq.write_pair(directory, index, samples_of(index))
        if keep and k >= keep:  # only pairs this call wrote
            old = daq.pair_paths(directory, index - keep)
            old.i_path.unlink(missing_ok=True)
            old.q_path.unlink(missing_ok=True)
        if on_file is not None:
            on_file(pair)


def _comment(writer: str, axions: Sequence[Axion]) -> str:
    injected = ", ".join(f"{a.frequency_hz:.1f} Hz at (g/g_KSVZ)**2 = {a.g2:g}" for a in axions) or "none"
    return f"Run metadata for quax produce --meta-file, written by {writer}.\nAxions injected: {injected}."


# --- synthetic campaigns -------------------------------------------------------------------------

def write_raw_run(directory: Path, run: RawRun, n_files: int, n_samples: int, sample_rate_hz: float,
                  on_file: Callable[[daq.FilePair], None] | None = None, *, every_s: float = 0.0,
                  keep: int | None = None, tones: tuple[tuple[float, float], ...] = ()) -> Path:
    """Write a planned run into directory: DIR/run.toml, then its pairs 0 .. n_files - 1 (the
    axions' signal computed once), one every ``every_s`` seconds (a DAQ's pace; 0: at once),
    deleting those beyond the newest ``keep``; on_file(pair) after each. FileExistsError if
    directory already holds pairs (a producer would send them with the new ones). The metadata
    file's path."""
    directory = Path(directory)
    _refuse_old_pairs(directory)
    model = synth.SynthModel(sample_rate_hz=sample_rate_hz, tones=tones)
    excess = axion_excess_of(run.axions, run.metadata, n_samples, sample_rate_hz)
    path = write_metadata(directory / METADATA_FILE, run.metadata, _comment("quax synth-campaign", run.axions))
    write_paced_pairs(directory, 0, n_files, lambda index: synth.synth_file(index, n_samples, model, run.seed, excess),
                      every_s=every_s, keep=keep, on_file=on_file)
    return path


def _refuse_old_pairs(directory: Path) -> None:
    """FileExistsError if directory holds DAQ pairs: a producer would send them with the new ones."""
    if directory.is_dir() and daq.scan_dir(directory)[0]:
        raise FileExistsError(f"{directory} already holds DAQ pairs: choose another --out or delete them")


def produce_command(directory: Path, run: RawRun) -> str:
    """The quax produce command line that sends a written run with its metadata."""
    return shlex.join(["quax", "produce", "--source", str(directory), "--run", run.name,
                       "--meta-file", str(Path(directory) / METADATA_FILE)])


def cmd_synth_campaign(args, settings: Settings) -> int:
    from quax_faust.ingest.producer import parse_pace

    if args.runs < 1 or args.files < 1:
        raise ValueError(f"--runs {args.runs}, --files {args.files}: at least one run of one file")
    tones = _tones(args)
    every_s = args.samples / settings.sample_rate_hz / parse_pace(args.pace) if args.pace else 0.0
    plan = replace(CampaignPlan(), n_runs=args.runs, first_lo_hz=args.first_lo_hz, lo_step_bins=args.lo_step_bins,
                   cavity_offset_hz=args.cavity_offset_hz, n_bins=settings.slice_len,
                   sample_rate_hz=settings.sample_rate_hz)
    runs = raw_campaign_runs(plan, args.axion, seed=args.seed, run_prefix=args.run_prefix)
    lost = [a for a in args.axion if not any(a in run.axions for run in runs)]
    if lost:
        raise ValueError(f"--axion {lost[0].frequency_hz:.1f}:{lost[0].g2:g}: no run's band reaches it "
                         f"(LOs {plan.lo_frequencies_hz()[0]:.1f} .. {plan.lo_frequencies_hz()[-1]:.1f} Hz, "
                         f"+- {plan.sample_rate_hz / 2:g} Hz)")
    for run in runs:  # all checked before anything is written
        _refuse_old_pairs(args.out / run.name)
    commands = []
    with _progress(total=args.runs * args.files, unit="file", desc="synth-campaign") as bar:
        for run in runs:
            directory = args.out / run.name
            bar.write(f"{run.name}: writing {directory / METADATA_FILE}, then its pairs", file=sys.stdout)
            sys.stdout.flush()
            write_raw_run(directory, run, args.files, args.samples, settings.sample_rate_hz,
                          on_file=lambda pair: bar.update(), every_s=every_s, keep=args.keep, tones=tones)
            axions = ", ".join(f"{a.frequency_hz:.1f} Hz g2 {a.g2:g}" for a in run.axions) or "none"
            bar.write(f"{run.name}: LO {run.metadata['lo_frequency_hz']:.1f} Hz, cavity "
                      f"{run.metadata['cavity_frequency_hz']:.1f} Hz, {args.files} files of {args.samples} "
                      f"samples, axions: {axions}", file=sys.stdout)
            commands.append(produce_command(directory, run))
    print("send each run with its metadata:")
    print("\n".join(commands))
    return EXIT_OK
