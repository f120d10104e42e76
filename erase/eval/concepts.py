"""UnlearnCanvas' scores for an erased style or digit of the styled digits, from two judges' predictions.

Every sample was drawn from one caption (`erase.styled.CAPTIONS`), which names a digit and a style. For an erased
concept C of kind K (a style or a digit; the other kind is K'):

- UA (unlearning accuracy): share of the samples of C's prompts, in the spellings and templates the erasure used,
  that the K judge does *not* assign to C; FA = 1 - UA.
- IRA (in-domain retain accuracy): the K judge's accuracy on the samples of every other concept of kind K.
- CRA (cross-domain retain accuracy): the K' judge's accuracy on the samples whose prompts do not name C.
- kept: the K' judge's accuracy on C's own samples (for an erased style: does the prompt still draw its digit;
  UnlearnCanvas has no such column; an erasure should remove the style, not break the prompt).
- leak: FA on C's samples under the spellings the erasure never used, and under the templates it never used.

`concept_scores` is the formula; `ConceptAccuracy` accumulates it over batches for `erase score`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from erase.errors import DataError
from erase.styled import ERASE_TEMPLATES, STYLE_KEYS, Concept, facts_of_prompt


def _share(mask: torch.Tensor) -> float | None:
    return float(mask.float().mean()) if len(mask) else None


def concept_scores(style_predictions: torch.Tensor, digit_predictions: torch.Tensor, prompts: Sequence[str],
                   concept: Concept | None, used_spellings: Sequence[int] = (0,),
                   used_templates: Sequence[int] = ERASE_TEMPLATES) -> dict:
    """The scores above from each sample's predicted style and digit (class ids) and its prompt. With `concept`
    None (a model before erasure, no concept named): only the per-style and per-digit accuracies."""
    facts = [facts_of_prompt(p) for p in prompts]
    unknown = [p for p, f in zip(prompts, facts) if f is None]
    if unknown:
        raise DataError(f"{len(unknown)} prompt(s) are not styled-digit captions (e.g. {unknown[0]!r}); the styled "
                        "judges score images drawn from erase.styled.CAPTIONS")
    asked = {"style": torch.tensor([f.style for f in facts]), "digit": torch.tensor([f.digit for f in facts])}
    correct = {"style": torch.as_tensor(style_predictions) == asked["style"],
               "digit": torch.as_tensor(digit_predictions) == asked["digit"]}
    scores: dict = {
        "style_accuracy": {STYLE_KEYS[s]: _share(correct["style"][asked["style"] == s])
                           for s in asked["style"].unique().tolist()},
        "digit_accuracy": {str(d): _share(correct["digit"][asked["digit"] == d]) for d in asked["digit"].unique().tolist()},
        "samples": len(prompts),
    }
    if concept is None:
        return scores
    kind, other = concept.kind, concept.other_kind
    named = asked[kind] == concept.index
    spelling = torch.tensor([concept.spelling(f) for f in facts])
    template = torch.tensor([f.template for f in facts])
    in_spelling = torch.isin(spelling, torch.tensor(list(used_spellings)))
    in_template = torch.isin(template, torch.tensor(list(used_templates)))
    erased = named & in_spelling & in_template
    if not erased.any():
        raise DataError(f"no sample was drawn from a prompt of {concept.name} in the erasure's spellings "
                        f"{list(used_spellings)} and templates {list(used_templates)}: UA needs them")
    judged_as = correct[kind]  # a C sample judged correct = judged as C
    scores.update({
        "concept": concept.name, "used_spellings": list(used_spellings), "used_templates": list(used_templates),
        "forgetting_accuracy": _share(judged_as[erased]),
        "unlearning_accuracy": 1 - _share(judged_as[erased]),
        "in_domain_retain_accuracy": _share(correct[kind][~named]),
        "cross_domain_retain_accuracy": _share(correct[other][~named]),
        "kept": _share(correct[other][erased]),
        "kept_kind": other,
        "leak_other_spelling": _share(judged_as[named & ~in_spelling & in_template]),
        "leak_unused_template": _share(judged_as[named & in_spelling & ~in_template]),
        "counts": {"erased": int(erased.sum()), "others": int((~named).sum()),
                   "other_spelling": int((named & ~in_spelling & in_template).sum()),
                   "unused_template": int((named & in_spelling & ~in_template).sum())},
    })
    return scores


def used_words(concept: Concept, erased_prompts: Sequence[str]) -> tuple[list[int], list[int]]:
    """(spellings, templates) of `concept` that `erased_prompts` (the record's forget prompts) used; the defaults
    of `erase.styled.erasure_prompts` where they name none of its captions."""
    facts = [f for f in map(facts_of_prompt, erased_prompts) if f is not None and concept.of(f) == concept.index]
    if not facts:
        return [0], list(ERASE_TEMPLATES)
    return sorted({concept.spelling(f) for f in facts}), sorted({f.template for f in facts})


class ConceptAccuracy(Metric):
    """`concept_scores` over batches: the style and digit judges' predictions on images drawn per caption."""

    full_state_update = False

    def __init__(self, style_judge: nn.Module, digit_judge: nn.Module, concept: Concept | None,
                 erased_prompts: Sequence[str] = (), name: str = "styled"):
        super().__init__()
        self.judges = nn.ModuleDict({"style": style_judge, "digit": digit_judge})
        self.concept, self.name = concept, name
        self.used = used_words(concept, erased_prompts) if concept is not None else ([0], list(ERASE_TEMPLATES))
        self.add_state("styles", default=[], dist_reduce_fx="cat")
        self.add_state("digits", default=[], dist_reduce_fx="cat")
        self.prompts: list[str] = []

    def update(self, pixels: torch.Tensor, conditions: Sequence, files: Sequence[str] | None = None) -> None:
        from erase.eval.classifier import predict_probabilities
        from erase.eval.metrics import check_conditions

        check_conditions(conditions, str, "the styled images")
        self.styles.append(predict_probabilities(self.judges["style"], pixels).argmax(-1))
        self.digits.append(predict_probabilities(self.judges["digit"], pixels).argmax(-1))
        self.prompts.extend(conditions)

    def compute(self) -> dict:
        return {"name": self.name, **concept_scores(dim_zero_cat(self.styles), dim_zero_cat(self.digits), self.prompts,
                                                    self.concept, *self.used)}

    def reset(self) -> None:
        super().reset()
        self.prompts = []
