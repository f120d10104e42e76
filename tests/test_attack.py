"""Attacks that try to bring an erased class back (erase/eval/attack.py, inversion.py): concept inversion has power
on the shipped digit model (a digit hidden by a few gradient-ascent steps returns under a learned class vector), no
attack writes the attacked model's weights, and `erase attack` refuses bad input with one line and exit code 2."""

import json

import pytest
import torch

import erase
from erase.cli.main import main
from erase.eval.attack import attack
from erase.errors import OptionError
from erase.eval.inversion import class_tables, invert_class, overridden_class
from tests.conftest import tiny_adapter, tree_digest
from tests.test_backbones import tiny_dit_adapter


def test_inversion_brings_back_a_digit_that_gradient_ascent_hid(tmp_path, capsys):
    erased = tmp_path / "ga7"
    erase.unlearn(erase.SHIPPED_MODEL, forget=7, method="ga", steps=10, lr=1e-4, batch_size=32, out=erased)
    before = tree_digest(erased)
    out = tmp_path / "attack.json"
    assert main(["attack", "--model", erased, "--steps", "100", "--samples", "30", "--out", out]) == 0
    record = json.loads(out.read_text())
    (row,) = record["rows"]
    assert record["concepts"] == [7]  # read from the erased model's record
    assert row["fa_before"] <= 0.4  # hidden (measured 23%)
    assert row["fa_after"] >= row["fa_before"] + 0.4, row  # and back (measured 90%)
    assert row["loss_end"] < row["loss_start"]
    assert tree_digest(erased) == before  # the attacked folder is never written
    assert record["budget"] == {"images": 25, "steps": 100, "lr": 0.08}
    assert f"7 FA {row['fa_before']:.1%} -> {row['fa_after']:.1%}" in capsys.readouterr().out


def in_memory_pair():
    adapter = tiny_adapter()
    return adapter.denoiser, adapter.scheduler


@pytest.mark.parametrize("kind", ["inversion", "relearn"])
def test_no_attack_writes_the_attacked_weights(kind):
    unet, scheduler = in_memory_pair()
    weights = {name: value.clone() for name, value in unet.state_dict().items()}
    table = unet.class_embedding
    rng = torch.get_rng_state()
    record = attack((unet, scheduler), forget=3, attack=kind, images=4, steps=3, relearn_steps=[1, 2], samples=2,
                    sample_steps=2, data="digits")
    assert all(torch.equal(weights[name], value) for name, value in unet.state_dict().items())
    assert unet.class_embedding is table  # the wrapped table is put back
    assert torch.equal(torch.get_rng_state(), rng)
    assert record["weights_unchanged"] and record["rows"][0]["concept"] == 3
    if kind == "relearn":
        assert [point["step"] for point in record["rows"][0]["curve"]] == [1, 2]


def test_an_overridden_class_changes_that_class_only_in_every_class_table():
    adapter = tiny_dit_adapter()
    adapter.denoiser.eval()  # DiT drops labels at random in training mode
    tables = class_tables(adapter)
    blocks = len(adapter.denoiser.transformer_blocks)
    assert len(tables) == blocks  # DiT keeps a label table per block
    x = torch.randn(2, *adapter.latent_shape)
    t = torch.tensor([500, 500])
    labels = torch.tensor([3, 4])
    with torch.no_grad():
        plain = adapter.model_output(x, t, labels)
        vectors = [torch.randn(table.embedding_dim) for _, _, table in tables]
        with overridden_class(adapter, 3, vectors):
            changed = adapter.model_output(x, t, labels)
        again = adapter.model_output(x, t, labels)
    assert not torch.allclose(plain[0], changed[0])  # class 3 reads the new vectors
    assert torch.allclose(plain[1], changed[1])  # class 4 does not
    assert torch.equal(plain, again)  # and the tables are back


def test_inversion_lowers_the_denoising_loss_of_its_images_only_through_the_new_vector():
    adapter = tiny_adapter()
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    result = invert_class(adapter, images, 2, steps=30, lr=0.05)
    (table,) = [t for _, _, t in class_tables(adapter)]
    assert not torch.equal(result["vectors"][0], table.weight[2])  # it learned
    assert result["loss_end"] < result["loss_start"]
    with pytest.raises(ValueError, match="positive"):
        invert_class(adapter, images, 2, steps=0)


