"""Command-line flags generated from config dataclasses, so `--help` and the defaults cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from erase.config import check_ranges, field_ranges, range_help


class OneLineParser(argparse.ArgumentParser):
    """argparse's own refusals (a value of the wrong type, an unknown choice or flag) as one line and exit code 2,
    like every other bad input; --help still shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _parse_optional(base: type):
    def parse(text: str):
        return None if text.lower() in ("none", "") else base(text)

    parse.__name__ = base.__name__
    return parse


def add_dataclass_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """One `--kebab-case` flag per field; help text from the field's metadata; `none` unsets optional values."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
        base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "") + range_help(f) + " (default: %(default)s)"
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        parse = _parse_optional(base) if optional else base
        parser.add_argument(flag, type=parse, default=f.default, choices=f.metadata.get("choices"), metavar=None if f.metadata.get("choices") else f.name.upper(),
                            help=help_text + ("; 'none' unsets it" if optional else ""))


def dataclass_from_args(cls: type, args: argparse.Namespace):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    check_ranges(values, field_ranges(cls))
    return cls(**values)


def chosen_method(argv, default: str = "sfron") -> str:
    """The value of `--method` among `argv` (either spelling), else `default`: read before the parser is built, so
    only that method's flags exist."""
    argv = [str(a) for a in argv]
    for k, arg in enumerate(argv):
        if arg == "--method" and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    return default


class _ForeignOption(argparse.Action):
    """A flag of another method: refused in one line naming the methods that take it."""

    def __init__(self, option_strings, dest, method: str, owners: list[str], **kwargs):
        self.method, self.owners = method, owners
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(2, f"{parser.prog}: error: {option_string} is not an option of --method {self.method} (it is one "
                       f"of {', '.join(self.owners)}); see '{parser.prog} --method {self.method} --help'\n")


def add_method_arguments(parser: argparse.ArgumentParser, methods: dict[str, tuple], method: str,
                         not_read: dict[str, tuple] | None = None) -> None:
    """`method`'s config fields (less its `not_read` ones) as flags, each with that method's own type, choices, range
    and default; the other methods' flags, and the fields it never reads, are refused in one line. Flags default to
    "not given", so a preset and then the method's own dataclass default apply unless the user sets one."""
    if method not in methods:
        return  # argparse refuses the --method value itself
    cls = methods[method][1]
    group = parser.add_argument_group(f"{method} options ('erase unlearn --method NAME --help' lists another "
                                      "method's)")
    hints = typing.get_type_hints(cls)
    own = set()
    skipped = set((not_read or {}).get(method, ()))
    for f in dataclasses.fields(cls):
        if f.name in skipped:
            continue
        hint = hints[f.name]
        optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
        base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
        flag = "--" + f.name.replace("_", "-")
        own.add(f.name)
        help_text = (f.metadata.get("help", "") + range_help(f) + f" (default: {f.default!r})").replace("%", "%%")
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        choices = f.metadata.get("choices")
        group.add_argument(flag, type=_parse_optional(base) if optional else base, default=argparse.SUPPRESS,
                           choices=choices, metavar=None if choices else f.name.upper(),
                           help=help_text + ("; 'none' unsets it" if optional else ""))
    owners: dict[str, list[str]] = {}
    for name, (_, other) in methods.items():
        for f in dataclasses.fields(other):
            if f.name not in own and f.name not in (not_read or {}).get(name, ()):
                owners.setdefault(f.name, []).append(name)
    for name, takers in owners.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, "--no-" + flag[2:], dest=f"foreign_{name}", action=_ForeignOption, method=method,
                            owners=takers)
