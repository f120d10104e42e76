"""Monitoring during erasure, the guidance sweep, and the benchmark at toy size."""

import json

import pytest
import torch
from PIL import Image

from erase.data import split_by_class
from erase.engine import Monitor, Runtime
from erase.methods.sfron import SFRonConfig, sfron
from erase.eval.probe import first_step_below
from erase.cli.main import main
from tests.conftest import tiny_adapter


def test_monitor_records_due_steps_without_changing_the_run(digit_data):
    forget, remain = split_by_class(digit_data, [3])
    config = SFRonConfig(steps=5, batch_size=16, fisher_batches=2)
    calls = []

    def evaluate(adapter):
        calls.append(adapter.denoiser.training)
        torch.randn(100)  # a careless probe would shift the run's random stream: the run must not see it
        return {"fa": 0.5}

    plain, watched = tiny_adapter(), tiny_adapter()
    sfron(plain, forget, remain, config, Runtime(seed=0))
    monitor = Monitor(2, evaluate)
    result = sfron(watched, forget, remain, config, Runtime(seed=0), monitor=monitor)
    assert [row["step"] for row in monitor.history] == [2, 4, 5] and result["monitor"] == monitor.history
    assert result["timings"]["monitor"] > 0
    for (name, a), b in zip(plain.denoiser.state_dict().items(), watched.denoiser.state_dict().values()):
        assert torch.equal(a, b), name


def test_first_step_below():
    history = [{"step": 10, "fa": 0.4}, {"step": 20, "fa": 0.04}, {"step": 30, "fa": 0.0}]
    assert first_step_below(history, 0.05) == 20 and first_step_below(history, 0.01) == 30
    assert first_step_below(history, 0.0) is None