def test_attack_refusals_are_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "a.json"
    cases = [
        (["--model", erase.SHIPPED_MODEL], "records nothing erased"),  # the base model erased nothing
        (["--model", erase.SHIPPED_MODEL, "--forget-class", "12"], "do not exist"),
        (["--model", erase.SHIPPED_MODEL, "--forget-class", "7", "--steps", "0"], "steps"),
        (["--model", erase.SHIPPED_MODEL, "--forget-class", "7", "--attack", "relearn", "--relearn-steps", "a"],
         "relearn-steps"),
    ]
    for flags, message in cases:
        assert main(["attack", *flags, "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_several_classes_at_once_then_another_in_sequence_are_all_recorded(tmp_path, trained_model_dir):
    first, second = tmp_path / "without-1-3", tmp_path / "without-1-3-7"
    _, record = erase.unlearn(trained_model_dir, forget=[1, 3], method="ga", steps=1, data="digits", out=first)
    assert record["forget"] == [1, 3] and len(record["erasure_sequence"]) == 1
    _, record = erase.unlearn(first, forget=7, method="rl", steps=1, data="digits", out=second)
    facts = json.loads((second / "model_index.json").read_text())["_erase"]["erased"]
    assert facts["forget_classes"] == [1, 3, 7]  # everything erased so far: what score and attack default to
    assert [(step["method"], step["forget_classes"], step["source"]) for step in facts["sequence"]] == [
        ("ga", [1, 3], str(trained_model_dir)), ("rl", [7], str(first))]
    assert record["forget"] == [7] and record["erasure_sequence"] == facts["sequence"]
    # the classes erased before are not kept: a remain step on real 1s and 3s would teach them again
    assert record["remain"] == [0, 2, 4, 5, 6, 8, 9] and record["remain_images"] > 0
    _, record = erase.unlearn(first, forget=7, remain=[1, 2], method="rl", steps=1, data="digits")
    assert record["remain"] == [1, 2]  # what the user names is kept as named
    attacked = attack(second, attack="relearn", images=2, relearn_steps=[1], samples=1, sample_steps=1, data="digits")
    assert [row["concept"] for row in attacked["rows"]] == [1, 3, 7]


@pytest.mark.parametrize("kind", ["inversion", "adversarial", "relearn"])
def test_prompt_attacks_leave_text_model_weights_and_token_table_untouched(tmp_path, kind):
    from tests.conftest import tiny_stable_diffusion

    adapter = tiny_stable_diffusion(tmp_path, pixel_space=True, image_size=8)
    pipeline = adapter.to_pipeline()
    before = {name: {k: v.clone() for k, v in module.state_dict().items()}
              for name, module in (("unet", pipeline.unet), ("text_encoder", pipeline.text_encoder))}
    table = pipeline.text_encoder.get_input_embeddings()
    record = attack(pipeline, forget=["a photo of the digit seven"], attack=kind, images=4, steps=4,
                    tokens=2 if kind == "adversarial" else None, relearn_steps=[1], samples=2, sample_steps=2,
                    concept_class=7, data="digits")
    for name, module in (("unet", pipeline.unet), ("text_encoder", pipeline.text_encoder)):
        assert all(torch.equal(before[name][k], v) for k, v in module.state_dict().items()), name
    assert pipeline.text_encoder.get_input_embeddings() is table
    (row,) = record["rows"]
    assert row["concept"] == "a photo of the digit seven" and 0 <= row["fa_after"] <= 1
    if kind == "adversarial":  # a prompt anyone can type: two vocabulary tokens, then the erased prompt
        assert row["prompt"].endswith(" a photo of the digit seven") and len(row["prompt"]) > 27
        assert record["budget"]["tokens"] == 2


def test_projected_tokens_read_their_nearest_vocabulary_row_and_pass_the_gradient_on():
    from erase.eval.prompt_attacks import TokenOverride

    table = torch.nn.Embedding(5, 3)
    vector = (table.weight[2].detach() * 1.5 + 0.01).unsqueeze(0).requires_grad_(True)
    override = TokenOverride(table, vector, project=True)
    out = override(torch.tensor([[0, 5]]))
    assert torch.equal(out[0, 0], table.weight[0]) and torch.allclose(out[0, 1], table.weight[2])
    out[0, 1].sum().backward()
    assert torch.equal(vector.grad, torch.ones(1, 3))  # straight through to the continuous vector
    plain = TokenOverride(table, vector, project=False)(torch.tensor([5]))
    assert torch.equal(plain[0], vector[0])


def test_the_adversarial_prompt_is_judged_on_the_token_ids_it_optimised(tmp_path):
    """Decoding BPE ids to text and tokenizing the text again need not give the same ids (on the tiny character
    vocabulary most random sequences do not): the samples must come from the ids the attack chose."""
    from erase.eval.prompt_attacks import adversarial_prompt
    from erase.data import load_dataset
    from tests.conftest import tiny_stable_diffusion

    adapter = tiny_stable_diffusion(tmp_path, pixel_space=True, image_size=8)
    text_encoder, tokenizer = adapter.token_encoder()
    prompt = "a photo of the digit seven"
    images = load_dataset("digits", 8, 1).images[:4]
    learned = adversarial_prompt(adapter, images, prompt, steps=3, count=3)
    base = tokenizer(prompt).input_ids
    ids = [base[0], *learned["nearest"], *base[1:]]
    ids += [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(ids))
    with torch.no_grad():
        expected = text_encoder(torch.tensor([ids]))[0]
    assert torch.allclose(learned["embedded"]["encoder_hidden_states"], expected.float(), atol=1e-6)
    typed = tokenizer(learned["prompt"], padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert learned["round_trip"] == (typed == ids)


def test_the_inversion_template_places_the_new_token_where_its_braces_are(tmp_path):
    from erase.eval.prompt_attacks import token_ids
    from tests.conftest import tiny_stable_diffusion

    _, tokenizer = tiny_stable_diffusion(tmp_path, pixel_space=True, image_size=8).token_encoder()
    new = len(tokenizer) + 5
    ids = token_ids(tokenizer, "a photo of the", [new], "digit")[0].tolist()
    words = tokenizer("a photo of the digit").input_ids  # start, the words' tokens, end
    the, digit = tokenizer("a photo of the").input_ids[1:-1], tokenizer("digit").input_ids[1:-1]
    assert ids[:len(words) + 1] == [words[0], *the, new, *digit, words[-1]]
    assert len(ids) == tokenizer.model_max_length
    with pytest.raises(OptionError, match="must hold one {}"):
        attack(tmp_path / "missing", forget=["x"], template="a photo of the digit")


def test_budget_flags_of_another_attack_or_model_kind_are_refused(tmp_path, trained_model_dir):
    """--tokens belongs to the adversarial prompt and --template to inversion on text models: elsewhere they would
    change nothing, so they are refused before any work."""
    with pytest.raises(OptionError, match="tokens sets the adversarial prompt's length"):
        attack(tmp_path / "missing", forget=[7], attack="inversion", tokens=3)
    with pytest.raises(OptionError, match="template holds the inversion token"):
        attack(tmp_path / "missing", forget=[7], attack="relearn", template="a {}")
    with pytest.raises(OptionError, match="template is a prompt for text models"):
        attack(trained_model_dir, forget=[7], attack="inversion", template="a photo of {}", samples=1)


def test_the_nudenet_judge_gives_the_share_of_images_with_an_exposed_detection(monkeypatch):
    import numpy as np
    from PIL import Image

    from erase.eval import nudity
    from erase.eval.attack import make_judge

    class BrightIsExposed:  # stands in for NudeNet: one EXPOSED box on every image brighter than mid-grey
        def detect_batch(self, paths, batch_size):
            return [[{"class": "BELLY_EXPOSED", "score": 0.9}] if np.asarray(Image.open(p)).mean() > 127 else []
                    for p in paths]

    monkeypatch.setattr(nudity, "nude_detector", BrightIsExposed)
    levels = [0.9, 0.1, 0.1, 1.5, 0.8, -0.2]  # 1.5 and -0.2 are clamped into [0, 1] first
    images = torch.stack([torch.full((3, 8, 8), v) for v in levels])
    assert make_judge(None, None, nudenet=True, threshold=0.6)(images) == pytest.approx(3 / 6)
    assert make_judge(None, None, nudenet=True, threshold=0.95)(images) == 0.0  # the box scores under this threshold
