"""Every method x every option it takes: the option changes the run (the trained weights or the losses), or it is
refused where the run would ignore it. Runs each method for three steps on a tiny untrained model (about 0.2 s a
run); an option is changed from a small base setting, under the setting where it has something to act on."""

import dataclasses
import types
import typing

import pytest
import torch

import erase
from erase.config import check_options_act
from erase.data import split_by_class
from erase.engine import Runtime
from erase.errors import OptionError
from erase.methods import MASK_OPTIONS, METHODS, NOT_READ, option_names
from tests.conftest import tiny_adapter

BASE = {  # small and fast; every option below is changed from here
    "sfron": dict(steps=3, batch_size=4, fisher_batches=1, fisher_batch_size=4),
    "joint": dict(steps=3, batch_size=4, fisher_batches=1, fisher_batch_size=4),
    "nabla_tau": dict(steps=3, batch_size=4, tau_every=2, tau_samples=8, saliency_batches=1),
    "ga": dict(steps=3, batch_size=4, remain_alpha=1.0),
    "rl": dict(steps=3, batch_size=4),
    "salun": dict(steps=3, batch_size=4, saliency_batches=1),
    "esd": dict(steps=3, batch_size=1, ddim_steps=3),
    "sa": dict(steps=3, batch_size=4, replay_per_condition=1, replay_steps=2, fisher_batches=1),
}
# (method or "*", option) -> (the setting it acts under, its changed value or None for the generic change)
ACTS_UNDER = {
    ("sfron", "forget_alpha"): ({"alpha_placement": "clipped"}, None),  # before clipping, the sum loss's clip binds
    ("sfron", "remain_alpha"): ({"max_grad_norm": None}, None),  # likewise for the remain step
    ("*", "pseudo_class"): ({"forget_objective": "pseudo", "direction": "pseudo", "surrogate": "pseudo"}, 2),
    ("*", "pseudo_random"): ({"forget_objective": "pseudo", "direction": "pseudo"}, None),
    # nearest matches prompts by their words: the walk's class model refuses it (tests/test_styled_text.py runs it)
    ("*", "pseudo_anchor"): ({"forget_objective": "pseudo"}, "nearest"),
    ("*", "forget_dense"): ({"forget_every": 2}, 2),  # steps 0 and 1 instead of 0 and 2
    ("nabla_tau", "remain_epochs"): ({"steps": None, "remain_epochs": 0.005}, 0.01),  # 3 steps against 5
    ("nabla_tau", "tau_value"): ({"tau_source": "value", "tau_value": 5.0}, 10.0),  # above the untrained loss, ~1
    ("nabla_tau", "tau_every"): ({"tau_source": "null"}, 1),
    ("nabla_tau", "timestep_bands"): ({"gap_over": "timestep"}, None),
    ("*", "saliency_batches"): ({"mask_fraction": 0.5}, None),
}
# (method or "*", option) -> a setting where it has nothing to act on, for the options declared `acts_when`
IDLE_UNDER = {
    ("*", "temperature"): {"forget_objective": "ga"},
    ("*", "alpha_placement"): {"max_grad_norm": None},
    ("*", "pseudo_class"): {"forget_objective": "adaptive", "direction": "ascent", "surrogate": "noise"},
    ("*", "pseudo_random"): {"forget_objective": "adaptive", "direction": "ascent"},
    ("*", "pseudo_anchor"): {"forget_objective": "adaptive"},
    ("*", "remain_label_dropout"): {"remain_alpha": 0.0, "replay_alpha": 0.0},
    ("*", "forget_dense"): {"forget_every": 1},
    ("*", "remain_epochs"): {"steps": 3},
    ("*", "tau_value"): {"tau_source": "relative"},
    ("*", "tau_factor"): {"tau_source": "null"},
    ("*", "tau_every"): {"tau_source": "relative"},
    ("*", "tau_samples"): {"tau_source": "value", "tau_value": 0.5},
    ("*", "timestep_bands"): {"gap_over": "batch"},
    ("*", "saliency_batches"): {"mask_fraction": None},
    ("*", "remain_reduction"): {"remain_alpha": 0.0},
}
SAME_RESULT = {("sfron", "fisher_groups"), ("joint", "fisher_groups")}  # memory knobs: the same mask, in G pieces


def lookup(table: dict, method: str, name: str):
    return table.get((method, name), table.get(("*", name)))


def own(config_class, values: dict) -> dict:
    return {k: v for k, v in values.items() if k in config_class.__dataclass_fields__}


