"""The `quax` commands of the live chain: topics, produce, worker, settings, export (their options
and what they do; `quax synth`, `quax analyse`, `quax campaign` and `quax bench` have modules of their own)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from quax_faust.settings import Settings
from quax_faust.tools.cli_options import format_settings
from quax_faust.tools.settings_check import CheckAction

EXIT_OK, EXIT_VERDICT, EXIT_USAGE, EXIT_RUNTIME, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
FAUST_LOGLEVEL = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn"}
log = logging.getLogger("quax")


def register(sub, common) -> None:
    """Add our commands to the `quax` subparsers (``common``: the options every command shares)."""
    p = sub.add_parser("topics", parents=[common], help="create our topics, or fix their configs")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("produce", parents=[common], help="send DAQ file pairs to the slices topic")
    p.add_argument("--source", type=Path, required=True, help="directory of duck_i/duck_q pairs")
    p.add_argument("--run", required=True, help="run id (A-Z a-z 0-9 _ . -)")
    p.add_argument("--pace", default="realtime", help="realtime, max, or a real-time factor (e.g. 10)")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="the run's metadata (repeatable): lo_frequency_hz='9.2 GHz', loaded_q=1e5, "
                        "operator=..., see docs/usage.md 'Run metadata'; --lo-frequency-hz HZ sets the LO")
    p.add_argument("--meta-file", type=Path, metavar="TOML", help="the run's metadata from a TOML file")
    p.add_argument("--loop", type=int, default=1, help="send the directory this many times, renumbering files")
    p.add_argument("--strict", action="store_true", help="exit 1 if any file was skipped")
    p.add_argument("--follow", action="store_true",
                   help="keep watching SOURCE for new pairs (a live DAQ directory) until Ctrl-C")
    p.add_argument("--idle-exit", type=float, metavar="S", help="with --follow: stop after S s without a new pair")
    p.add_argument("--settle-s", type=float, default=1.0,
                   help="with --follow: a pair is complete when its sizes were stable this long (s)")
    p.add_argument("--no-checkpoint", action="store_true",
                   help="send every pair even if the run's checkpoint says it was sent")
    p.add_argument("--quarantine", type=Path, help="where bad pairs are moved (default SOURCE/quarantine)")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("worker", parents=[common], help="run Faust worker K (web port web_port_base+K)")
    p.add_argument("--index", type=int, default=0, metavar="K", help="worker number (default 0)")
    p.add_argument("--loglevel", type=str.lower, choices=("crit", "error", "warn", "info", "debug"),
                   help="Faust's log level (default info; debug with -v, warn with -q)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("settings", parents=[common],
                       help="print every setting: its env variable, its value here and its meaning")
    p.add_argument("--check", action=CheckAction, metavar="FILE",
                   help="check a settings file of NAME=VALUE lines (the systemd units' EnvironmentFile) and "
                        "exit: 0 valid, 2 a bad line, name or value (the message names the line), 3 missing")
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser("export", parents=[common], help="write a run from the live tables to .h5/.npz/.csv")
    p.add_argument("--run", required=True)
    p.add_argument("--out", type=Path, required=True, help="FILE.h5, FILE.npz or FILE.csv (the run average)")
    p.add_argument("--per-file-csv", type=Path, help="with a .csv: each file's spectrum, a row per file and bin")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_export)



def _progress(**kwargs):
    """A tqdm bar on stderr, drawn only when stderr is a terminal (never into logs or pipes)."""
    from tqdm import tqdm

    return tqdm(file=sys.stderr, disable=not sys.stderr.isatty(), **kwargs)


def cmd_topics(args, settings: Settings) -> int:
    from quax_faust.stream.topics import describe_plan, ensure_topics

    print("\n".join(describe_plan(settings, asyncio.run(ensure_topics(settings)))))
    return EXIT_OK


def cmd_produce(args, settings: Settings) -> int:
    from quax_faust.core import run_meta
    from quax_faust.stream.metrics import serve_producer_metrics
    from quax_faust.ingest.producer import produce_directory

    given = run_meta.read_file(args.meta_file) if args.meta_file else {}
    given = run_meta.merge(given, run_meta.parse_pairs(args.meta), what="--meta-file")
    if "lo_frequency_hz" in getattr(args, "settings_given", {}):  # said on this command line: the run's
        given = run_meta.merge(given, {"lo_frequency_hz": settings.lo_frequency_hz}, what="--meta")
    serve_producer_metrics(settings.producer_metrics_port, settings.web_host)  # /metrics (docs/metrics.md)
    report = asyncio.run(produce_directory(
        settings, args.source, args.run, args.pace, loop=args.loop, follow=args.follow,
        checkpoint=not args.no_checkpoint, quarantine_dir=args.quarantine, idle_exit_s=args.idle_exit,
        settle_s=args.settle_s, metadata=given))
    print(f"sent {report.files_sent} files, {report.slices_sent} slices in {report.messages_sent} "
          f"messages ({report.bytes_sent / 1e6:.1f} MB), {report.data_seconds:.1f} s of data in "
          f"{report.wall_seconds:.1f} s = {report.realtime_factor:.2f}x real time; "
          f"{report.tail_samples_dropped} tail samples dropped; {len(report.skipped)} files skipped; "
          f"{report.already_sent} sent before (checkpoint)")
    for reason in report.skipped:
        print(f"  skipped: {reason}")
    return EXIT_VERDICT if report.skipped and args.strict else EXIT_OK


def cmd_worker(args, settings: Settings) -> int:
    from quax_faust.stream.worker import run_worker

    loglevel = args.loglevel or FAUST_LOGLEVEL[args.log_level]
    run_worker(settings, index=args.index, loglevel=loglevel)
    return EXIT_OK


def cmd_export(args, settings: Settings) -> int:
    from quax_faust.client import fetch_run_average, iter_file_pages
    from quax_faust.exports import layout, write

    offsets = _covered_offsets(settings)  # before the average: it holds at least what they cover
    average = fetch_run_average(settings, args.run)  # the files exported: those of this average
    with _progress(unit="file", desc=f"export {args.run}") as bar:
        def progress(fetched: int, total: int) -> None:
            bar.total = total
            bar.update(fetched - bar.n)

        pages = iter_file_pages(settings, args.run, average.file_indices, progress=progress)
        written = write.write_run(args.out, average, pages, layout.describe(average, average.metadata, offsets),
                                  force=args.force, per_file_csv=args.per_file_csv)
    print(f"wrote {args.out}: run {args.run}, {written['n_files']} files, {written['n_slices']} slices, "
          f"{average.slice_len} bins")
    return EXIT_OK


def _covered_offsets(settings: Settings) -> dict:
    """connection.covered_offsets of the workers' own consumer group and topics (their health view
    names them), or why they are unknown: an export from the views alone still works."""
    from quax_faust.client import get_json
    from quax_faust.connection import covered_offsets

    try:
        health = get_json(settings, "/quax/health/")
        theirs = settings.replace(app_id=health["consumer_group"], slices_topic=health["slices_topic"],
                                  spectra_topic=health["spectra_topic"])
        return covered_offsets(theirs, wait_s=5.0)
    except (RuntimeError, OSError, KeyError) as exc:  # KeyError: a worker whose health view does not name them
        log.warning("export: the Kafka offsets covered are unknown (%s)", exc)
        return {"unknown": str(exc)}


def cmd_settings(args, settings: Settings) -> int:
    print(format_settings(settings))
    return EXIT_OK
