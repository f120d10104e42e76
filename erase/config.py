"""Typed configs: each numeric field declares its allowed interval once, and the same check serves Python keywords
and command-line flags (the flags and their help are generated from the fields: erase/cli/options.py).

A field reads `field(default=1e-4, metadata={"help": ..., "range": "(0, inf)"})`; `check_ranges` refuses a value
outside it with an `OptionError` naming the option, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import os
import re

from erase.errors import OptionError, option

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
    """Refuse the first value outside its interval (None = unset, allowed): `lr must be greater than 0, got 0`
    (`--lr ...` on the command line)."""
    for name, interval in ranges.items():
        value = values.get(name)
        if value is not None and not in_interval(value, interval):
            raise OptionError(f"{option('--' + name.replace('_', '-'))} must be {interval_words(interval)}, got {value}")


def range_help(f: dataclasses.Field) -> str:
    return f"; must be {interval_words(f.metadata['range'])}" if "range" in f.metadata else ""


def field_ranges(cls: type) -> dict[str, str]:
    """{field name: interval} of a config dataclass's fields that declare a "range"."""
    return {f.name: f.metadata["range"] for f in dataclasses.fields(cls) if "range" in f.metadata}


def check_choices(values: dict, cls: type) -> None:
    """Refuse a value outside a field's declared "choices" (argparse checks them for flags; Python keywords too)."""
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        if choices and f.name in values and values[f.name] is not None and values[f.name] not in choices:
            raise OptionError(f"{option('--' + f.name.replace('_', '-'))} {values[f.name]!r} is not one of "
                              f"{', '.join(map(repr, choices))}")


def unknown_option(name: str, known, owner: str) -> OptionError:
    """'lrr is not an option of sfron; did you mean lr?'"""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"; did you mean {option('--' + close[0].replace('_', '-'))}?" if close else ""
    return OptionError(f"{option('--' + name.replace('_', '-'))} is not an option of {owner}{hint}")


def build_config(cls: type, values: dict, preset: dict | None = None):
    """`cls(**{**preset, **values})` after checking every given value's range and choices."""
    merged = {**(preset or {}), **values}
    check_ranges(merged, field_ranges(cls))
    check_choices(merged, cls)
    return cls(**merged)


def acts_when(other: str, values: str, holds) -> dict:
    """Field metadata of an option that acts only under another option's value: with option `other` (a field name)
    at `values` (in words: "pseudo", "above 1", "set"); `holds(config)` says whether it does. Given otherwise, the
    option is refused (`check_options_act`) rather than recorded and ignored."""
    return {"acts_when": (other, values, holds)}


def check_options_act(config, given) -> None:
    """Refuse each option in `given` (field names the user set) whose value differs from its default and that
    `config` would ignore: the field's `acts_when` condition does not hold for it."""
    for f in dataclasses.fields(config):
        rule = f.metadata.get("acts_when")
        if rule is None or f.name not in given or getattr(config, f.name) == f.default or rule[2](config):
            continue
        other, values, _ = rule
        flag, other_flag = ("--" + name.replace("_", "-") for name in (f.name, other))
        raise OptionError(f"{option(flag)} acts only with {option(other_flag)} {values} (this run: "
                          f"{getattr(config, other)!r}), so it would be ignored: leave it out or set "
                          f"{option(other_flag)}")


def documented(cls: type) -> type:
    """Append each field's type, default, allowed range and help to a config dataclass's docstring, so
    `help(SFRonConfig)` reads like `erase unlearn --help` (both come from the field metadata)."""
    lines = [(cls.__doc__ or cls.__name__).rstrip(), "", "Fields (each is also an `erase unlearn` flag, --kebab-case):"]
    for f in dataclasses.fields(cls):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        extra = range_help(f).removeprefix("; ")
        choices = f.metadata.get("choices")
        extra += (("; " if extra else "") + f"one of {', '.join(map(repr, choices))}") if choices else ""
        lines.append(f"    {f.name} ({kind}, default {f.default!r}): {f.metadata.get('help', '')}"
                     + (f" ({extra})" if extra else ""))
    cls.__doc__ = "\n".join(lines) + "\n"
    return cls


def as_list(value) -> list:
    """A value or several as a list (None: empty; a string, path or int: one item)."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike, int)):
        return [value]
    return list(value)


def class_ids(items: list, what: str) -> list[int]:
    """Class ids from ints or 'a-b,c' strings (`what` names the option in the error)."""
    from erase.data import parse_class_ids

    ids: set[int] = set()
    for item in items:
        if isinstance(item, str):
            ids.update(parse_class_ids(item))
            continue
        try:
            if isinstance(item, bool):
                raise TypeError
            ids.add(operator.index(item))  # ints, numpy integers, 0-d integer tensors
        except TypeError:
            raise OptionError(f"{what}: {item!r} is not a class id") from None
    return sorted(ids)
