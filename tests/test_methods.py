"""Every method on the tiny class model and the tiny Stable Diffusion model, and what makes each one itself."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DModel

from erase.data import ImageDataset, split_by_class
from erase.engine import Runtime
from erase.errors import OptionError, UsageError
from erase.methods.esd import ESDConfig, esd, esd_target
from erase.methods.ga import GAConfig, ga
from erase.methods import METHODS
from erase.methods.nabla_tau import NablaTauConfig, gap_slope, nabla_tau, nabla_tau_forget_term
from erase.objectives import denoising_losses, pseudo_target_losses
from erase.methods.rl import RLConfig, rl
from erase.methods.sa import SAConfig, add_ewc_gradient, sa
from erase.saliency import top_fraction_mask, trainable_parameters
from erase.methods.salun import SalUnConfig, salun
from erase.eval.losses import fixed_draw_loss
from erase.pipelines import load_adapter
from erase.cli.main import main
from tests.conftest import tiny_stable_diffusion

FAST = {  # a few cheap steps per method
    "sfron": ["--fisher-batches", "1"], "joint": ["--fisher-batches", "1"], "nabla_tau": ["--tau-samples", "8"],
    "ga": [], "rl": [], "salun": ["--saliency-batches", "1"], "esd": ["--ddim-steps", "3"],
    "sa": ["--replay-per-condition", "1", "--replay-steps", "2", "--fisher-batches", "1"],
}
SD_FAST = {
    "sfron": dict(fisher_batches=1), "joint": dict(fisher_batches=1), "nabla_tau": dict(tau_every=2, tau_samples=8),
    "ga": {}, "rl": {}, "salun": dict(saliency_batches=1), "esd": dict(ddim_steps=3),
    "sa": dict(replay_per_condition=1, replay_steps=2, fisher_batches=1),
}


@pytest.fixture(scope="module")
def digit_split(digit_data):
    return split_by_class(digit_data, [7])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_from_the_cli_and_the_result_loads_in_diffusers(method, trained_model_dir, tmp_path, capsys):
    out = tmp_path / method
    code = main(["unlearn", "--method", method, "--model", str(trained_model_dir), "--forget-class", "7", "--data",
                 "digits", "--steps", "3", "--batch-size", "8", *FAST[method], "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "run.json").read_text())
    assert record["method"] == method and record["config"]["steps"] == 3
    config = record["config"]  # SFR-on's preset: every iteration for the first N, then every k-th; the rest: each one
    forget_steps = 3
    if method == "sfron":
        forget_steps = sum(s < config["forget_dense"] or s % config["forget_every"] == 0 for s in range(3))
    assert len(record["losses"]["forget"]["value"]) == forget_steps and "unlearn" in record["timings"]
    original = UNet2DModel.from_pretrained(trained_model_dir, subfolder="unet")
    erased = UNet2DModel.from_pretrained(out)
    assert any(not torch.equal(a, b) for a, b in zip(original.parameters(), erased.parameters()))
    assert (out / "mask.safetensors").exists() == (method in ("sfron", "joint", "salun"))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_tiny_stable_diffusion_and_saves_a_pipeline(method, tmp_path):
    adapter = tiny_stable_diffusion(tmp_path)
    ids = adapter.register_prompts(["a photo of a nude person", "a photo of a person wearing clothes"])
    forget = ImageDataset(torch.rand(4, 3, 16, 16) * 2 - 1, ids[:1].repeat(4), [])
    remain = ImageDataset(torch.rand(4, 3, 16, 16) * 2 - 1, ids[1:].repeat(4), [])
    function, config_class = METHODS[method]
    function(adapter, forget, remain, config_class(steps=2, batch_size=2, **SD_FAST[method]), Runtime(seed=0))
    adapter.save_pretrained(tmp_path / "out")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "out")
    assert pipe(["a photo of a cat"], num_inference_steps=1, height=16, width=16, output_type="np").images.shape == (1, 16, 16, 3)


def test_unknown_flag_for_the_chosen_method_is_refused(trained_model_dir, tmp_path, capsys):
    code = main(["unlearn", "--method", "ga", "--gamma", "2", "--model", str(trained_model_dir), "--forget-class", "7",
                 "--data", "digits", "--out", str(tmp_path / "o")])
    assert code == 2 and "--gamma is not an option of --method ga" in capsys.readouterr().err


def test_nabla_tau_forget_term_vanishes_above_tau_leaving_pure_remain_descent(trained_model_dir, digit_split):
    forget_mean = torch.tensor(0.7, requires_grad=True)
    term = nabla_tau_forget_term(forget_mean, tau=0.5, gap="absolute")
    term.backward()
    assert term.item() == 0.0 and forget_mean.grad.item() == 0.0
    below = torch.tensor(0.2, requires_grad=True)
    nabla_tau_forget_term(below, tau=0.5, gap="absolute").backward()
    assert below.grad.item() == pytest.approx(-2 * 0.3)  # d/dl (tau - l)^2: ascent while below tau

    adapter = load_adapter(trained_model_dir)
    forget, remain = digit_split
    params = list(trainable_parameters(adapter.denoiser).values())
    torch.manual_seed(0)
    f_losses = denoising_losses(adapter, forget.images[:16], forget.labels[:16])
    r_losses = denoising_losses(adapter, remain.images[:16], remain.labels[:16])
    alpha, tau = 0.3, float(f_losses.detach().mean()) - 0.01  # forget loss already above tau
    total = alpha * nabla_tau_forget_term(f_losses.mean(), tau) + (1 - alpha) * r_losses.mean()
    combined = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
    remain_only = torch.autograd.grad((1 - alpha) * r_losses.mean(), params, allow_unused=True)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(combined, remain_only))


def test_nabla_tau_per_sample_gap_stops_each_sample_at_tau_on_its_own():
    losses = torch.tensor([0.2, 0.7, 0.5, 0.9], requires_grad=True)  # two below tau = 0.6, two above
    term = nabla_tau_forget_term(losses, tau=0.6, gap="absolute", over="sample")
    term.backward()
    assert term.item() == pytest.approx((0.4**2 + 0.1**2) / 4)
    # d/dl_i mean_j ReLU(tau - l_j)^2 = -2 (tau - l_i) / 4 below tau, exactly 0 at or above it
    assert losses.grad.tolist() == pytest.approx([-0.2, 0.0, -0.05, 0.0]) and losses.grad[[1, 3]].eq(0).all()
    closed = torch.tensor([0.6, 0.8], requires_grad=True)  # every sample at or above tau: nothing left to ascend
    term = nabla_tau_forget_term(closed, tau=0.6, gap="relative", over="sample")
    term.backward()
    assert term.item() == 0.0 and closed.grad.eq(0).all()
    # the batch form sees only the mean (0.575 < 0.6 here): it still ascends every sample, the one above tau too
    batch = torch.tensor([0.2, 0.95], requires_grad=True)
    nabla_tau_forget_term(batch, tau=0.6, gap="absolute", over="batch").backward()
    assert batch.grad.lt(0).all()


def test_nabla_tau_gap_slope_is_the_ascents_own_strength_and_zero_once_the_gap_closes():
    losses = torch.tensor([0.1, 0.3, 0.4, 0.9])
    # -d/dl ReLU(1 - l/tau)^2 = 2 (1 - l/tau) / tau below tau (tau = 0.4), 0 at and above it
    assert gap_slope(losses, 0.4, "relative").tolist() == pytest.approx([3.75, 1.25, 0.0, 0.0])
    assert gap_slope(losses, 0.4, "absolute").tolist() == pytest.approx([0.6, 0.2, 0.0, 0.0])  # 2 (tau - l)
    for gap in ("relative", "absolute"):  # the slope is the ascent term's gradient, computed by autograd here
        l = losses.clone().requires_grad_()
        nabla_tau_forget_term(l, 0.4, gap, over="sample").backward()
        assert (-l.grad * len(losses)).tolist() == pytest.approx(gap_slope(losses, 0.4, gap).tolist())


def test_nabla_tau_pseudo_direction_stops_once_every_sample_reaches_tau(trained_model_dir, digit_split):
    """--direction pseudo: the forget term moves the forget class's prediction toward another class's, weighted
    per sample by the gap's slope. Once every sample's loss is above tau the term is zero with zero gradient: the
    run is then pure remain descent, step for step the same as the ascent form's, whose gap is closed too."""
    forget, remain = digit_split

    def run(direction: str, tau: float):
        adapter = load_adapter(trained_model_dir)
        config = NablaTauConfig(steps=2, batch_size=8, tau_source="value", tau_value=tau, direction=direction,
                                gap_over="sample")
        result = nabla_tau(adapter, forget, remain, config, Runtime(seed=0))
        return {n: p.detach().clone() for n, p in trainable_parameters(adapter.denoiser).items()}, result

    closed_pseudo, record = run("pseudo", 1e-9)
    closed_ascent, _ = run("ascent", 1e-9)
    assert record["record"]["direction"] == "pseudo" and record["record"]["pseudo_class"] == 8  # 7 -> the next
    assert all(torch.equal(closed_pseudo[n], closed_ascent[n]) for n in closed_pseudo)
    open_pseudo, _ = run("pseudo", 1e3)  # far below tau: the term acts, and differently from the ascent
    open_ascent, _ = run("ascent", 1e3)
    assert any(not torch.equal(open_pseudo[n], closed_pseudo[n]) for n in open_pseudo)
    assert any(not torch.equal(open_pseudo[n], open_ascent[n]) for n in open_pseudo)


