"""The text benchmark's protocol pieces: RT's recipe, the prompt sets, the tuning rule, the report's targets."""

import json
import shlex

import pytest

from erase.cli.benchmark_text import (DEV_CONCEPTS, HELD_OUT_STYLES, TEST_CONCEPTS, concept_prompts, method_flags,
                                      rt_flags)
from erase.cli.main import main
from erase.models import SHIPPED_TEXT_MODEL
from erase.styled import STYLE_KEYS, facts_of_prompt, parse_concept

shipped = pytest.mark.skipif(not (SHIPPED_TEXT_MODEL / "run.json").is_file(), reason="the shipped text model is absent")


def number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


@shipped
def test_rt_repeats_the_shipped_models_recorded_command_without_the_concept():
    recorded = json.loads((SHIPPED_TEXT_MODEL / "run.json").read_text())["environment"]["command"]
    argv = recorded[recorded.index("train") + 1:]
    flags = rt_flags(SHIPPED_TEXT_MODEL, "style:sepia", 4.0)
    said = dict(zip(flags[::2], flags[1::2]))
    for name in ("--channels", "--text-width", "--steps", "--batch-size", "--lr-schedule", "--prediction-type",
                 "--ema-decay", "--data", "--conditioning"):
        assert number(said[name]) == number(argv[argv.index(name) + 1]), (name, shlex.join(argv))
    assert said["--exclude-concept"] == "style:sepia" and said["--guidance-scale"] == "4.0"


def test_concepts_are_split_into_development_test_and_never_erased():
    erased = {parse_concept(c).name for c in [*DEV_CONCEPTS.values(), *TEST_CONCEPTS]}
    assert len(erased) == len(DEV_CONCEPTS) + len(TEST_CONCEPTS)
    assert len(HELD_OUT_STYLES) >= 3 and not {f"style:{s}" for s in HELD_OUT_STYLES} & erased
    assert set(HELD_OUT_STYLES) <= set(STYLE_KEYS)


def test_a_styles_erasure_forgets_its_prompts_and_keeps_every_other_styles():
    concept = parse_concept("style:sepia")
    forget, remain = concept_prompts(concept)
    assert {facts_of_prompt(p).style for p in forget} == {concept.index}
    assert {facts_of_prompt(p).digit for p in forget} == set(range(10))
    others = {facts_of_prompt(p).style for p in remain}
    assert concept.index not in others and len(others) == len(STYLE_KEYS) - 1
    digit = parse_concept("digit:3")
    forget, remain = concept_prompts(digit)
    assert {facts_of_prompt(p).digit for p in forget} == {3} and 3 not in {facts_of_prompt(p).digit for p in remain}


def test_esd_forms_are_esd_with_their_parameter_sets():
    assert method_flags("esd-x", [])[:4] == ["--method", "esd", "--train-params", "xattn"]
    assert method_flags("esd-u", ["--lr", 3e-5])[-2:] == ["--lr", "3e-05"]  # the tuning value comes last: it wins
    assert method_flags("sfron", [])[:2] == ["--method", "sfron"]


def test_a_development_concept_is_refused_as_a_test_concept(tmp_path, capsys):
    code = main(["benchmark-text", "--concepts", "style:neon", "--out", str(tmp_path), "--record", str(tmp_path)])
    assert code == 2 and "development" in capsys.readouterr().err


def row(concept, method, seed, ua, ira, cra, kept, fid, spelling, template, seconds=1.0):
    return {"concept": concept, "method": method, "seed": seed, "seconds": seconds,
            "scores": {"unlearning_accuracy": ua, "in_domain_retain_accuracy": ira,
                       "cross_domain_retain_accuracy": cra, "kept": kept, "fid_rt": fid,
                       "leak_other_spelling": spelling, "leak_unused_template": template}}


def test_report_names_each_missed_target_with_its_figure_and_the_best_method(tmp_path):
    from erase.eval.report_text import write_report

    rows = [row("style:sepia", "base", 0, 0.0, 1.0, 0.98, 1.0, 2.0, 1.0, 1.0),
            row("style:sepia", "RT", 0, 1.0, 1.0, 0.98, 0.95, None, 0.0, 0.0),
            # seed 0 meets every target; seed 1 keeps the style (UA 80%) and loses 4 IRA points
            row("style:sepia", "sfron", 0, 1.0, 0.99, 0.97, 0.99, 2.5, 0.05, 0.0),
            row("style:sepia", "sfron", 1, 0.8, 0.96, 0.97, 0.99, 2.5, 0.05, 0.3),
            row("style:sepia", "ga", 0, 0.9, 0.5, 0.6, 0.4, 9.0, 0.0, 0.0)]
    results = {"rows": rows, "methods": ["sfron", "ga"], "concepts": ["style:sepia"], "model": "m",
               "guidance_scale": 4.0, "per_prompt": 1, "sample_steps": 2, "seed": 0, "extra_seeds": 1,
               "held_out_styles": HELD_OUT_STYLES, "environment": {"command": None}}
    text = write_report(results, tmp_path).read_text()
    seed0 = next(l for l in text.splitlines() if l.startswith("- style:sepia, seed 0"))
    seed1 = next(l for l in text.splitlines() if l.startswith("- style:sepia, seed 1"))
    assert "missed" not in seed0
    assert "UA >= 95%: **missed** (80.0%)" in seed1 and "IRA within 3 points: **missed** (96.0% vs 100.0%)" in seed1
    assert "leak (template) within 10 points of RT's: **missed** (30.0% vs 0.0%)" in seed1
    assert "CRA within 3 points: met" in seed1
    # sfron's UA over seeds: mean 90% [80%, 100%]; ga's 90%: the first listed of equal means is named
    assert "| sfron | 90.0% [80.0%, 100.0%] | 97.5% [96.0%, 99.0%] |" in text
    assert "- IRA: **sfron** 97.5%" in text and "- kept: **sfron** 99.0%" in text
    assert not (tmp_path / "benchmark-text-grid-style-sepia.png").exists()  # rows without grid samples draw none
    assert (tmp_path / "benchmark-text-pareto.png").is_file()


