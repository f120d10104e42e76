"""Command-line flags generated from config dataclasses, so `--help` and the defaults cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from erase.config import check_ranges, field_ranges, range_help


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


def add_method_arguments(parser: argparse.ArgumentParser, methods: dict[str, tuple]) -> None:
    """One flag per config field across all methods; help names the methods that take it and their defaults.

    Flags default to "not given", so each method's own dataclass default applies unless the user sets one.
    """
    group = parser.add_argument_group("method options (each applies to the methods named in its help)")
    by_field: dict[str, list[tuple[str, dataclasses.Field, type]]] = {}
    for name, (_, cls) in methods.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            by_field.setdefault(f.name, []).append((name, f, hints[f.name]))
    for field_name, uses in by_field.items():
        _, first, hint = uses[0]
        optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
        base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
        defaults = {}
        for method, f, _ in uses:
            defaults.setdefault(repr(f.default), []).append(method)
        if len(defaults) == 1:
            default_text = f"default {next(iter(defaults))}"
        else:
            default_text = "defaults: " + "; ".join(f"{value} for {', '.join(ms)}" for value, ms in defaults.items())
        help_text = f"{first.metadata.get('help', '')}{range_help(first)} [{', '.join(m for m, _, _ in uses)}; {default_text}]"
        help_text = help_text.replace("%", "%%").replace("%%%%", "%%")
        flag = "--" + field_name.replace("_", "-")
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        parse = _parse_optional(base) if optional else base
        choices = first.metadata.get("choices")
        group.add_argument(flag, type=parse, default=argparse.SUPPRESS, choices=choices,
                           metavar=None if choices else field_name.upper(),
                           help=help_text + ("; 'none' unsets it" if optional else ""))
