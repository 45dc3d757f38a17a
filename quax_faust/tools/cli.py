"""The ``quax`` command: synth, topics, produce, worker, export.

Every subcommand also takes each setting as a flag (``--broker``, ``--slice-len``, ...); flags beat
``QUAX_*`` environment variables, which beat the defaults in settings.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from quax_faust.settings import ENV_PREFIX, Settings

log = logging.getLogger("quax")


def _settings_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("settings (also QUAX_<NAME> environment variables)")
    defaults = Settings()
    for f in fields(Settings):
        group.add_argument("--" + f.name.replace("_", "-"), dest="setting_" + f.name, metavar="V",
                           help=f"default {getattr(defaults, f.name)}")
    return parser


def _apply_settings(args: argparse.Namespace) -> Settings:
    """Settings from env + flags; flags are exported to the environment for child imports (app.py)."""
    for f in fields(Settings):
        value = getattr(args, "setting_" + f.name, None)
        if value is not None:
            os.environ[ENV_PREFIX + f.name.upper()] = value
    return Settings.from_env()


def cmd_synth(args, settings: Settings) -> int:
    from quax_faust.core import daq, synth

    tones = tuple(zip(args.tone_hz or [], args.tone_amplitude or []))
    if len(args.tone_hz or []) != len(args.tone_amplitude or []):
        raise SystemExit("give one --tone-amplitude per --tone-hz")
    model = synth.SynthModel(sample_rate_hz=settings.sample_rate_hz, tones=tones)
    for k in range(args.files):
        index = args.first_index + k
        pair = daq.write_pair(args.out, index, synth.synth_file(index, args.samples, model, args.seed))
        print(f"wrote {pair.i_path.name} + {pair.q_path.name} ({args.samples} samples)", flush=True)
    return 0


def cmd_topics(args, settings: Settings) -> int:
    from quax_faust.stream.topics import ensure_topics

    for name, n in asyncio.run(ensure_topics(settings)).items():
        print(f"{name}: {n} partitions")
    return 0


def cmd_produce(args, settings: Settings) -> int:
    from quax_faust.stream.metrics import serve_producer_metrics
    from quax_faust.ingest.producer import produce_directory

    serve_producer_metrics(settings.producer_metrics_port, settings.web_host)  # /metrics (docs/metrics.md)
    report = asyncio.run(produce_directory(
        settings, args.source, args.run, args.pace, loop=args.loop, follow=args.follow,
        checkpoint=not args.no_checkpoint, quarantine_dir=args.quarantine, idle_exit_s=args.idle_exit,
        settle_s=args.settle_s))
    print(f"sent {report.files_sent} files, {report.slices_sent} slices in {report.messages_sent} "
          f"messages ({report.bytes_sent / 1e6:.1f} MB), {report.data_seconds:.1f} s of data in "
          f"{report.wall_seconds:.1f} s = {report.realtime_factor:.2f}x real time; "
          f"{report.tail_samples_dropped} tail samples dropped; {len(report.skipped)} files skipped; "
          f"{report.already_sent} sent before (checkpoint)")
    for reason in report.skipped:
        print(f"  skipped: {reason}")
    return 1 if report.skipped and args.strict else 0


def cmd_worker(args, settings: Settings) -> int:
    from quax_faust.stream.topics import ensure_topics

    datadir = Path(settings.var_dir) / "workers" / str(args.index)
    datadir.mkdir(parents=True, exist_ok=True)
    # Faust subscribes only to topics that exist: create ours first (idempotent).
    asyncio.run(ensure_topics(settings))
    from quax_faust.stream.app import app

    app.conf.datadir = datadir
    sys.argv = ["quax-worker", "worker", "--loglevel", args.loglevel,
                "--web-host", settings.web_host, "--web-port", str(settings.web_port_base + args.index)]
    app.main()
    return 0


def cmd_export(args, settings: Settings) -> int:
    from quax_faust.client import fetch_run, write_export

    data = fetch_run(settings, args.run)
    out = write_export(data, args.out)
    print(f"wrote {out}: run {args.run}, {len(data['file_index'])} files, "
          f"{int(data['n_slices_total'])} slices, {data['frequency_hz'].shape[0]} bins")
    return 0


def cmd_settings(args, settings: Settings) -> int:
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if f.name == "sasl_password" and value:
            value = "********"
        print(f"{f.name:24} {ENV_PREFIX + f.name.upper():32} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = _settings_parser()
    parser = argparse.ArgumentParser(prog="quax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", parents=[common], help="write synthetic duck_i/duck_q file pairs")
    p.add_argument("--out", type=Path, required=True, help="directory to write into")
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--samples", type=int, default=1 << 23, help="samples per file (default 2**23)")
    p.add_argument("--first-index", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tone-hz", type=float, action="append", help="inject a line at this baseband frequency")
    p.add_argument("--tone-amplitude", type=float, action="append", help="its amplitude (V; noise is 1 V rms per channel)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("topics", parents=[common], help="create the slices/spectra topics")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("produce", parents=[common], help="send DAQ file pairs to the slices topic")
    p.add_argument("--source", type=Path, required=True, help="directory of duck_i/duck_q pairs")
    p.add_argument("--run", required=True, help="run id (A-Z a-z 0-9 _ . -)")
    p.add_argument("--pace", default="realtime", help="realtime, max, or a real-time factor (e.g. 10)")
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
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("settings", parents=[common], help="print every setting and its env variable")
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser("export", parents=[common], help="write a run from the live tables to .npz/.csv")
    p.add_argument("--run", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_export)

    from quax_faust.search import candidates
    candidates.register(sub, common)  # quax analyse
    from quax_faust.tools import bench
    bench.register(sub, common)  # quax bench
    import spark_batch.cli
    spark_batch.cli.register(sub, common)  # quax reprocess, quax verify (Spark imported only there)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = _apply_settings(args)
        return args.func(args, settings)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
