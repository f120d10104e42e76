"""The adapter Protocol lists everything callers use, and every registered backbone implements it."""

import re
from pathlib import Path

import erase
from erase.pipelines import BACKBONES
from erase.pipelines.base import ClassConditioned, DiffusionAdapter, TextConditioned

PACKAGE = Path(erase.__file__).parent
# what only the classifier adapter offers (erase/pipelines/classifier.py), called where `generative` is False
CLASSIFIER_ONLY = {"losses", "methods", "accuracy", "predict", "logits"}


def declared(protocol) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")} | set(protocol.__annotations__)


def test_every_adapter_member_used_outside_the_pipelines_is_declared_in_the_protocols():
    interface = declared(DiffusionAdapter) | declared(ClassConditioned) | declared(TextConditioned) | CLASSIFIER_ONLY
    used = {}
    for path in PACKAGE.rglob("*.py"):
        if "pipelines" in path.relative_to(PACKAGE).parts:
            continue
        for name in re.findall(r"\badapter\.([A-Za-z_]\w*)", path.read_text()):
            used.setdefault(name, str(path.relative_to(PACKAGE)))
    assert used, "the scan found no adapter calls: the pattern is wrong"
    missing = {name: where for name, where in used.items() if name not in interface}
    assert not missing, f"used but not declared in erase/pipelines/base.py: {missing}"


def test_every_generative_backbone_class_implements_the_protocol():
    members = declared(DiffusionAdapter)
    for name, adapter_class in BACKBONES.items():
        if name == "classifier":
            continue
        absent = sorted(m for m in members if not hasattr(adapter_class, m) and m not in adapter_class.__init__.__code__.co_names
                        and m not in ("denoiser", "scheduler", "info"))  # set in __init__
        assert not absent, f"{adapter_class.__name__} lacks {absent}"
        text = adapter_class.takes_prompts
        assert all(hasattr(adapter_class, m) for m in ("register_prompts", "select_trainable")) == text, name
        if adapter_class.conditional and not text:
            assert hasattr(adapter_class, "check_class_ids"), name
