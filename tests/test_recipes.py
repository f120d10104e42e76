"""The recipes in pipelines/ and eval/ stay runnable: every `erase` command line in their scripts parses with
erase's own parser (a renamed or removed flag fails here, not on a user's GPU), and the accelerate configurations
load with accelerate's own reader."""

import re
import shlex
from pathlib import Path

import pytest

from erase.cli.main import build_parser

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*REPO.glob("pipelines/*.sh"), *REPO.glob("eval/*.sh")])


def erase_commands(script: Path) -> list[list[str]]:
    """The argv of every `erase ...` (or `accelerate launch ... -m erase ...`) line, continuations joined and shell
    variables replaced by the script's own default, or a placeholder where it has none."""
    text = re.sub(r"\\\n\s*", " ", script.read_text())
    defaults = dict(re.findall(r"^([A-Z_]+)=\$\{[A-Z_]+:-([^}]*)\}", text, flags=re.M))  # NAME=${NAME:-default}
    commands = []
    for line in text.splitlines():
        line = re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: defaults.get(m.group(1), "X"), line.split(" #")[0]).strip()
        if line.startswith("erase "):
            commands.append(shlex.split(line)[1:])
        elif line.startswith("accelerate launch") and " -m erase " in line:
            commands.append(shlex.split(line.split(" -m erase ", 1)[1]))
    return commands


def test_every_family_and_protocol_has_a_recipe():
    names = {p.name for p in SCRIPTS}
    assert {"sd1.sh", "sd2.sh", "sdxl.sh", "sd3.sh", "flux.sh", "dit.sh"} <= names
    assert {"i2p-nudity.sh", "prompt-fid-clip.sh", "digits.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_erase_command_line_in_a_recipe_parses(script):
    commands = erase_commands(script)
    assert commands, f"{script} runs no erase command"
    for argv in commands:
        try:
            build_parser(argv).parse_args(argv)
        except SystemExit as refused:
            pytest.fail(f"{script.name}: erase {shlex.join(argv)} is refused by erase's parser (exit {refused.code})")


def test_a_recipe_with_a_removed_flag_would_fail(tmp_path, capsys):
    """The check above can fail: a flag erase does not have is refused."""
    script = tmp_path / "bad.sh"
    script.write_text('erase unlearn --model "$MODEL" --forget-class 7 --no-such-flag 1 \\\n    --out ./o\n')
    (argv,) = erase_commands(script)
    assert argv == ["unlearn", "--model", "X", "--forget-class", "7", "--no-such-flag", "1", "--out", "./o"]
    with pytest.raises(SystemExit):
        build_parser(argv).parse_args(argv)


@pytest.mark.parametrize("config", sorted(REPO.glob("pipelines/accelerate/*.yaml")), ids=lambda p: p.name)
def test_accelerate_configurations_load(config):
    from accelerate.commands.config.config_args import ClusterConfig

    loaded = ClusterConfig.from_yaml_file(str(config))
    assert loaded.num_processes >= 1 and loaded.mixed_precision == "no"


@pytest.mark.parametrize("script", ["train_judge.py", "time_step.py", "scale.py"])
def test_the_reproduction_scripts_start(script):
    """scripts/ imports the installed package from outside it: each script at least starts and shows its flags."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr
