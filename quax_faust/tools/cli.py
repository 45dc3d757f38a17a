"""The `quax` command: synth, topics, produce, worker, export, settings, analyse, bench, and the
commands of other installed packages (entry points `quax.commands`: spark_batch adds reprocess
and verify).

Settings: any command takes `--set NAME=VALUE` (repeatable) or the setting's own flag
(`--broker HOST:PORT`, `--slice-len N`, ...); flags beat `QUAX_<NAME>` environment variables,
which beat the defaults in settings.py. `quax settings` prints each one with its value and meaning.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import difflib
import inspect
import logging
import os
import sys
import textwrap
import time
from dataclasses import fields
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path

from quax_faust import settings as settings_module
from quax_faust.core.errors import QuaxError
from quax_faust.settings import ENV_PREFIX, Settings

log = logging.getLogger("quax")

COMMANDS_GROUP = "quax.commands"
"""Entry-point group of the commands other packages add: `name = "module:register"`, where
`register(subparsers, common)` adds subcommands with `parents=[common]`."""

EXIT_OK, EXIT_VERDICT, EXIT_USAGE, EXIT_RUNTIME, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EPILOG = f"""\
exit codes:
  {EXIT_OK}    done
  {EXIT_VERDICT}    a verdict or a strict check failed (verify: MISMATCH; produce --strict: files skipped)
  {EXIT_USAGE}    usage error: an unknown flag, a bad flag, argument or setting value
  {EXIT_RUNTIME}    runtime error: broker or workers unreachable, missing files, bad data (the message says which)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)

`quax COMMAND --help` gives a command's own options; `quax COMMAND --help-all` adds every setting."""

OUR_LOGGERS = ("quax", "quax_faust", "spark_batch")
"""Loggers that -v turns to debug (-q quiets every logger)."""
FAUST_LOGLEVEL = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn"}
SECRET_SETTINGS = {"sasl_password"}


def setting_docs() -> dict[str, str]:
    """Each Settings field's docstring: the string literal under the field in settings.py ('' if none)."""
    tree = ast.parse(inspect.getsource(settings_module))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == Settings.__name__]
    docs: dict[str, str] = {}
    for field_node, doc_node in zip(cls.body, cls.body[1:]):
        if (isinstance(field_node, ast.AnnAssign) and isinstance(field_node.target, ast.Name)
                and isinstance(doc_node, ast.Expr) and isinstance(doc_node.value, ast.Constant)
                and isinstance(doc_node.value.value, str)):
            docs[field_node.target.id] = " ".join(inspect.cleandoc(doc_node.value.value).split())
    return docs


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(name: str, value) -> str:
    return "********" if name in SECRET_SETTINGS and value else str(value)


def format_settings(settings: Settings, *, label: str = "") -> str:
    """Every setting: name, environment variable, value (`label` before it), then its docstring."""
    docs, lines = setting_docs(), []
    for f in fields(Settings):
        lines.append(f"{f.name:30} {ENV_PREFIX + f.name.upper():36} {label}{_shown(f.name, getattr(settings, f.name))}")
        if docs.get(f.name):
            lines += textwrap.wrap(docs[f.name], width=100, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


class _SettingAction(argparse.Action):
    """`--NAME VALUE` or `--set NAME=VALUE`: checked now, collected in `args.settings_given`
    (later on the command line wins)."""

    def __init__(self, option_strings, dest, setting: str | None = None, **kwargs):
        self.setting = setting
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, value, option_string=None):
        name = self.setting
        if name is None:  # --set NAME=VALUE
            name, sep, value = value.partition("=")
            name = name.strip().replace("-", "_")
            known = [f.name for f in fields(Settings)]
            if not sep or name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                raise argparse.ArgumentError(self, f"expected NAME=VALUE with a setting's NAME, got {name!r}"
                                             + (f" (did you mean {close[0]}?)" if close else "")
                                             + "; `quax settings` lists them")
        try:
            Settings().replace(**{name: value})
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, "settings_given", {**getattr(namespace, "settings_given", {}), name: value})


