"""``quax reprocess``, ``quax verify`` and ``quax reprocess-campaign``: the Spark batch jobs from the
command line.

Added to the ``quax`` command through the entry point ``spark = "spark_batch.cli:register"``
(group ``quax.commands``, pyproject.toml), so quax_faust never imports spark_batch; pyspark is
imported only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

from quax_faust.settings import Settings

log = logging.getLogger("quax.spark")


def _conf(pairs: list[str] | None) -> dict[str, str]:
    conf = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--conf {pair!r}: expected KEY=VALUE, e.g. spark.executor.memory=4g")
        conf[key] = value
    return conf


class _SparkStatus:
    """On a terminal, one status line: the Spark stages running, their tasks done, the time so far."""

    def __init__(self, what: str):
        self.what = what
        self.spark = None
        """Set once the session exists; until then the line says Spark is starting."""
        self._stop = threading.Event()

    def __enter__(self) -> "_SparkStatus":
        from tqdm import tqdm

        self._bar = tqdm(file=sys.stderr, disable=not sys.stderr.isatty(), desc=f"{self.what}: starting Spark",
                         bar_format="{desc} [{elapsed}]")
        if not self._bar.disable:
            self._thread = threading.Thread(target=self._poll, name="spark-status", daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            if self.spark is not None:
                tracker = self.spark.sparkContext.statusTracker()
                stages = [s for s in map(tracker.getStageInfo, tracker.getActiveStageIds()) if s is not None]
                self._bar.set_description_str(f"{self.what}: " + (", ".join(
                    f"stage {s.stageId} {s.numCompletedTasks}/{s.numTasks} tasks" for s in stages) or "driver"),
                    refresh=False)
            self._bar.refresh()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if not self._bar.disable:
            self._thread.join()
        self._bar.close()


def _reprocess(args, settings: Settings):
    from .job import reprocess
    from .session import get_session

    with _SparkStatus(f"{args.command} {args.run}") as status:
        status.spark = get_session(settings, _conf(args.conf))
        return reprocess(settings, args.run, args.source, args.out, spark=status.spark)


def cmd_reprocess(args, settings: Settings) -> int:
    result = _reprocess(args, settings)
    print(result.summary())
    print(f"wrote {args.out}/files.parquet, run.parquet, run.npz, report.json")
    return 0


def cmd_verify(args, settings: Settings) -> int:
    from quax_faust.client import fetch_run_average, iter_file_pages

    from .session import check_master
    from .verify import LiveFiles, compare_files

    check_master(settings.spark_master)  # an unreachable spark:// master fails in seconds, whatever the tables
    live = fetch_run_average(settings, args.run)  # no point in a Spark job if the tables are down
    result = _reprocess(args, settings)
    print(result.summary())
    pages = (LiveFiles(p.file_index, p.columns["n_slices"], p.mean, p.columns.get("acquired_at_s"))
             for p in iter_file_pages(settings, args.run, live.file_indices))  # a page at a time
    verdict = compare_files(args.run, live.mean, live.n_slices, live.frequency_hz, pages, result.data,
                            settings.verify_tolerance)
    for line in verdict.lines():
        print(line)
    return 0 if verdict.equal else 1  # 1: a verdict, MISMATCH (quax --help, exit codes)


def cmd_reprocess_campaign(args, settings: Settings) -> int:
    from quax_faust.exports import campaign as campaign_file
    from quax_faust.search.campaign_result import analyse, summary, tables

    from .campaign import reprocess_runs
    from quax_faust.search.campaign_options import analysis_goal
    from .session import get_session

    campaign_file.check_output(args.out, force=args.force)  # before the archive is read
    config, threshold, goal = analysis_goal(args)
    with _SparkStatus(f"{args.command} ({len(args.runs) if args.runs else 'all'} runs)") as status:
        status.spark = get_session(settings, _conf(args.conf))
        found = reprocess_runs(settings, None if args.all else args.runs, args.source, spark=status.spark)
    print(found.summary())
    c = analyse(found.spectra(), config, threshold, args.confidence, args.power_floor_sigma)
    campaign_file.write_campaign(args.out, tables(c), campaign_file.campaign_metadata(c, found.inputs(settings), goal),
                                 force=args.force)
    print(summary(c, goal))
    print(f"wrote {args.out}")
    return 0


def _add_campaign_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from quax_faust.search.campaign_options import add_analysis_options

    help_text = "the campaign analysis of many runs, each recomputed with Spark from the archived topic"
    p = sub.add_parser("reprocess-campaign", parents=[common], help=help_text,
                       description=help_text + " in one pass (docs/spark.md, \"Campaigns\"); the result as "
                       "`quax campaign` writes it")
    runs = p.add_mutually_exclusive_group(required=True)
    runs.add_argument("--runs", nargs="+", metavar="RUN", help="runs to recompute from the archive")
    runs.add_argument("--all", action="store_true", help="every run the archived topic holds")
    p.add_argument("--from", dest="source", choices=("slices", "spectra"), default="slices",
                   help="slices: full recompute (decode, FFT); spectra: from the per-file spectra")
    p.add_argument("--out", type=Path, required=True, help="the campaign file, FILE.h5 or FILE.npz")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    add_analysis_options(p)
    p.add_argument("--conf", action="append", metavar="KEY=VALUE",
                   help="extra Spark property, repeatable (e.g. spark.executor.memory=4g)")
    p.set_defaults(func=cmd_reprocess_campaign)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the reprocess, verify and reprocess-campaign subcommands to the ``quax`` parser."""
    for name, func, help_text in (
            ("reprocess", cmd_reprocess, "recompute a run with Spark from the archived topic"),
            ("verify", cmd_verify, "recompute a run with Spark and compare it with the live tables")):
        p = sub.add_parser(name, parents=[common], help=help_text,
                           description=help_text + " (docs/spark.md); the Spark master is "
                           "--spark-master (default local[2], or spark://host:7077)")
        p.add_argument("--run", required=True, help="run id")
        p.add_argument("--from", dest="source", choices=("slices", "spectra"), default="slices",
                       help="slices: full recompute (decode, FFT); spectra: from the per-file spectra")
        p.add_argument("--out", type=Path, required=name == "reprocess", default=None,
                       help="directory for files.parquet, run.parquet, run.npz, report.json")
        p.add_argument("--conf", action="append", metavar="KEY=VALUE",
                       help="extra Spark property, repeatable (e.g. spark.executor.memory=4g)")
        p.set_defaults(func=func)
    _add_campaign_parser(sub, common)
