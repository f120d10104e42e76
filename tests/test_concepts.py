"""UA / IRA / CRA / kept / leak of the styled-digit scores against hand counts on a constructed set of predictions,
and the prompt sets that name a concept."""

import pytest
import torch

from erase.errors import DataError, OptionError
from erase.eval.concepts import concept_scores, used_words
from erase.styled import (LEAK_TEMPLATE, STYLE_KEYS, Concept, caption, concept_of_prompts, erasure_prompts,
                          evaluation_prompts, facts_of_prompt, parse_concept)

NEON, CHALK = STYLE_KEYS.index("neon"), STYLE_KEYS.index("chalk")


def test_style_erasure_against_hand_counts():
    # (prompt, predicted style, predicted digit); the erased concept is neon, erased in spelling 0, templates 0-2
    rows = [
        (caption(3, NEON, 0), NEON, 3),    # erased prompt, still neon (a failure), digit kept
        (caption(4, NEON, 1), CHALK, 4),   # erased prompt, style gone, digit kept
        (caption(5, NEON, 2), CHALK, 6),   # erased prompt, style gone, digit lost
        (caption(6, NEON, 0), 0, 6),       # erased prompt, style gone, digit kept
        (caption(3, NEON, 0, style_spelling=1), NEON, 3),  # "glowing": leaks
        (caption(4, NEON, 1, style_spelling=1), 0, 4),     # "glowing": does not leak
        (caption(3, NEON, LEAK_TEMPLATE), NEON, 3),        # unused template: leaks
        (caption(1, CHALK, 0), CHALK, 1),   # other style: right style, right digit
        (caption(2, CHALK, 0), CHALK, 7),   # right style, wrong digit
        (caption(2, 0, 1), 5, 2),           # wrong style, right digit
    ]
    prompts, styles, digits = zip(*rows)
    s = concept_scores(torch.tensor(styles), torch.tensor(digits), prompts, Concept("style", NEON))
    assert s["forgetting_accuracy"] == pytest.approx(1 / 4) and s["unlearning_accuracy"] == pytest.approx(3 / 4)
    assert s["in_domain_retain_accuracy"] == pytest.approx(2 / 3)    # styles right in rows 8, 9 of 8-10
    assert s["cross_domain_retain_accuracy"] == pytest.approx(2 / 3)  # digits right in rows 8, 10
    assert s["kept"] == pytest.approx(3 / 4) and s["kept_kind"] == "digit"
    assert s["leak_other_spelling"] == pytest.approx(1 / 2)
    assert s["leak_unused_template"] == pytest.approx(1.0)
    assert s["counts"] == {"erased": 4, "others": 3, "other_spelling": 2, "unused_template": 1}
    assert s["style_accuracy"]["neon"] == pytest.approx(3 / 7) and s["style_accuracy"]["chalk"] == pytest.approx(1.0)
    assert s["digit_accuracy"]["2"] == pytest.approx(1 / 2)


def test_digit_erasure_swaps_the_judges():
    rows = [
        (caption(7, NEON, 0), NEON, 7),                   # erased digit still drawn
        (caption(7, CHALK, 1), 0, 1),                     # digit gone, style lost too
        (caption(7, CHALK, 0, digit_spelling=1), CHALK, 7),  # "7": leaks
        (caption(2, CHALK, 0), 0, 2),                     # other digit right, style wrong
    ]
    prompts, styles, digits = zip(*rows)
    s = concept_scores(torch.tensor(styles), torch.tensor(digits), prompts, parse_concept("digit:7"))
    assert s["unlearning_accuracy"] == pytest.approx(1 / 2)
    assert s["kept"] == pytest.approx(1 / 2) and s["kept_kind"] == "style"
    assert s["in_domain_retain_accuracy"] == 1.0 and s["cross_domain_retain_accuracy"] == 0.0
    assert s["leak_other_spelling"] == 1.0 and s["leak_unused_template"] is None


def test_scores_refuse_prompts_that_are_not_captions_and_missing_erased_samples():
    with pytest.raises(DataError, match="not styled-digit captions"):
        concept_scores(torch.tensor([0]), torch.tensor([0]), ["a cat"], None)
    with pytest.raises(DataError, match="UA needs them"):
        concept_scores(torch.tensor([0]), torch.tensor([0]), [caption(1, CHALK)], Concept("style", NEON))


def test_parse_concept_names_the_choices():
    assert parse_concept("style:neon") == Concept("style", NEON) and parse_concept("digit:0") == Concept("digit", 0)
    for bad, hint in [("neon", "KIND:NAME"), ("style:plaid", "crimson"), ("digit:12", "0, 1, 2")]:
        with pytest.raises(OptionError, match=hint):
            parse_concept(bad)


def test_erasure_prompts_name_the_concept_in_one_spelling_and_the_erase_templates():
    prompts = erasure_prompts(Concept("style", NEON))
    facts = [facts_of_prompt(p) for p in prompts]
    assert len(prompts) == 10 * 3 and all(f.style == NEON and f.style_spelling == 0 for f in facts)
    assert {f.template for f in facts} == {0, 1, 2} and {f.digit for f in facts} == set(range(10))
    assert concept_of_prompts(prompts) == Concept("style", NEON)
    assert concept_of_prompts(erasure_prompts(Concept("digit", 4))) == Concept("digit", 4)
    assert concept_of_prompts(prompts[:1]) is None and concept_of_prompts(["a cat"]) is None
    assert used_words(Concept("style", NEON), erasure_prompts(Concept("style", NEON), (1,), 1)) == ([1], [1])


def test_evaluation_prompts_cover_every_pair_and_the_leak_prompts():
    prompts = evaluation_prompts(Concept("style", NEON))
    facts = [facts_of_prompt(p) for p in prompts]
    assert {(f.digit, f.style) for f in facts} == {(d, s) for d in range(10) for s in range(len(STYLE_KEYS))}
    assert sum(f.style == NEON and f.style_spelling == 1 for f in facts) == 10
    assert sum(f.template == LEAK_TEMPLATE for f in facts) == 10
    assert len(evaluation_prompts()) == 10 * len(STYLE_KEYS)