def test_nabla_tau_with_a_saliency_mask_moves_only_the_masked_entries(trained_model_dir, digit_split):
    forget, remain = digit_split
    before = {name: p.detach().clone() for name, p in trainable_parameters(load_adapter(trained_model_dir).denoiser).items()}
    adapter = load_adapter(trained_model_dir)
    config = NablaTauConfig(steps=3, batch_size=8, tau_samples=16, mask_fraction=0.3, saliency_batches=2)
    result = nabla_tau(adapter, forget, remain, config, Runtime(seed=0))
    mask = result["mask"]
    kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert kept == pytest.approx(0.3, abs=0.01)
    after = trainable_parameters(adapter.denoiser)
    moved = outside = 0
    for name, m in mask.items():
        m = m.bool()
        outside += int((after[name].detach()[~m] != before[name][~m]).sum())
        moved += int((after[name].detach()[m] != before[name][m]).sum())
    assert outside == 0 and moved > 0.5 * sum(int(m.sum()) for m in mask.values())


@pytest.mark.parametrize("scale", [1.0, 1e-2, 256.0])  # pixel-mean denoising, classifier CE, pixel-sum at 16x16
def test_nabla_tau_relative_gap_pushes_equally_hard_at_any_loss_scale(scale):
    def push(gap: str) -> float:  # the forget term's gradient on the loss, expressed per unit of relative loss change
        loss = torch.tensor(0.5 * scale, requires_grad=True)  # halfway to tau
        nabla_tau_forget_term(loss, tau=1.0 * scale, gap=gap).backward()
        return loss.grad.item() * scale

    assert push("relative") == pytest.approx(-1.0)  # d/dl (1 - l/tau)^2 = -2 (1 - l/tau) / tau, times tau
    assert push("absolute") == pytest.approx(-1.0 * scale**2)  # the authors' form: quadratic in the loss scale
    above = torch.tensor(1.5 * scale, requires_grad=True)
    nabla_tau_forget_term(above, tau=scale, gap="relative").backward()
    assert above.grad.item() == 0.0


