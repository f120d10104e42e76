"""What text-to-image users score with: CLIP score against each image's prompt, and FID in Inception space.

A tiny random CLIP (built here, saved to tmp_path) stands in for openai/clip-vit-large-patch14, and a tiny
TorchScript module with the interface of clean-fid's inception-2015-12-05.pt stands in for the Inception weights,
which cannot be fetched on this machine.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import erase
from erase.cli.main import main
from erase.eval.clip_score import image_text_scores, load_clip
from erase.images import write_images
from tests.conftest import write_tiny_clip_tokenizer

PROMPTS = ["a cat", "a red car", "a tree"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err, captured.out


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    """A random-init CLIPModel (2 layers, width 32, 16 px images) and its CLIPProcessor, saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    root = tmp_path_factory.mktemp("clip")
    vocabulary = write_tiny_clip_tokenizer(root / "vocabulary")
    tokenizer = CLIPTokenizer(str(vocabulary / "vocab.json"), str(vocabulary / "merges.txt"), model_max_length=32)
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, **layers),
        vision_config=dict(image_size=16, patch_size=4, **layers), projection_dim=16,
    )
    torch.manual_seed(0)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    folder = root / "clip"
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def prompt_images(seed: int, n_per_prompt: int = 2, size: int = 20, shift: int = 0) -> tuple[torch.Tensor, list[dict]]:
    """uint8 RGB images, prompt-major, with the records `erase sample --prompts` writes."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 200, (len(PROMPTS) * n_per_prompt, 3, size, size), generator=generator, dtype=torch.uint8)
    records = [{"file": f"images/{i:06d}.png", "condition": PROMPTS[i // n_per_prompt], "seed": i % n_per_prompt}
               for i in range(len(pixels))]
    return pixels + shift, records


def reference_clip_scores(folder: Path, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """100 * cos(image embedding, prompt embedding) per image, from the CLIPModel's own towers and projections."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        pixel_values = processor.image_processor(images=list(pixels), return_tensors="pt")["pixel_values"]
        images = model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)
        tokens = processor.tokenizer(prompts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        texts = model.text_projection(model.text_model(**tokens).pooler_output)
    return 100 * F.cosine_similarity(images, texts, dim=-1)


def clipped_mean(values: torch.Tensor) -> float:
    return max(float(values.mean()), 0.0)


def test_clip_score_equals_the_clip_models_own_cosine_overall_per_prompt_and_for_forget_prompts(clip_folder, tmp_path,
                                                                                                   capsys):
    pixels, records = prompt_images(seed=0)
    header = {"model_info": {"erased": {"method": "esd", "forget_prompts": ["a cat"]}}}
    write_images(tmp_path / "samples", pixels, records, header)
    out = tmp_path / "scores.json"
    code, err, printed = run_cli(capsys, "score", "--images", tmp_path / "samples", "--clip-model", clip_folder,
                                 "--out", out)
    assert code == 0, err
    clip = json.loads(out.read_text())["clip"]

    prompts = [r["condition"] for r in records]
    expected = reference_clip_scores(clip_folder, pixels, prompts)  # (6,)
    assert expected.abs().max() > 1 and expected.std() > 0.1  # a score of 0 everywhere would compare nothing
    assert clip["images"] == 6 and clip["model"] == str(clip_folder)
    assert clip["score"] == pytest.approx(clipped_mean(expected), abs=1e-3)
    assert [p["prompt"] for p in clip["per_prompt"]] == PROMPTS
    for k, row in enumerate(clip["per_prompt"]):
        assert row["images"] == 2 and row["score"] == pytest.approx(clipped_mean(expected[2 * k : 2 * k + 2]), abs=1e-3)
    assert clip["forget_prompts"] == ["a cat"] and (clip["forget_images"], clip["other_images"]) == (2, 4)
    assert clip["forget_score"] == pytest.approx(clipped_mean(expected[:2]), abs=1e-3)
    assert clip["other_score"] == pytest.approx(clipped_mean(expected[2:]), abs=1e-3)
    assert f"CLIP score {clip['score']:.2f}" in printed

    from torchmetrics.multimodal.clip_score import CLIPScore  # the public metric, fed the same pairs, agrees

    metric = CLIPScore(model_name_or_path=lambda: load_clip(clip_folder))
    metric.update(list(pixels), prompts)
    assert float(metric.compute()) == pytest.approx(clip["score"], abs=1e-3)


def test_prompts_longer_than_the_text_model_keep_their_end_token(clip_folder):
    """torchmetrics alone cuts the tokens and the end-of-text token CLIP pools at; the prompt must be truncated."""
    long_prompt = "a photograph of a very small grey cat sitting on a wooden chair"  # 60+ characters, 32 positions
    pixels, _ = prompt_images(seed=1)
    pixels = pixels[:2]
    scores = image_text_scores(pixels, [long_prompt] * 2, *load_clip(clip_folder), batch_size=1)  # unclipped, (2,)
    expected = reference_clip_scores(clip_folder, pixels, [long_prompt] * 2)
    assert expected.abs().min() > 1
    assert torch.allclose(scores, expected, atol=1e-3)


def test_clip_model_refusals_name_the_flag_and_the_fix(clip_folder, tmp_path, capsys):
    pixels, records = prompt_images(seed=2)
    write_images(tmp_path / "samples", pixels, records, {})
    not_clip = tmp_path / "bert"
    not_clip.mkdir()
    (not_clip / "config.json").write_text(json.dumps({"model_type": "bert"}))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((clip_folder / "config.json").read_text())
    cases = [(tmp_path / "nowhere", "is not a folder"), (tmp_path, "has no config.json"),
             (not_clip, "holds a 'bert' model"), (no_weights, "cannot be loaded as a CLIP model")]
    for folder, words in cases:
        out = tmp_path / "scores.json"
        code, err, _ = run_cli(capsys, "score", "--images", tmp_path / "samples", "--clip-model", folder, "--out", out)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"--clip-model {str(folder)!r}" in err, err
        assert words in err and "save_pretrained" in err and "nothing is downloaded" in err, err
        assert not out.exists()

    with pytest.raises(erase.ModelError, match=r"^clip_model '.*' is not a folder"):
        erase.score(tmp_path / "samples", clip_model=tmp_path / "nowhere")

    classes = tmp_path / "classes"  # images drawn for class ids: there is no prompt to score against
    write_images(classes, pixels[:2], [{"file": f"images/{i:06d}.png", "condition": i} for i in range(2)], {})
    code, err, _ = run_cli(capsys, "score", "--images", classes, "--clip-model", clip_folder,
                           "--out", tmp_path / "s.json")
    assert code == 2 and "has no prompt per image" in err and "erase sample --prompts" in err, err


# Inception FID through clean-fid's InceptionV3W and 'clean' resize, with a stand-in for inception-2015-12-05.pt.

STAND_IN_DIMENSIONS = 16  # the stand-in's first 16 features vary, the other 2032 are 0 (FID's 2048-d eigvals stay fast:
# a full-rank 2048 x 2048 one took 77 s on this 2-core machine, under load)


class StandInLayers(nn.Module):
    """(N, 3, 299, 299) floats in [-1, 1] -> (N, 2048, 1, 1), like the real network's pool3 output."""

    def __init__(self):
        super().__init__()
        self.project = nn.Linear(3 * 4 * 4, STAND_IN_DIMENSIONS)
        self.zeros = 2048 - STAND_IN_DIMENSIONS  # an attribute: TorchScript does not read module globals

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.project(F.adaptive_avg_pool2d(x, 4).flatten(1))  # (N, 16)
        return F.pad(features, (0, self.zeros)).view(-1, 2048, 1, 1)


class StandInInception(nn.Module):
    """What InceptionV3W uses of the real file: `torch.jit.load(...)`, `.layers`, and forward(x, return_features)."""

    def __init__(self):
        super().__init__()
        self.layers = StandInLayers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers((x - 128) / 128).view(-1, 2048)


def clean_resize_reference(pixels: torch.Tensor) -> torch.Tensor:
    """clean-fid's 'clean' mode by hand: each channel a float PIL image, bicubic to 299 x 299, clipped to [0, 255]."""
    channels = [[np.asarray(Image.fromarray(image[c].numpy().astype(np.float32)).resize((299, 299), Image.BICUBIC))
                 for c in range(3)] for image in pixels]
    return torch.from_numpy(np.stack(channels).clip(0, 255))  # (N, 3, 299, 299)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_inception_fid_runs_end_to_end_on_a_torchscript_stand_in_without_torchvision(tmp_path, monkeypatch, capsys):
    pytest.importorskip("cleanfid.inception_torchscript",
                        reason="clean-fid not installed: `pip install --no-deps clean-fid==0.1.35` (erase/eval/fid.py)")
    weights = tmp_path / "inception"
    weights.mkdir()
    torch.manual_seed(0)
    stand_in = StandInInception().eval()
    torch.jit.script(stand_in).save(str(weights / "inception-2015-12-05.pt"))
    monkeypatch.setenv("ERASE_INCEPTION_DIR", str(weights))

    generated, records = prompt_images(seed=3, n_per_prompt=4, size=16)
    real, _ = prompt_images(seed=4, n_per_prompt=4, size=16, shift=40)
    write_images(tmp_path / "samples", generated, records, {})
    (tmp_path / "real").mkdir()
    for i, image in enumerate(real):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "real" / f"{i:03d}.png")
    out = tmp_path / "scores.json"
    code, err, printed = run_cli(capsys, "score", "--images", tmp_path / "samples", "--fid-ref", tmp_path / "real",
                                 "--fid-features", "inception", "--out", out)
    assert code == 0, err
    fid = json.loads(out.read_text())["fid"]
    assert fid["features"] == "inception" and fid["samples"] == {"real": 12, "generated": 12}

    with torch.no_grad():
        features = [stand_in(clean_resize_reference(x)).double().numpy()[:, :STAND_IN_DIMENSIONS]
                    for x in (real, generated)]
    expected = frechet_distance(*features)
    assert expected > 0.1  # the sets differ (real is 40 levels brighter), so 0 would compare nothing
    assert fid["value"] == pytest.approx(expected, rel=1e-3)
    assert f"FID (inception) {fid['value']:.3f}" in printed
