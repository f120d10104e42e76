"""Command-line flags generated from config dataclasses, so `--help` and the defaults cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


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
        help_text = f.metadata.get("help", "") + " (default: %(default)s)"
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        parse = _parse_optional(base) if optional else base
        parser.add_argument(flag, type=parse, default=f.default, choices=f.metadata.get("choices"), metavar=None if f.metadata.get("choices") else f.name.upper(),
                            help=help_text + ("; 'none' unsets it" if optional else ""))


def dataclass_from_args(cls: type, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
