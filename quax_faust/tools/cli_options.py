"""The options every `quax` command shares: -v/-q, each setting as a flag or `--set NAME=VALUE`,
`--help-all`, and the settings' own docstrings (what `quax settings` prints)."""

from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import logging
import textwrap
from dataclasses import fields

from quax_faust import settings as settings_module
from quax_faust.settings import ENV_PREFIX, Settings

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


class HelpAllAction(argparse.Action):
    """Print the command's help, then every setting with its flag, variable, default and meaning."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        print("\nsettings (--set NAME=VALUE or --NAME VALUE; environment QUAX_NAME), with their defaults:")
        print(format_settings(Settings(), label="default "))
        parser.exit()


def add_log_options(group) -> None:
    # default SUPPRESS: `quax -v produce` and `quax produce -v` both count, neither resets the other
    # (the last of -v/-q wins).
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                       default=argparse.SUPPRESS, help="log debug messages of quax too")
    group.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                       default=argparse.SUPPRESS, help="log warnings and errors only")


def common_parser() -> argparse.ArgumentParser:
    """The options of every command: logging, settings (one flag per setting, hidden), --help-all."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("options of every command")
    add_log_options(group)
    group.add_argument("--set", action=_SettingAction, metavar="NAME=VALUE", dest="settings_given",
                       default=argparse.SUPPRESS,
                       help="set a setting (repeatable; or --NAME VALUE, e.g. --broker HOST:PORT); "
                            "`quax settings` prints them with their values")
    group.add_argument("--help-all", action=HelpAllAction, help="show this help and every setting")
    for f in fields(Settings):
        parser.add_argument(_flag(f.name), action=_SettingAction, setting=f.name, dest="settings_given",
                            metavar="V", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser
