"""Two CPU processes (gloo) under `accelerate launch`: every training path runs unchanged, the replicas stay equal,
the saliency masks equal one process's, and only the main process writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_adapter

REPO = Path(__file__).resolve().parent.parent

# Every method and `erase train`, a few steps each, in one launch (one process group start instead of nine).
DRIVER = """
import sys
from erase.cli.main import main

model, out = sys.argv[1], sys.argv[2]
base = ["--model", model, "--forget-class", "7", "--data", "digits", "--steps", "4", "--batch-size", "8", "--cpu"]
flags = {
    "sfron": ["--fisher-batches", "3", "--checkpoint-every", "2"],  # also saves states collectively
    "joint": ["--fisher-batches", "3"],
    "salun": ["--saliency-batches", "3"],
    "ga": ["--remain-alpha", "1"],
    "rl": [],
    "esd": ["--ddim-steps", "4"],
    "sa": ["--replay-per-condition", "2", "--replay-steps", "4", "--fisher-batches", "2"],
    "nabla_tau": ["--tau-samples", "16"],
}
codes = [main(["unlearn", "--method", method, *base, *extra, "--out", f"{out}/{method}"]) for method, extra in flags.items()]
codes.append(main(["train", "--data", "digits", "--resolution", "8", "--channels", "16,32", "--steps", "4",
                   "--batch-size", "16", "--ema-decay", "0.9", "--cpu", "--checkpoint-every", "2", "--out", f"{out}/train"]))
sys.exit(max(codes))
"""
RUNS = ("sfron", "joint", "salun", "ga", "rl", "esd", "sa", "nabla_tau", "train")


def launch(processes: int, model: Path, out: Path, driver: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu` is accelerate's torchrun path; with erase's --cpu every process runs on the
    CPU and the process group uses gloo. Nothing is downloaded. OMP_NUM_THREADS=1 in every process (torchrun's own
    default) so both launches run the same CPU kernels."""
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    if processes == 1:  # --multi_gpu needs two; one process through torchrun keeps the thread setting the same
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    else:
        launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *launcher, str(driver), str(model), str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_two_processes_run_every_method_and_train_with_equal_replicas_and_the_one_process_masks(tmp_path):
    """8 methods and erase train at 4 steps, launched with 2 processes and with 1: 55 s on 2 busy CPU cores.

    "Same data" for the masks: Fisher and saliency batches are the same stream on every process (each process
    computes every other batch, float32 sums added across processes), so the 2-process mask is computed from the
    very batches, noise and timesteps of the 1-process run. Its sums may round differently from one process's (by
    at most (N + 1) 2^-24 relative), which could move an entry whose ratio lies that close to gamma; none does
    here, so the masks must be equal entry for entry."""
    model = tmp_path / "tiny"
    tiny_adapter().save_pretrained(model)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    two, one = tmp_path / "two", tmp_path / "one"
    for processes, out in ((2, two), (1, one)):
        result = launch(processes, model, out, driver)
        assert result.returncode == 0, result.stderr[-4000:]

    assert sorted(p.name for p in two.iterdir()) == sorted(RUNS), "exactly one output folder per run, no partials"
    for run in RUNS:
        record = json.loads((two / run / "run.json").read_text())
        assert record["num_processes"] == 2, run
        digests = record["process_weight_digests"]
        assert len(digests) == 2 and digests[0] == digests[1], f"{run}: the replicas' weights differ"
        assert json.loads((one / run / "run.json").read_text())["num_processes"] == 1
    # each process trained on its own shard: the 2-process weights are not the 1-process ones
    assert not torch.equal(load_file(str(two / "ga" / "unet" / "diffusion_pytorch_model.safetensors"))["conv_in.weight"],
                           load_file(str(one / "ga" / "unet" / "diffusion_pytorch_model.safetensors"))["conv_in.weight"])
    for run in ("sfron", "joint", "salun"):
        mask_two, mask_one = (load_file(str(folder / run / "mask.safetensors")) for folder in (two, one))
        assert mask_two.keys() == mask_one.keys()
        differing = sum(int((mask_two[name] != mask_one[name]).sum()) for name in mask_one)
        assert differing == 0, f"{run}: {differing} mask entries differ from the one-process mask"
        kept = sum(int(m.sum()) for m in mask_one.values()) / sum(m.numel() for m in mask_one.values())
        assert 0.0 < kept < 1.0, run  # a real mask, not all ones or all zeros


@pytest.mark.slow
def test_two_processes_stop_together_on_sigterm_and_resume_bit_for_bit(tmp_path):
    """SIGTERM to the launcher (torchrun forwards it to both processes): they agree on the step at the next log
    boundary, save one state (each process its own random states), print one line; resuming with 2 processes ends
    with the weights and losses of an uninterrupted 2-process run. 82 s on 2 busy CPU cores."""
    import shlex
    import signal
    import time

    model = tmp_path / "tiny"
    tiny_adapter().save_pretrained(model)
    argv = ["unlearn", "--model", str(model), "--forget-class", "7", "--data", "digits", "--steps", "24",
            "--batch-size", "8", "--fisher-batches", "3", "--cpu", "--checkpoint-every", "4", "--log-every", "2"]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                "-m", "erase"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([*launcher, *argv, "--out", str(tmp_path / "out")], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list((tmp_path / "out.checkpoint").glob("step-*")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=600)
    messages = [line.split("\r")[-1] for line in stderr.splitlines() if "erase unlearn: stopped by SIGTERM" in line]
    assert len(messages) == 1, stderr[-4000:]  # the main process alone prints it
    state = next((tmp_path / "out.checkpoint").glob("step-*"))
    assert {p.name for p in state.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert not (tmp_path / "out").exists()
    resume = shlex.split(messages[0].split("continue with: ", 1)[1])
    assert resume[:5] == ["accelerate", "launch", "--multi_gpu", "--num_processes", "2"]
    resume_argv = resume[resume.index("-m") + 2:]
    for args, out in ((resume_argv, "out"), ([*argv, "--out", str(tmp_path / "reference")], "reference")):
        result = subprocess.run([*launcher, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
    resumed, reference = (load_file(str(tmp_path / name / "unet" / "diffusion_pytorch_model.safetensors"))
                          for name in ("out", "reference"))
    assert all(torch.equal(resumed[name], reference[name]) for name in reference)
    records = [json.loads((tmp_path / name / "run.json").read_text()) for name in ("out", "reference")]
    assert records[0]["losses"] == records[1]["losses"] and records[0]["resumed_from"] == str(state)
    assert len(set(records[0]["process_weight_digests"])) == 1


@pytest.mark.parametrize("kind, version", [("FSDP", 1), ("DEEPSPEED", None)])
def test_flat_or_partitioned_launches_are_refused_with_the_supported_alternatives(monkeypatch, kind, version):
    """FSDP1's flat parameters and DeepSpeed's partitions do not keep the per-parameter tensors (or FSDP2 shards of
    them) the Fisher and masks work on: a clear error naming what runs, not a wrong mask."""
    import types

    import erase.engine as engine
    from erase.errors import UsageError

    class PartitionedAccelerator:
        def __init__(self, **kwargs):
            self.distributed_type = types.SimpleNamespace(name=kind)
            self.state = types.SimpleNamespace(fsdp_plugin=types.SimpleNamespace(fsdp_version=version))

    monkeypatch.setattr(engine, "Accelerator", PartitionedAccelerator)
    with pytest.raises(UsageError, match=f"DDP.*--fsdp_version 2.*not {kind}"):
        engine.make_accelerator(engine.Runtime())


def test_methods_that_need_a_whole_frozen_copy_are_refused_sharded():
    import erase
    from erase.errors import UsageError

    with pytest.raises(UsageError, match="esd does not run sharded.*sfron"):
        erase.unlearn(erase.SHIPPED_MODEL, forget=7, method="esd", fully_shard=True)
