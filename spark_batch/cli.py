"""``quax reprocess`` and ``quax verify``: the Spark batch job from the command line.

Registered into the ``quax`` parser by quax_faust/tools/cli.py; pyspark is imported only when one of
these two commands runs.
"""

from __future__ import annotations

import argparse
import logging
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


def cmd_reprocess(args, settings: Settings) -> int:
    from .job import reprocess

    result = reprocess(settings, args.run, args.source, args.out, conf=_conf(args.conf))
    print(result.summary())
    print(f"wrote {args.out}/files.parquet, run.parquet, run.npz, report.json")
    return 0


def cmd_verify(args, settings: Settings) -> int:
    from quax_faust.client import fetch_run

    from .job import reprocess
    from .verify import compare

    live = fetch_run(settings, args.run)  # first: no point in a Spark job if the tables are down
    result = reprocess(settings, args.run, args.source, args.out, conf=_conf(args.conf))
    print(result.summary())
    verdict = compare(live, result.data, settings.verify_tolerance)
    for line in verdict.lines():
        print(line)
    return 0 if verdict.equal else 1


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the reprocess and verify subcommands to the ``quax`` parser."""
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