@shipped
def test_benchmark_text_end_to_end_at_toy_size_reuses_its_record(tmp_path):
    """About 25 s on 2 cores: RT for 2 steps, SFR-on and ESD-x for 2, one sample per prompt at 2 DDIM steps."""
    argv = ["benchmark-text", "--methods", "sfron,esd-x", "--concepts", "style:sepia", "--no-tune", "--extra-seeds",
            "0", "--steps", "2", "--rt-steps", "2", "--per-prompt", "1", "--sample-steps", "2", "--attack-steps", "1",
            "--attack-samples", "2", "--record", str(tmp_path / "record"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["base", "RT", "sfron", "esd-x"]
    for r in results["rows"]:
        assert 0 <= r["scores"]["unlearning_accuracy"] <= 1
    assert results["rows"][2]["scores"]["fid_rt"] > 0 and results["rows"][3]["config"]["steps"] == 2
    units = sorted(p.relative_to(tmp_path / "record").as_posix() for p in (tmp_path / "record").rglob("*.json"))
    assert "runs/sfron-style-sepia-seed0.json" in units and "rt/style-sepia.json" in units
    attacked = {r["method"]: r["attacks"] for r in results["rows"]}
    assert set(attacked) == {"base", "RT", "sfron", "esd-x"}
    for a in attacked.values():
        assert a["prompt"] == "a zero in sepia style" and a["template"] == "a zero in {} style" and a["images"] == 25
        assert a["adversarial_prompt"].endswith(" a zero in sepia style")  # tokens put in front of the prompt
        assert all(a[k] in (0.0, 0.5, 1.0) for k in ("fa_before", "fa_inversion", "fa_adversarial"))  # of 2 samples
    assert sorted(u for u in units if u.startswith("attacks/")) == [
        "attacks/RT-style-sepia.json", "attacks/base-style-sepia.json", "attacks/esd-x-style-sepia.json",
        "attacks/sfron-style-sepia.json"]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "record").rglob("*.json")}
    import shutil

    shutil.rmtree(tmp_path / "out" / "runs")  # a fresh clone has the record but not the erased models
    assert main(argv) == 0  # the rerun reuses every unit: nothing rewritten, nothing erased again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and not (tmp_path / "out" / "runs").exists()
    report = (tmp_path / "out" / "benchmark-text.md").read_text()
    assert "## style:sepia" in report and "| FA after inversion |" in report


def test_a_cached_rt_trained_with_other_flags_is_refused_not_reused(tmp_path):
    from erase.cli.harness import cached_training
    from erase.errors import UsageError

    folder = tmp_path / "without-style-sepia"
    folder.mkdir()
    (folder / "benchmark-flags.json").write_text(json.dumps(["--steps", "10"]))
    assert cached_training(folder, ["--steps", "10"], "test") == folder  # same flags: reused, nothing trained
    with pytest.raises(UsageError, match="other flags"):
        cached_training(folder, ["--steps", "20"], "test")


@shipped
def test_the_attackers_images_show_the_attacked_prompts_digit_and_style():
    """The judges (trained apart from this code) see the prompt's digit and style in the attacker's renderings."""
    from erase.cli.benchmark_text import attack_setup
    from erase.eval.classifier import load_classifier, predict_probabilities

    for spec, digit, style, word in (("style:sepia", 0, "sepia", "sepia"), ("digit:3", 3, "crimson", "three")):
        prompt, template, real = attack_setup(parse_concept(spec), 16)
        assert facts_of_prompt(prompt).digit == digit and STYLE_KEYS[facts_of_prompt(prompt).style] == style
        assert template.format(word) == prompt  # the learned token stands where the concept's word was
        assert real.shape == (25, 3, 16, 16) and real.min() >= -1 and real.max() <= 1
        images = (real + 1) / 2
        styles = predict_probabilities(load_classifier("styles"), images).argmax(-1)
        digits = predict_probabilities(load_classifier("styled-digits"), images).argmax(-1)
        assert (styles == STYLE_KEYS.index(style)).float().mean() >= 0.9
        assert (digits == digit).float().mean() >= 0.9


def test_report_shows_each_models_attacks(tmp_path):
    from erase.eval.report_text import attack_table

    attacks = lambda before, inv, adv: {"prompt": "a zero in sepia style", "template": "a zero in {} style",  # noqa: E731
                                        "images": 25, "fa_before": before, "fa_inversion": inv, "fa_adversarial": adv}
    rows = [{"concept": "style:sepia", "method": "base", "attacks": attacks(1.0, 1.0, 0.98)},
            {"concept": "style:sepia", "method": "sfron", "attacks": attacks(0.0, 0.42, 0.06)},
            {"concept": "style:sepia", "method": "sfron", "seed": 1},
            {"concept": "digit:3", "method": "sfron", "attacks": attacks(0.5, 0.5, 0.5)}]
    lines = attack_table(rows, "style:sepia", ["sfron"])
    assert "| base | 100.0% | 100.0% | 98.0% |" in lines and "| sfron | 0.0% | 42.0% | 6.0% |" in lines
    assert not any(l.startswith("| RT") for l in lines) and attack_table(rows, "digit:7", ["sfron"]) == []
