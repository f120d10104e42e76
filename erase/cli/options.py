"""Command-line flags generated from config dataclasses, so `--help` and the defaults cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing

# A numeric field's allowed values, declared once as an interval in its metadata, e.g.
# `field(default=1e-4, metadata={"help": ..., "range": "(0, inf)"})`, or for a plain flag in a command's RANGES dict.
# check_ranges refuses a value outside it with a UsageError naming the flag, before any work starts.
_INTERVAL = re.compile(r"^([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])$")


def interval_words(interval: str) -> str:
    """'[1, inf)' -> 'at least 1'; '(0, inf)' -> 'greater than 0'; '[0, 1)' -> 'in [0, 1)'."""
    low_bracket, low, high, _ = _INTERVAL.match(interval).groups()
    if high == "inf":
        return f"at least {low}" if low_bracket == "[" else f"greater than {low}"
    return f"in {interval}"


def in_interval(value: float, interval: str) -> bool:
    match = _INTERVAL.match(interval)
    if match is None:
        raise ValueError(f"range {interval!r} is not an interval like '[0, 1)' or '(0, inf)'")
    low_bracket, low, high, high_bracket = match.groups()
    low, high = float(low), float(high)
    if isinstance(value, float) and not math.isfinite(value):
        return False
    above = value >= low if low_bracket == "[" else value > low
    below = value <= high if high_bracket == "]" else value < high
    return above and below


def check_ranges(values: dict, ranges: dict[str, str]) -> None:
    """Refuse the first value outside its interval (None = unset, allowed): `--flag must be at least 1, got 0`."""
    from erase.errors import UsageError

    for name, interval in ranges.items():
        value = values.get(name)
        if value is not None and not in_interval(value, interval):
            raise UsageError(f"--{name.replace('_', '-')} must be {interval_words(interval)}, got {value}")


def range_help(f: dataclasses.Field) -> str:
    return f"; must be {interval_words(f.metadata['range'])}" if "range" in f.metadata else ""


def field_ranges(cls: type) -> dict[str, str]:
    """{field name: interval} of a config dataclass's fields that declare a "range"."""
    return {f.name: f.metadata["range"] for f in dataclasses.fields(cls) if "range" in f.metadata}


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


def method_config_from_args(method: str, cls: type, args: argparse.Namespace, all_fields: set[str],
                            preset: dict | None = None):
    """The method's config: its defaults, then `preset`'s values, then the flags given; a flag of another method is
    an error."""
    from erase.errors import UsageError

    own = {f.name for f in dataclasses.fields(cls)}
    foreign = sorted(name for name in all_fields - own if hasattr(args, name))
    if foreign:
        flags = ", ".join("--" + n.replace("_", "-") for n in foreign)
        raise UsageError(f"{flags} {'is not an option' if len(foreign) == 1 else 'are not options'} of --method {method}; "
                         f"see 'erase unlearn --help' for which flags each method takes")
    values = {**(preset or {}), **{name: getattr(args, name) for name in own if hasattr(args, name)}}
    check_ranges(values, field_ranges(cls))
    return cls(**values)