def test_nabla_tau_records_tau_at_every_refresh(trained_model_dir, digit_split):
    forget, remain = digit_split
    config = NablaTauConfig(steps=5, batch_size=8, tau_source="null", tau_every=2, tau_samples=16)
    result = nabla_tau(load_adapter(trained_model_dir), forget, remain, config, Runtime(seed=0))
    record = result["record"]
    assert [entry["step"] for entry in record["tau"]] == [0, 2, 4] and record["tau_source"] == "null"
    assert record["alpha0"] == pytest.approx(5 / 3 * len(forget) / (len(forget) + len(remain)))
    fixed = nabla_tau(load_adapter(trained_model_dir), forget, remain,
                      NablaTauConfig(steps=2, batch_size=8, tau_source="value", tau_value=0.25), Runtime(seed=0))
    assert fixed["record"]["tau"] == [{"step": 0, "tau": 0.25}]
    adapter = load_adapter(trained_model_dir)
    with torch.no_grad():  # the starting forget loss, computed here from the model before the run
        start = fixed_draw_loss(adapter, forget, 16, seed=0)
    relative = nabla_tau(adapter, forget, remain, NablaTauConfig(steps=5, batch_size=8, tau_every=2, tau_samples=16,
                                                                 tau_source="relative", tau_factor=1.5), Runtime(seed=0))
    assert relative["record"]["tau"] == [{"step": 0, "tau": pytest.approx(1.5 * start)}]  # fixed, never refreshed