def test_unlearn_monitor_writes_fa_history(trained_model_dir, tmp_path, capsys):
    out = tmp_path / "erased"
    code = main(["unlearn", "--model", str(trained_model_dir), "--forget-class", "3", "--steps", "4", "--batch-size", "16",
                 "--fisher-batches", "2", "--monitor-every", "2", "--monitor-samples", "6", "--monitor-steps", "3",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    monitor = json.loads((out / "run.json").read_text())["monitor"]
    assert [row["step"] for row in monitor["history"]] == [2, 4]
    assert all(0 <= row["fa"] <= 1 for row in monitor["history"]) and monitor["every"] == 2


def test_guidance_sweep_stores_the_best_scale_and_nothing_else(trained_model_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained_model_dir, model, symlinks=True)
    before = {p.name: p.read_bytes() for p in (model / "unet").iterdir()}
    code = main(["guidance", "--model", str(model), "--scales", "1,2", "--per-class", "3", "--steps", "3", "--write",
                 "--json", str(tmp_path / "sweep.json")])
    assert code == 0, capsys.readouterr().err
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    best = max(sweep["rows"], key=lambda r: (r["accuracy_mean"], -r["scale"]))
    info = json.loads((model / "model_index.json").read_text())["_erase"]
    assert info["guidance_scale"] == best["scale"] == sweep["best"]
    assert [r["scale"] for r in info["guidance_sweep"]["rows"]] == [1.0, 2.0]
    assert {p.name: p.read_bytes() for p in (model / "unet").iterdir()} == before
    assert main(["guidance", "--model", str(model), "--scales", "1,x"]) == 2


@pytest.fixture(scope="module")
def small_base(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "base"
    assert main(["train", "--data", "digits", "--resolution", "8", "--channels", "16,32", "--steps", "20",
                 "--out", str(out)]) == 0
    return out


def benchmark(base, out, rt_cache, cache):
    return main(["benchmark", "--model", str(base), "--forget-classes", "3,5", "--methods", "sfron,ga",
                 "--per-class", "3", "--sample-steps", "3", "--monitor-every", "2", "--monitor-samples", "3",
                 "--steps", "4", "--rt-steps", "20", "--extra-seeds", "0", "--inversion-steps", "2", "--out", str(out),
                 "--rt-cache", str(rt_cache),
                 "--cache-dir", str(cache)])


def test_benchmark_table_is_generated_and_reproducible(small_base, tmp_path, capsys):
    assert benchmark(small_base, tmp_path / "a", tmp_path / "rt", tmp_path / "cache") == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    rows = {(r["class"], r["method"]): r for r in results["rows"]}
    assert set(rows) == {(c, m) for c in (3, 5) for m in ("base", "RT", "sfron", "ga")}
    rt = rows[(3, "RT")]
    assert rt["fraction_of_rt"] == 1.0 and rt["steps"] == 20
    assert rows[(3, "sfron")]["steps"] == 4 and len(results["fa_curves"]["3"]["sfron"]) == 2
    assert rows[(5, "ga")]["fraction_of_rt"] == pytest.approx(rows[(5, "ga")]["seconds"] / rows[(5, "RT")]["seconds"])
    report = (tmp_path / "a" / "benchmark.md").read_text()
    assert "| sfron |" in report and "Quick run" in report and "benchmark-fa.png" in report
    for method in ("sfron", "ga"):  # a method that lost the other classes is named with its reason, or flagged
        ra = sum(rows[(c, method)]["remaining_accuracy_mean"] for c in (3, 5)) / 2
        reason = results["collapse_reasons"].get(method, "no explanation recorded")
        assert (f"- {method}: {reason}" in report) == (ra < 0.8), (method, ra)
    assert (tmp_path / "a" / "benchmark-grid-class-5.png").is_file()
    grid = Image.open(tmp_path / "a" / "benchmark-grid-class-3.png")
    assert grid.size[1] == 16 + 4 * 50 + 2  # rows: base, RT, sfron, ga

    # same flags, fresh method runs, cached RT: identical scores (fixed seeds), and RT not retrained
    assert benchmark(small_base, tmp_path / "b", tmp_path / "rt", tmp_path / "cache") == 0
    assert "using the cached RT model" in capsys.readouterr().out
    again = {(r["class"], r["method"]): r for r in json.loads((tmp_path / "b" / "results.json").read_text())["rows"]}
    for key, row in rows.items():
        for metric in ("forgetting_accuracy", "remaining_accuracy_mean", "fid_real", "fid_reference"):
            if metric == "fid_reference" and key[1] == "RT":
                continue  # RT is the reference
            assert again[key][metric] == pytest.approx(row[metric], rel=1e-4, abs=1e-6), (key, metric)


def test_benchmark_refuses_unknown_methods_and_models_without_a_recipe(small_base, trained_model_dir, tmp_path, capsys):
    assert main(["benchmark", "--model", str(small_base), "--methods", "sfron,nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["benchmark", "--model", str(trained_model_dir), "--out", str(tmp_path)]) == 2
    assert "run.json" in capsys.readouterr().err


def test_tuned_benchmark_selects_per_method_reuses_finished_runs_and_reruns_only_a_changed_config(
        small_base, tmp_path, capsys, monkeypatch):
    import erase.cli.harness
    import erase.cli.tuning

    monkeypatch.setitem(erase.cli.tuning.GRIDS, "ga", [["--lr", 1e-4], ["--lr", 1e-3]])
    monkeypatch.setitem(erase.cli.tuning.GRIDS, "sfron", [["--forget-alpha", 5]])
    argv = ["benchmark", "--model", str(small_base), "--tune", "--dev-classes", "1", "--forget-classes", "3",
            "--methods", "sfron,ga", "--per-class", "3", "--tune-per-class", "3", "--sample-steps", "3",
            "--monitor-every", "2", "--monitor-samples", "3", "--steps", "4", "--rt-steps", "20",
            "--relearn-steps", "1,2", "--extra-seeds", "1", "--all-digits", "3,4", "--all-digits-per-class", "2",
            "--inversion-steps", "2", "--multi-concept", "3,4",
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    tuning = results["tuning"]
    assert [row["flags"] for row in tuning["sweep"]["ga"]] == [["--lr", "0.0001"], ["--lr", "0.001"]]
    assert tuning["chosen"]["ga"] == erase.cli.tuning.select(tuning["sweep"]["ga"])
    assert tuning["best_baseline"] == "ga" and results["seeds"] == {"sfron": [0, 1], "ga": [0, 1]}
    assert results["settings"]["ga"] == tuning["chosen"]["ga"]["flags"]
    rows = [(r["method"], r["seed"]) for r in results["rows"]]
    assert sorted(rows) == sorted([("base", 0), ("RT", 0), ("sfron", 0), ("sfron", 1), ("ga", 0), ("ga", 1)])
    relearned = {r["method"]: r["relearn"] for r in results["rows"] if r["seed"] == 0 and r["method"] != "base"}
    assert all([p["step"] for p in curve] == [1, 2] for curve in relearned.values()), relearned
    report = (tmp_path / "out" / "benchmark.md").read_text()
    assert "## Tuning protocol" in report and "## Relearning" in report and "## Seeds: how often" in report
    assert (tmp_path / "out" / "benchmark-pareto.png").is_file() and (tmp_path / "out" / "benchmark-seeds.png").is_file()
    # the seeds: each cell of the mean table is the mean over seeds of the per-seed class means, with their range
    sfron = [r["forgetting_accuracy"] for r in results["rows"] if r["method"] == "sfron"]
    fa_cell = next(line for line in report.splitlines() if line.startswith("| sfron |")).split(" | ")[1]
    assert fa_cell.startswith(f"{sum(sfron) / 2:.1%}")
    assert (fa_cell == f"{sfron[0]:.1%}") == (sfron[0] == sfron[1])  # a range only where the seeds differ
    # every digit: SFR-on and the best baseline on digits 3 (a test digit: its seed-0 run reused) and 4
    every = results["every_digit"]
    assert every["methods"] == ["sfron", "ga"] and [(r["method"], r["class"]) for r in every["rows"]] == [
        ("sfron", 3), ("sfron", 4), ("ga", 3), ("ga", 4)]
    assert "## Every digit" in report and (tmp_path / "out" / "tuned" / "sfron-4").is_dir()
    # concept inversion on every first-seed model, the base and RT; the further seeds are not attacked
    attacked = {(r["method"], r["seed"]): r["fa_inversion"] for r in results["rows"]}
    assert all(0 <= attacked[(m, 0)] <= 1 for m in ("base", "RT", "sfron", "ga"))
    assert attacked[("sfron", 1)] is None and attacked[("ga", 1)] is None
    assert "## Under attack: concept inversion" in report and (tmp_path / "out" / "benchmark-attack.png").is_file()
    # several digits: at once, and in sequence from the test run of the first digit, against RT without both
    multi = results["multi_concept"]
    assert [(r["method"], r["mode"]) for r in multi["rows"]] == [
        ("base", "-"), ("RT", "retrained without all"), ("sfron", "at once"), ("sfron", "in sequence"),
        ("ga", "at once"), ("ga", "in sequence")]
    assert all(len(r["fa"]) == 2 for r in multi["rows"]) and "## Several digits" in report
    chain = json.loads((tmp_path / "out" / "tuned" / "sfron-3-then-4" / "run.json").read_text())["erasure_sequence"]
    assert [(step["forget_classes"], step["source"]) for step in chain] == [
        ([3], str(small_base)), ([4], str(tmp_path / "out" / "tuned" / "sfron-3"))]
    at_once = json.loads((tmp_path / "out" / "tuned" / "sfron-3-4-at-once" / "run.json").read_text())
    assert at_once["forget"] == [3, 4]
    assert (tmp_path / "out" / "rt" / "without-3-4").is_dir()
    probed = {name: json.loads((tmp_path / "out" / "tuned" / name / "run.json").read_text())["monitor"]
              for name in ("sfron-3", "sfron-3-seed1", "sfron-4")}
    assert probed["sfron-3"]["history"] and probed["sfron-3-seed1"] is None and probed["sfron-4"] is None

    import erase.eval.class_scores
    import erase.eval.inversion

    calls, sampled = [], []
    real_run, real_sample = erase.cli.harness.unlearn_flags, erase.eval.class_scores.sample_classes
    monkeypatch.setattr(erase.cli.harness, "unlearn_flags", lambda *argv: (calls.append(("unlearn", *argv)),
                                                                           real_run(*argv))[1])
    monkeypatch.setattr(erase.eval.class_scores, "sample_classes", lambda *a, **k: (sampled.append(a), real_sample(*a, **k))[1])
    monkeypatch.setattr(erase.eval.inversion, "invert_class", lambda *a, **k: sampled.append("inversion"))
    assert main(argv) == 0
    assert [c for c in calls if c[0] == "unlearn"] == [] and sampled == []  # every run and every sample reused
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"] == results["rows"]
    again = json.loads((tmp_path / "out" / "results.json").read_text())["tuning"]
    assert again["sweep"] == tuning["sweep"]

    monkeypatch.setitem(erase.cli.tuning.GRIDS, "ga", [["--lr", 1e-4], ["--lr", 3e-4]])  # one configuration changes
    assert main(argv) == 0
    outs = [str(c[c.index("--out") + 1]) for c in calls if c[0] == "unlearn"]
    assert any(out.endswith("ga-1-class-1") for out in outs) and not any("ga-0-class-1" in out for out in outs)
    assert not any("sfron-0" in out for out in outs)