class _HelpAllAction(argparse.Action):
    """Print the command's help, then every setting with its flag, variable, default and meaning."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        print("\nsettings (--set NAME=VALUE or --NAME VALUE; environment QUAX_NAME), with their defaults:")
        print(format_settings(Settings(), label="default "))
        parser.exit()


def _add_log_options(group) -> None:
    # default SUPPRESS: `quax -v produce` and `quax produce -v` both count, neither resets the other
    # (the last of -v/-q wins).
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                       default=argparse.SUPPRESS, help="log debug messages of quax too")
    group.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                       default=argparse.SUPPRESS, help="log warnings and errors only")


def _common_parser() -> argparse.ArgumentParser:
    """The options of every command: logging, settings (one flag per setting, hidden), --help-all."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("options of every command")
    _add_log_options(group)
    group.add_argument("--set", action=_SettingAction, metavar="NAME=VALUE", dest="settings_given",
                       default=argparse.SUPPRESS,
                       help="set a setting (repeatable; or --NAME VALUE, e.g. --broker HOST:PORT); "
                            "`quax settings` prints them with their values")
    group.add_argument("--help-all", action=_HelpAllAction, help="show this help and every setting")
    for f in fields(Settings):
        parser.add_argument(_flag(f.name), action=_SettingAction, setting=f.name, dest="settings_given",
                            metavar="V", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _progress(**kwargs):
    """A tqdm bar on stderr, drawn only when stderr is a terminal (never into logs or pipes)."""
    from tqdm import tqdm

    return tqdm(file=sys.stderr, disable=not sys.stderr.isatty(), **kwargs)


def cmd_synth(args, settings: Settings) -> int:
    from quax_faust.core import daq, synth
    from quax_faust.ingest.producer import parse_pace

    if len(args.tone_hz or []) != len(args.tone_amplitude or []):
        raise ValueError("give one --tone-amplitude per --tone-hz")
    tones = tuple(zip(args.tone_hz or [], args.tone_amplitude or []))
    model = synth.SynthModel(sample_rate_hz=settings.sample_rate_hz, tones=tones)
    every_s = args.samples / settings.sample_rate_hz / parse_pace(args.pace) if args.pace else 0.0
    started = time.monotonic()
    with _progress(total=args.files, unit="file", desc="synth") as bar:
        for k in range(args.files):
            index = args.first_index + k
            time.sleep(max(0.0, started + k * every_s - time.monotonic()))  # a DAQ: one file per duration
            pair = daq.write_pair(args.out, index, synth.synth_file(index, args.samples, model, args.seed))
            if args.keep and k >= args.keep:  # only pairs this command wrote
                old = daq.pair_paths(args.out, index - args.keep)
                old.i_path.unlink(missing_ok=True)
                old.q_path.unlink(missing_ok=True)
            bar.write(f"wrote {pair.i_path.name} + {pair.q_path.name} ({args.samples} samples)", file=sys.stdout)
            sys.stdout.flush()
            bar.update()
    return EXIT_OK


def cmd_topics(args, settings: Settings) -> int:
    from quax_faust.stream.topics import describe_plan, ensure_topics

    print("\n".join(describe_plan(settings, asyncio.run(ensure_topics(settings)))))
    return EXIT_OK


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
    return EXIT_VERDICT if report.skipped and args.strict else EXIT_OK


def cmd_worker(args, settings: Settings) -> int:
    from quax_faust.stream.worker import run_worker

    loglevel = args.loglevel or FAUST_LOGLEVEL[args.log_level]
    run_worker(settings, index=args.index, loglevel=loglevel)
    return EXIT_OK


def cmd_export(args, settings: Settings) -> int:
    from quax_faust.client import fetch_run_average, iter_file_pages
    from quax_faust.exports import layout, write

    average = fetch_run_average(settings, args.run)  # the files exported: those of this average
    with _progress(unit="file", desc=f"export {args.run}") as bar:
        def progress(fetched: int, total: int) -> None:
            bar.total = total
            bar.update(fetched - bar.n)

        pages = iter_file_pages(settings, args.run, average.file_indices, progress=progress)
        written = write.write_run(args.out, average, pages, layout.describe(average), force=args.force,
                                  per_file_csv=args.per_file_csv)
    print(f"wrote {args.out}: run {args.run}, {written['n_files']} files, {written['n_slices']} slices, "
          f"{average.slice_len} bins")
    return EXIT_OK


def cmd_settings(args, settings: Settings) -> int:
    print(format_settings(settings))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = _common_parser()
    try:
        package_version = version("quax-stream")
    except PackageNotFoundError:  # a source tree that was never installed
        package_version = "unknown (not installed)"
    parser = argparse.ArgumentParser(prog="quax", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version}")
    _add_log_options(parser)
    parser.add_argument("--help-all", action=_HelpAllAction, help="show this help and every setting")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", parents=[common], help="write synthetic duck_i/duck_q file pairs")
    p.add_argument("--out", type=Path, required=True, help="directory to write into")
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--samples", type=int, default=1 << 23, help="samples per file (default 2**23)")
    p.add_argument("--first-index", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tone-hz", type=float, action="append", help="inject a line at this baseband frequency")
    p.add_argument("--tone-amplitude", type=float, action="append", help="its amplitude (V; noise is 1 V rms per channel)")
    p.add_argument("--pace", help="like a DAQ: realtime (one file per file duration) or X times faster (default: max)")
    p.add_argument("--keep", type=int, metavar="K", help="delete the pairs it wrote beyond the newest K")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("topics", parents=[common], help="create our topics, or fix their configs")
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
    p.add_argument("--index", type=int, default=0, metavar="K", help="worker number (default 0)")
    p.add_argument("--loglevel", type=str.lower, choices=("crit", "error", "warn", "info", "debug"),
                   help="Faust's log level (default info; debug with -v, warn with -q)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("settings", parents=[common],
                       help="print every setting: its env variable, its value here and its meaning")
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser("export", parents=[common], help="write a run from the live tables to .h5/.npz/.csv")
    p.add_argument("--run", required=True)
    p.add_argument("--out", type=Path, required=True, help="FILE.h5, FILE.npz or FILE.csv (the run average)")
    p.add_argument("--per-file-csv", type=Path, help="with a .csv: each file's spectrum, a row per file and bin")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_export)

    from quax_faust.tools import analyse_cmd
    analyse_cmd.register(sub, common)  # quax analyse
    from quax_faust.tools import bench
    bench.register(sub, common)  # quax bench
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:  # e.g. spark = spark_batch.cli:register (reprocess, verify)
            entry.load()(sub, common)
        except Exception as exc:  # a broken plugin must not take produce and worker down with it
            log.warning("commands of %s = %s not loaded: %s: %s", entry.name, entry.value,
                        type(exc).__name__, exc)
    return parser


def _exit_code(exc: Exception) -> int:
    """Runtime errors exit 3; any other ValueError is a bad argument value (2)."""
    from quax_faust.core.daq import DaqError

    if isinstance(exc, (QuaxError, DaqError, RuntimeError, OSError)):
        return EXIT_RUNTIME
    return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_RUNTIME


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.log_level = getattr(args, "log_level", logging.INFO)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # -v: debug messages of ours only; those of aiokafka or py4j (every Spark call) would bury them.
    logging.getLogger().setLevel(max(args.log_level, logging.INFO))
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(args.log_level)
    try:
        settings = Settings.from_env().replace(**getattr(args, "settings_given", {}))
    except ValueError as exc:  # a bad QUAX_* value (flags were checked by the parser)
        parser.error(f"in the environment: {exc}")
    try:
        return args.func(args, settings)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader left (`quax settings | head`): not our error
        sys.stdout = open(os.devnull, "w")  # nor is the flush at exit
        return EXIT_OK
    except Exception as exc:
        code = _exit_code(exc)
        if isinstance(exc, (ValueError, RuntimeError, OSError)):
            log.error("%s", exc)
        else:  # not an error we raise on purpose: a bug, keep its traceback
            log.exception("unexpected %s", type(exc).__name__)
        return code


if __name__ == "__main__":
    sys.exit(main())