def test_nabla_tau_class_tau_is_the_forget_label_on_the_other_classes_images(trained_model_dir, digit_split):
    forget, remain = digit_split  # digit 7 against the other nine
    adapter = load_adapter(trained_model_dir)
    others = ImageDataset(remain.images, torch.full_like(remain.labels, 7), remain.class_names)  # built here
    with torch.no_grad():
        expected = fixed_draw_loss(adapter, others, 16, seed=0)
        own = fixed_draw_loss(adapter, forget, 16, seed=0)
    config = NablaTauConfig(steps=2, batch_size=8, tau_samples=16, tau_source="auto")
    record = nabla_tau(adapter, forget, remain, config, Runtime(seed=0))["record"]
    assert record["tau_source"] == "class" and record["tau"][0]["tau"] == pytest.approx(expected, rel=1e-5)
    assert expected > own  # label 7 explains the 7s better than it explains the other digits
    mixed = ImageDataset(torch.cat([forget.images[:4], remain.images[:4]]),
                         torch.cat([forget.labels[:4], remain.labels[:4]]), forget.class_names)
    with pytest.raises(OptionError, match="tau_source class is for class removal"):  # not a whole class
        nabla_tau(adapter, mixed, remain, NablaTauConfig(steps=1, batch_size=4, tau_source="class"), Runtime(seed=0))


