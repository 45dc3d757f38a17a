"""The `quax` command: synth, topics, produce, worker, export, settings, analyse, campaign, bench, doctor,
and the commands of other installed packages (entry points `quax.commands`: spark_batch adds
reprocess and verify).

Settings: any command takes `--set NAME=VALUE` (repeatable) or the setting's own flag
(`--broker HOST:PORT`, `--slice-len N`, ...); flags beat `QUAX_<NAME>` environment variables,
which beat the defaults in settings.py. `quax settings` prints each one with its value and meaning.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version

from quax_faust.core.errors import QuaxError
from quax_faust.settings import Settings
from quax_faust.tools import commands
from quax_faust.tools.cli_options import HelpAllAction, add_log_options, common_parser
from quax_faust.tools.commands import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_VERDICT

log = logging.getLogger("quax")

COMMANDS_GROUP = "quax.commands"
"""Entry-point group of the commands other packages add: `name = "module:register"`, where
`register(subparsers, common)` adds subcommands with `parents=[common]`."""

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


def build_parser() -> argparse.ArgumentParser:
    common = common_parser()
    try:
        package_version = version("quax-stream")
    except PackageNotFoundError:  # a source tree that was never installed
        package_version = "unknown (not installed)"
    parser = argparse.ArgumentParser(prog="quax", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version}")
    add_log_options(parser)
    parser.add_argument("--help-all", action=HelpAllAction, help="show this help and every setting")
    sub = parser.add_subparsers(dest="command", required=True)

    from quax_faust.tools import synth_cmd
    synth_cmd.register(sub, common)  # quax synth, quax synth-campaign
    commands.register(sub, common)  # synth, topics, produce, worker, settings, export
    from quax_faust.tools import analyse_cmd
    analyse_cmd.register(sub, common)  # quax analyse
    from quax_faust.tools import campaign_cmd
    campaign_cmd.register(sub, common)  # quax campaign
    from quax_faust.tools import campaign_live_cmd
    campaign_live_cmd.register(sub, common)  # quax campaign-live
    from quax_faust.tools import bench
    bench.register(sub, common)  # quax bench
    from quax_faust.tools.doctor import command as doctor
    doctor.register(sub, common)  # quax doctor
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
