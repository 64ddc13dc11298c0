"""Pieces every CLI command shares: dataclass-driven flags, YAML configs, one-line errors, atomic files.

Conventions (STYLE.md 6 and 11): a config dataclass's fields become snake_case flags with the
field's ``help`` metadata; ``--config run.yaml`` supplies defaults that flags override (trl
semantics); an unknown YAML key or flag is an error with a did-you-mean; any
:class:`~contrastkit.errors.UsageError` becomes ``contrastkit <cmd>: error: <message>`` and exit
code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

from contrastkit.errors import UsageError, did_you_mean
from contrastkit.io import atomic_write, read_jsonl  # noqa: F401  (re-exported for the commands)

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and a did-you-mean for unknown flags."""

    def error(self, message: str):  # noqa: D401 - argparse API
        if message.startswith("unrecognized arguments:"):
            bad = message.split(":", 1)[1].split()
            flag = next((b for b in bad if b.startswith("--")), None)
            if flag:
                options = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
                message += "." + did_you_mean(flag.split("=")[0], options)
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_bool(text: str) -> bool:
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _list_of(item_type: Callable) -> Callable[[str], list]:
    def parse(text: str) -> list:
        return [item_type(x.strip()) for x in str(text).split(",") if x.strip()]

    return parse


def field_argtype(tp) -> Callable[[str], Any] | None:
    """argparse ``type=`` for a dataclass field annotation (bool, int, float, str, list[...], Optional[...])."""
    if isinstance(tp, str):
        tp = eval(tp, {"typing": typing, "Any": Any, "Literal": typing.Literal}, {})  # noqa: S307 - own annotations
    tp = _unwrap_optional(tp)
    if tp is bool:
        return _parse_bool
    if typing.get_origin(tp) in (list, tuple):
        args = typing.get_args(tp)
        return _list_of(_unwrap_optional(args[0]) if args else str)
    if typing.get_origin(tp) is typing.Literal:
        return type(typing.get_args(tp)[0])
    if tp in (int, float, str):
        return tp
    return str


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                            group_title: str | None = None) -> list[str]:
    """Add a ``--field`` flag for every field of dataclass ``cls``; flags default to None (= use the class default).

    Returns the field names added. Booleans accept ``--flag`` / ``--flag true|false``.
    """
    target = parser.add_argument_group(group_title) if group_title else parser
    existing = {a.dest for a in parser._actions}
    added = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name in existing or not f.init:
            continue
        tp = hints.get(f.name, f.type)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default!r})" if help_text else f"default: {default!r}"
        kwargs: dict[str, Any] = dict(dest=f.name, default=None, help=help_text.replace("%", "%%"))
        if _unwrap_optional(tp) is bool:
            kwargs.update(nargs="?", const=True, type=_parse_bool, metavar="BOOL")
        else:
            kwargs.update(type=field_argtype(tp), metavar=f.name.upper())
        target.add_argument(f"--{f.name}", **kwargs)
        added.append(f.name)
    return added


def build_dataclass(cls: type, values: dict[str, Any], *, where: str = "") -> Any:
    """Instantiate ``cls`` from the non-None entries of ``values`` whose keys are its fields."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {k: v for k, v in values.items() if k in names and v is not None}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UsageError(f"{where}{e}") from None


def load_yaml_config(path: str | None, known: list[str]) -> dict[str, Any]:
    """Read ``--config``: a YAML mapping of flag names to values (an ``env:`` mapping sets env vars)."""
    if not path:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file '{path}' must be a mapping of option names to values")
    for key, value in (data.pop("env", None) or {}).items():
        os.environ[str(key)] = str(value)
    for key in data:
        if key not in known:
            raise UsageError(f"config file '{path}': unknown key '{key}'.{did_you_mean(key, known)}")
    return data


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config`` YAML fill every flag the command line left unset."""
    args = parser.parse_args(argv)
    known = [a.dest for a in parser._actions if a.dest not in ("help", "config")]
    for key, value in load_yaml_config(getattr(args, "config", None), known).items():
        if getattr(args, key, None) in (None, False, []):
            setattr(args, key, value)
    return args


def run_command(prog: str, fn: Callable[[], int | None]) -> int:
    """Run a command body, mapping bad input to one line on stderr and exit code 2."""
    try:
        return fn() or 0
    except SystemExit as e:  # argparse: --help (0) or a usage error it already printed (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
