"""`quax settings --check FILE`: is a settings file (the EnvironmentFile= of the systemd units in
ops/systemd/) one that the services can start with?

The file holds one NAME=VALUE per line, as systemd reads it: blank lines and lines starting with
# or ; are ignored, a value may be wrapped in one pair of quotes. Every QUAX_* name must be a
setting and its value must convert to the setting's type; other names (KAFKA_* for the broker,
BOKEH_ALLOW_WS_ORIGIN for the dashboard) pass through unchecked. A missing file, a line that is
not NAME=VALUE, an unknown QUAX_ name or a bad value is refused with one line naming the file, the
line and what was expected, which is what the journal shows when a unit does not start. The broker
connection is checked as a whole too (a SASL protocol needs a user name, TLS a CA file).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from dataclasses import fields
from pathlib import Path

from quax_faust.settings import ENV_PREFIX, Settings

EXIT_OK, EXIT_INVALID, EXIT_MISSING = 0, 2, 3
"""The `quax` exit codes: 2 for a bad setting value, 3 for a missing file (tools/cli.py)."""

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class SettingsFileError(ValueError):
    """The settings file cannot be used; the message names the file and the line."""


def read_env_file(path: Path) -> dict[str, tuple[int, str]]:
    """NAME -> (line number, value) of an environment file; the last assignment of a name wins,
    as in systemd."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"settings file {path} does not exist: write it (start from "
                                "ops/systemd/quax.env.example; docs/deploy.md, 'Services at boot')") from None
    except OSError as exc:
        raise FileNotFoundError(f"settings file {path} cannot be read: {exc.strerror}") from None
    found: dict[str, tuple[int, str]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not NAME.match(name):
            raise SettingsFileError(f"{path}:{number}: expected NAME=VALUE, got {_clip(line)!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        found[name] = (number, value)
    return found


def check_file(path: Path) -> dict[str, str]:
    """The QUAX_* settings of the file (NAME -> value) if every one is valid; else
    SettingsFileError (FileNotFoundError for a missing file) naming the file and the line."""
    known = {ENV_PREFIX + f.name.upper(): f.name for f in fields(Settings)}
    settings = Settings()
    ours = {}
    for name, (number, value) in read_env_file(path).items():
        if not name.startswith(ENV_PREFIX):
            continue
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise SettingsFileError(f"{path}:{number}: {name} is not a quax setting"
                                    + (f" (did you mean {close[0]}?)" if close else "")
                                    + "; `quax settings` lists them")
        try:
            settings = settings.replace(**{known[name]: value})
        except ValueError as exc:
            raise SettingsFileError(f"{path}:{number}: {name}: {exc}") from None
        ours[name] = value
    from quax_faust.connection import librdkafka_config

    try:  # the broker connection as a whole: protocol, mechanism, the login and CA it needs
        librdkafka_config(settings)
    except ValueError as exc:
        raise SettingsFileError(f"{path}: {exc}") from None
    return ours


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width] + "..."


class CheckAction(argparse.Action):
    """`--check FILE`: check the file and exit. It runs while the command line is parsed, before
    `quax` reads QUAX_* from the environment: under systemd that environment is the file itself,
    and a bad value must be reported with its file and line, not as a bad environment."""

    def __call__(self, parser, namespace, value, option_string=None):
        path = Path(value)
        try:
            ours = check_file(path)
        except FileNotFoundError as exc:
            parser.exit(EXIT_MISSING, f"quax settings --check: {exc}\n")
        except SettingsFileError as exc:
            parser.exit(EXIT_INVALID, f"quax settings --check: {exc}\n")
        print(f"quax settings --check: {path}: {len(ours)} quax settings, all valid"
              + (f" ({', '.join(sorted(ours))})" if ours else ""))
        sys.stdout.flush()
        parser.exit(EXIT_OK)
