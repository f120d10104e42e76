"""Stable Diffusion 3.x (MMDiT, rectified flow): the family acceptance on a tiny random StableDiffusion3Pipeline with
all three text encoders (T5 included, its tokenizer built offline from a character vocabulary), plus the logit-normal
sigma density, the --train-params xattn rule and the VAE's shift."""

from __future__ import annotations

import re
import string

import pytest
import torch

import erase
from tests.conftest import write_tiny_clip_tokenizer
from tests.family_checks import FAST, FORGET, RETAIN, check_family, state

# The MMDiT joint attention, restated here from diffusers' JointAttnProcessor2_0: the image stream's q/k/v/out and
# the text stream's added q/k/v/out (plus their q/k norms) attend over the concatenated tokens, so all read the text.
JOINT_ATTENTION = re.compile(r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|"
                             r"add_v_proj|to_add_out|norm_q|norm_k|norm_added_q|norm_added_k)\.(weight|bias)")


def tiny_t5_tokenizer():
    """A T5 (Unigram) tokenizer over single characters: no sentencepiece file needed."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    vocab += [("\u2581" + c, -3.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=32)


def sd3_pipeline(tmp_path, with_t5: bool = True):
    """Random-init components sized after diffusers' own SD 3 pipeline test (get_dummy_components); two blocks so the
    first carries the text stream's output projection (the last block is context_pre_only)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
    tokenizer = CLIPTokenizer(str(write_tiny_clip_tokenizer(tmp_path / "tok") / "vocab.json"),
                              str(tmp_path / "tok" / "merges.txt"), model_max_length=16)

    def clip():
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=16, projection_dim=32, bos_token_id=0, eos_token_id=1,
            pad_token_id=1))

    text_encoder_3 = tokenizer_3 = None
    if with_t5:
        tokenizer_3 = tiny_t5_tokenizer()
        text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_3), d_model=32, d_ff=37, d_kv=8,
                                                 num_layers=2, num_heads=4, relative_attention_num_buckets=8))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                        layers_per_block=1, norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, shift_factor=0.0609, scaling_factor=1.5035)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip(), tokenizer=tokenizer, text_encoder_2=clip(), tokenizer_2=tokenizer,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)


@pytest.mark.parametrize("with_t5", [True, False], ids=["t5", "no_t5"])
def test_sd3_family_erases_a_prompt_and_writes_a_plain_diffusers_folder(tmp_path, monkeypatch, with_t5):
    from diffusers import StableDiffusion3Pipeline

    if not with_t5:  # plain diffusers loads a T5-less folder only when told so, as users load SD 3 without T5
        load = StableDiffusion3Pipeline.from_pretrained.__func__
        monkeypatch.setattr(StableDiffusion3Pipeline, "from_pretrained", classmethod(
            lambda cls, folder, **kwargs: load(cls, folder, **{"text_encoder_3": None, "tokenizer_3": None, **kwargs})))
    record = check_family(sd3_pipeline(tmp_path, with_t5), tmp_path, "transformer", "flow_matching")
    assert record["backbone"] == "sd3"
    assert record["training_target"]["sigma_density"].startswith("logit_normal(mean 0.0, std 1.0)")


def test_sd3_xattn_trains_only_the_joint_attention(tmp_path):
    from erase.pipelines.sd3 import StableDiffusion3Adapter

    pipeline = sd3_pipeline(tmp_path, with_t5=False)
    names = [name for name, _ in pipeline.transformer.named_parameters()]
    expected = {name for name in names if JOINT_ATTENTION.fullmatch(name)}
    assert {"transformer_blocks.0.attn.add_q_proj.weight", "transformer_blocks.0.attn.to_add_out.weight",
            "transformer_blocks.1.attn.to_q.weight"} <= expected
    adapter = StableDiffusion3Adapter.from_pipeline(pipeline, pipeline.transformer, {}, train_params="xattn")
    assert {name for name, p in adapter.denoiser.named_parameters() if p.requires_grad} == expected
    adapter.select_trainable("noxattn")  # ESD-u: neither the joint attention nor the time/text embedders and output
    frozen = ("time_text_embed.", "context_embedder.", "norm_out.", "proj_out.")
    assert {name for name, p in adapter.denoiser.named_parameters() if p.requires_grad} == {
        name for name in names if name not in expected and not name.startswith(frozen)}
    adapter.select_trainable("full")

    before = state(pipeline.transformer)
    erased, record = erase.unlearn(pipeline, forget=FORGET, remain=[RETAIN], method="sfron", train_params="xattn",
                                   **FAST)
    after = state(erased.transformer)
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and moved <= expected, moved - expected
    assert record["train_params"] == "xattn"


def test_sd3_latents_are_shifted_then_scaled(tmp_path):
    from erase.pipelines.sd3 import StableDiffusion3Adapter

    pipeline = sd3_pipeline(tmp_path, with_t5=False)
    adapter = StableDiffusion3Adapter.from_pipeline(pipeline, pipeline.transformer, {})
    vae, shift, scale = pipeline.vae, 0.0609, 1.5035
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.manual_seed(3)
    latents = adapter.encode(images)
    torch.manual_seed(3)
    with torch.no_grad():
        expected = (vae.encode(images).latent_dist.sample() - shift) * scale
        decoded = (vae.decode(latents / scale + shift).sample / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(latents, expected, atol=1e-6)
    assert torch.allclose(adapter.decode(latents), decoded, atol=1e-6)
    assert adapter.latent_shape == (4, 8, 8) and adapter.image_shape == (3, 16, 16)
    assert adapter.prompts[0] == ""  # the null condition: the pipeline's own negative prompt when none is given


def test_sd3_adapter_samples_what_the_diffusers_pipeline_samples(tmp_path):
    """The reference check: same noise, same prompt -> the adapter's guided Euler loop and decode match
    StableDiffusion3Pipeline's (conditioning, timesteps as sigma * 1000, guidance and the VAE shift all agree)."""
    from erase.pipelines.sd3 import StableDiffusion3Adapter

    pipeline = sd3_pipeline(tmp_path, with_t5=True)
    adapter = StableDiffusion3Adapter.from_pipeline(pipeline, pipeline.transformer, {}, train_params=None)
    run = dict(num_inference_steps=3, guidance_scale=3.0)
    latents, _ = adapter.sample_latents([FORGET], generator=torch.Generator().manual_seed(0), **run)
    expected = pipeline(FORGET, generator=torch.Generator().manual_seed(0), output_type="latent", **run).images
    assert torch.allclose(latents, expected, atol=1e-5)
    images = adapter.sample([FORGET], generator=torch.Generator().manual_seed(0), **run)
    expected = pipeline(FORGET, generator=torch.Generator().manual_seed(0), output_type="pt", **run).images
    assert torch.allclose(images, expected, atol=1e-5)
