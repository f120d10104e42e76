"""The research harness's steps (benchmark, ablation, tuning, the classifier benchmark, the demo): erasure runs call
`erase.unlearn` with the arguments their flags mean (flags are the spelling the caches are keyed by, and what
run.json and the reports show); training runs go through their subcommand's own parser; runs, samples and scores are
cached by what they depend on."""

from __future__ import annotations

import argparse
from pathlib import Path


COMMANDS = ("unlearn", "train", "train-classifier")  # what the harness runs


def command_args(name: str, *argv) -> argparse.Namespace:
    """`erase NAME ARGV` parsed by that subcommand's own parser (the `erase` command's main is not involved)."""
    from erase.cli import train, train_classifier, unlearn
    from erase.cli.options import OneLineParser, chosen_method

    if name not in COMMANDS:
        raise ValueError(f"the harness runs {', '.join(COMMANDS)}, not {name!r}")
    argv = [str(a) for a in argv]
    parser = OneLineParser(prog="erase")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    if name == "unlearn":
        unlearn.register(commands, chosen_method(argv))
    else:
        (train if name == "train" else train_classifier).register(commands)
    return parser.parse_args([name, *argv])


def run_command(name: str, *argv) -> None:
    """Run the `erase NAME` subcommand in this process (errors propagate as UsageError): `train` and
    `train-classifier`, which have no Python API, and the demo's `erase unlearn`, run as a user types it."""
    args = command_args(name, *argv)
    args.run(args)


def unlearn_flags(*flags) -> dict:
    """`erase.unlearn` called with the keyword arguments that `erase unlearn FLAGS` means (as that command's parser
    reads them); its record. The harness keeps runs as flags, the spelling its caches are keyed by."""
    from erase.api import unlearn
    from erase.cli.unlearn import unlearn_arguments

    return unlearn(**unlearn_arguments(command_args("unlearn", *flags)))[1]


def method_defaults(method: str) -> dict:
    """`method`'s config defaults and presets: what flags leave unsaid, so a cache keyed by flags alone would return
    a stale run after a default or preset moves (another method's defaults do not concern its runs)."""
    import json
    from dataclasses import asdict

    from erase.methods import METHODS, PRESETS

    return json.loads(json.dumps({"config": asdict(METHODS[method][1]()), "presets": PRESETS.get(method, {})}))


def unlearn_method(flags: list) -> str:
    """The method an `erase unlearn FLAGS` run uses, as `erase unlearn`'s own parser reads it."""
    return command_args("unlearn", *flags, "--out", "unused").method


def method_seconds(timings: dict) -> float:
    """A run's own wall time: every phase except the untimed FA probes."""
    return sum(seconds for phase, seconds in timings.items() if phase != "monitor")


def cached_unlearn(folder: Path, flags: list) -> dict:
    """`erase unlearn FLAGS --out folder`, skipped when the folder holds a run made with the same flags under the
    same method defaults and presets; its run.json."""
    import json

    key = {"flags": [str(f) for f in flags], "defaults": method_defaults(unlearn_method(flags))}
    stamp = folder / "erase-flags.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == key):
        unlearn_flags(*key["flags"], "--out", folder, "--overwrite")
        stamp.write_text(json.dumps(key) + "\n")
    return json.loads((folder / "run.json").read_text())


def cached_training(folder: Path, flags: list[str], what: str) -> Path:
    """`erase train FLAGS --out folder`, skipped when the folder's stamp holds the same flags (a stamp of other
    flags is refused: the folder is someone else's model)."""
    import json

    from erase.errors import UsageError

    stamp = folder / "benchmark-flags.json"
    if stamp.is_file():
        if json.loads(stamp.read_text()) == flags:
            print(f"using the cached RT model {folder}")
            return folder
        raise UsageError(f"{str(folder)!r} was trained with other flags; delete it or pass another --rt-cache")
    print(f"training RT ({what}): erase train {' '.join(flags)}")
    run_command("train", *flags, "--out", folder, "--overwrite")
    stamp.write_text(json.dumps(flags) + "\n")
    return folder


def cached_json(path: Path, key: dict, compute) -> dict:
    """`compute()`'s JSON result, stored at `path` under `key` and reused while the key is the same."""
    import json

    from erase.record import write_json

    key = json.loads(json.dumps(key, default=str))
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["value"]
    value = json.loads(json.dumps(compute(), default=float))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"key": key, "value": value})
    return value


def model_digest(folder: Path) -> str:
    """SHA-256 of what sampling a model folder depends on: its weight files, model_index.json and component
    configs (not its run records), so cached samples follow the model, not the folder's name."""
    import hashlib

    digest = hashlib.sha256()
    files = [*folder.glob("**/*.safetensors"), folder / "model_index.json", *folder.glob("*/*config.json")]
    for file in sorted({f for f in files if f.is_file() and f.name != "mask.safetensors"}):
        digest.update(str(file.relative_to(folder)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def cached_samples(path: Path, key: dict, compute):
    """`compute()`'s ClassSamples, stored at `path` (safetensors; `key` in its metadata) and reused while the key
    is the same; written under a temporary name and renamed, so an interrupted run never leaves a bad file."""
    import json

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from erase.eval.class_scores import ClassSamples

    key_text = json.dumps(key, sort_keys=True, default=str)
    if path.is_file():
        with safe_open(str(path), "pt") as stored:
            meta = stored.metadata() or {}
        if meta.get("key") == key_text:
            tensors = load_file(str(path))
            return ClassSamples(tensors["images"], tensors["conditions"].tolist(), int(meta["per_class"]),
                                float(meta["seconds"]))
    samples = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    save_file({"images": samples.images.contiguous(), "conditions": torch.tensor(samples.conditions)}, str(staging),
              metadata={"key": key_text, "per_class": str(samples.per_class), "seconds": str(samples.seconds)})
    staging.replace(path)
    return samples