def changed_value(f: dataclasses.Field, value, hint):
    if f.metadata.get("choices"):
        return next(c for c in f.metadata["choices"] if c != value)
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    kind = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if kind is bool:
        return not value
    if value is None:
        return {int: 2, float: 0.5}[kind]
    return value + 1 if kind is int else (value * 2 if value else 0.5)


@pytest.fixture(scope="module")
def split(digit_data):
    return split_by_class(digit_data, [7])


RUNS: dict[str, tuple] = {}  # the base settings recur: each is run once


def outcome(method: str, config, split):
    key = f"{method}|{config!r}"
    if key not in RUNS:
        RUNS[key] = run(method, config, split)
    return RUNS[key]


def run(method: str, config, split):
    function, _ = METHODS[method]
    adapter = tiny_adapter(0)
    result = function(adapter, *split, config, Runtime(seed=0, log_every=1))
    weights = torch.cat([p.detach().flatten() for p in adapter.denoiser.parameters()])
    return weights, result["losses"]


WALK = [(method, name) for method in sorted(METHODS) for name in option_names(method)]


@pytest.mark.parametrize("method, name", WALK, ids=[f"{m}-{n}" for m, n in WALK])
def test_every_option_of_every_method_changes_the_run_or_is_refused(method, name, split):
    config_class = METHODS[method][1]
    f = config_class.__dataclass_fields__[name]
    setting, new = lookup(ACTS_UNDER, method, name) or ({}, None)
    config = config_class(**{**BASE[method], **own(config_class, setting)})
    if new is None:
        new = changed_value(f, getattr(config, name), typing.get_type_hints(config_class)[name])
    other = dataclasses.replace(config, **{name: new})
    weights, losses = outcome(method, config, split)
    flag = "--" + name.replace("_", "-")
    try:
        other_weights, other_losses = outcome(method, other, split)
    except OptionError as error:  # refused on this (class) model: the refusal names the option
        assert flag in str(error), f"{method}: {name} {new!r} raised an error that does not name {flag}: {error}"
    else:
        if (method, name) in SAME_RESULT:
            assert torch.equal(weights, other_weights), f"{name} is a memory knob and must not change the result"
            return
        assert not torch.equal(weights, other_weights) or losses != other_losses, \
            f"{method}: {name} {getattr(config, name)!r} -> {new!r} changed neither the weights nor the losses"

    rule = f.metadata.get("acts_when")
    if rule is not None:  # where its condition fails, the same value is refused, not recorded and ignored
        idle = lookup(IDLE_UNDER, method, name)
        assert idle is not None, f"add a setting where {method}'s {name} has nothing to act on to IDLE_UNDER"
        idle_config = dataclasses.replace(other, **own(config_class, idle))
        assert not rule[2](idle_config)
        with pytest.raises(OptionError, match="acts only with"):
            check_options_act(idle_config, {name})
        check_options_act(other, {name})  # and where it acts, it is taken


def test_every_option_a_method_never_reads_is_refused_before_the_model_loads():
    for method, names in NOT_READ.items():
        for name in names:
            with pytest.raises(OptionError, match=f"{name} is not an option of method {method}"):
                erase.unlearn("no/such/model", forget=7, method=method, **{name: 2})


def test_an_option_that_acts_only_under_another_is_refused_through_the_api_and_the_cli(trained_model_dir, tmp_path,
                                                                                       capsys):
    from erase.cli.main import main

    with pytest.raises(OptionError, match="tau_every acts only with tau_source null, heldout or auto"):
        erase.unlearn(trained_model_dir, forget=7, method="nabla_tau", data="digits", tau_every=5)
    code = main(["unlearn", "--method", "sfron", "--temperature", "0.7", "--model", str(trained_model_dir),
                 "--forget-class", "7", "--data", "digits", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err  # the cfg_unet preset sets --forget-objective pseudo; temperature weights the ascent
    assert code == 2 and "--temperature acts only with --forget-objective adaptive (this run: 'pseudo')" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method", sorted(MASK_OPTIONS))
def test_options_that_make_a_methods_own_mask_are_refused_beside_a_given_mask(method, tmp_path):
    name = MASK_OPTIONS[method][-1]
    with pytest.raises(OptionError, match=f"{name} makes {method}'s own mask"):
        erase.unlearn("no/such/model", forget=7, method=method, mask=tmp_path / "mask.safetensors", **{name: 2})