def test_salun_mask_keeps_the_stated_fraction(trained_model_dir, digit_split):
    scores = {"a": torch.rand(1000), "b": torch.rand(30, 10)}
    for fraction in (0.1, 0.5, 0.9):
        mask = top_fraction_mask(scores, fraction)
        kept = sum(int(m.sum()) for m in mask.values()) / 1300
        assert kept == pytest.approx(fraction, abs=1e-3)
    forget, remain = digit_split
    result = salun(load_adapter(trained_model_dir), forget, remain, SalUnConfig(steps=1, batch_size=8, saliency_batches=2),
                   Runtime(seed=0))
    assert 1 - result["mask_sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)


def test_esd_target_formula_and_parameter_groups(tmp_path, digit_split, trained_model_dir):
    eps_null, eps_cond = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(esd_target(eps_null, eps_cond, eta=1.5), torch.tensor([1.0 - 1.5 * 2.0, -2.0 - 1.5 * 2.0]))

    adapter = tiny_stable_diffusion(tmp_path)
    before = {n: p.detach().clone() for n, p in adapter.denoiser.named_parameters()}
    ids = adapter.register_prompts(["a photo of a nude person"])
    forget = ImageDataset(torch.zeros(2, 3, 16, 16), ids.repeat(2), [])
    adapter.select_trainable("xattn")  # ESD-x: what erase.unlearn(train_params="xattn") selects
    esd(adapter, forget, forget, ESDConfig(steps=2, ddim_steps=3, lr=1e-2), Runtime(seed=0))
    changed = {n for n, p in adapter.denoiser.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("attn2" in n for n in changed)


def test_esds_train_method_is_a_deprecated_spelling_of_train_params(trained_model_dir, capsys):
    import erase
    from erase.cli.main import build_parser

    argv = ["unlearn", "--method", "esd", "--train-method", "esd-u", "--model", "m", "--forget-class", "7", "--out", "o"]
    assert build_parser(argv).parse_args(argv).train_params == "noxattn"
    assert "--train-method esd-u is deprecated; use --train-params noxattn" in capsys.readouterr().err
    with pytest.warns(DeprecationWarning, match="pass train_params='xattn'"), \
            pytest.raises(UsageError, match="train_params xattn applies to text-to-image models"):
        erase.unlearn(trained_model_dir, forget=7, method="esd", train_method="esd-x", data="digits")
    with pytest.raises(UsageError, match="train_method is ESD's deprecated name"):
        erase.unlearn(trained_model_dir, forget=7, method="ga", train_method="esd-x")


def test_ga_raises_the_forget_loss(trained_model_dir, digit_split):
    forget, remain = digit_split
    adapter = load_adapter(trained_model_dir)
    before = fixed_draw_loss(adapter, forget, 256)
    ga(adapter, forget, remain, GAConfig(steps=10, batch_size=32, lr=1e-3), Runtime(seed=0))
    assert fixed_draw_loss(adapter, forget, 256) > 1.5 * before


def test_rl_pulls_the_forget_class_toward_its_pseudo_class(trained_model_dir, digit_split):
    forget, remain = digit_split

    def distance(adapter):
        torch.manual_seed(5)
        with torch.no_grad():
            return pseudo_target_losses(adapter, forget.images[:64], forget.labels[:64],
                                        torch.full((64,), 3)).mean().item()

    adapter = load_adapter(trained_model_dir)
    before = distance(adapter)
    rl(adapter, forget, remain, RLConfig(steps=15, batch_size=32, lr=1e-3, pseudo_class=3), Runtime(seed=0))
    assert distance(adapter) < 0.5 * before


def test_sa_ewc_gradient_matches_autograd_and_the_run_records_its_penalty(trained_model_dir, digit_split):
    torch.manual_seed(0)
    params = [torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True)]
    anchor = [torch.randn(3, 4), torch.randn(5)]
    fisher = [torch.rand(3, 4), torch.rand(5)]
    penalty = 7.0 * sum((f * (p - a).pow(2)).sum() for p, a, f in zip(params, anchor, fisher))
    expected = torch.autograd.grad(penalty, params)
    for p in params:
        p.grad = torch.zeros_like(p)
    add_ewc_gradient(params, anchor, [2 * 7.0 * f for f in fisher])
    assert all(torch.allclose(p.grad, e) for p, e in zip(params, expected))

    forget, remain = digit_split
    config = SAConfig(steps=3, batch_size=16, lr=1e-3, replay_per_condition=2, replay_steps=2, fisher_batches=2)
    result = sa(load_adapter(trained_model_dir), forget, remain, config, Runtime(seed=0))
    assert result["record"]["replay_images"] == 2 * 9 and result["record"]["ewc_penalty_final"] > 0


def test_joint_takes_one_summed_step_per_iteration_where_sfron_takes_two(trained_model_dir, digit_split, monkeypatch):
    from erase.methods.joint import joint
    from erase.methods.sfron import SFRonConfig, sfron

    forget, remain = digit_split
    adapter = load_adapter(trained_model_dir)
    params = trainable_parameters(adapter.denoiser)
    mask = {n: torch.rand_like(p) < 0.5 for n, p in params.items()}
    before = {n: p.detach().clone() for n, p in params.items()}
    steps_taken = {}
    calls = []
    adam_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (calls.append(1), adam_step(self, *a, **k))[1])
    for name, function in (("joint", joint), ("sfron", sfron)):
        model = load_adapter(trained_model_dir)
        calls.clear()
        function(model, forget, remain, SFRonConfig(steps=3, batch_size=8), Runtime(seed=0), mask=mask)
        steps_taken[name] = len(calls)
        if name == "joint":  # the remain part is unmasked, so mask-0 entries move within the single step
            moved = sum(int((p != before[n])[~mask[n]].sum()) for n, p in trainable_parameters(model.denoiser).items())
            assert moved > 0
    assert steps_taken == {"joint": 3, "sfron": 6}
    config = SFRonConfig(steps=3, batch_size=8, remain_alpha=0.0, max_grad_norm=None)
    joint(adapter, forget, remain, config, Runtime(seed=0), mask=mask)
    for n, p in params.items():  # with no remain part, the summed step is the masked forget step alone
        assert torch.equal(p[~mask[n]], before[n][~mask[n]])
