"""Flux.1, dev-like (guidance-distilled) and schnell-like: the family acceptance on a tiny random FluxPipeline, the
distilled guidance recorded, and `--train-params xattn` training only the attention (rule restated here)."""

import copy
import json
import string

import pytest
import torch

import erase
from tests.conftest import write_tiny_clip_tokenizer
from tests.family_checks import FAST, FORGET, RETAIN, check_family, state

IMAGE_SIZE, MAX_SEQUENCE_LENGTH = 16, 16  # 16 px through a 2x VAE: 8x8 latents, 16 packed tokens
SAMPLE_KWARGS = {"height": IMAGE_SIZE, "width": IMAGE_SIZE, "max_sequence_length": MAX_SEQUENCE_LENGTH}


def tiny_t5_tokenizer():
    """A character-level T5 Unigram tokenizer built in memory (no sentencepiece file to download)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def flux_pipeline(tmp_path, guidance_embeds: bool, seed: int = 0):
    """Random-init FluxPipeline components, sized as diffusers' own Flux tests (transformer in_channels = 4 x the VAE's
    latent channels: 2x2 packing), with Flux.1-dev's scheduler and VAE latent statistics."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    latent_channels = 4
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds)
    tokenizer = CLIPTokenizer(str(write_tiny_clip_tokenizer(tmp_path / "tok") / "vocab.json"),
                              str(tmp_path / "tok" / "merges.txt"), model_max_length=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipeline = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    # erase's facts about this model: the small resolution and prompt length it is sampled at
    pipeline.register_to_config(_erase={"image_size": IMAGE_SIZE, "max_sequence_length": MAX_SEQUENCE_LENGTH})
    return pipeline


@pytest.mark.parametrize("guidance_embeds", [True, False], ids=["dev", "schnell"])
def test_flux_family_erases_a_prompt_and_writes_a_plain_diffusers_folder(tmp_path, guidance_embeds):
    pipeline = flux_pipeline(tmp_path, guidance_embeds)
    record = check_family(pipeline, tmp_path, "transformer", "flow_matching",
                          sample_kwargs={**SAMPLE_KWARGS, "guidance_scale": 3.5})
    assert record["backbone"] == "flux"
    # the dev-like model is trained and sampled at its embedded guidance, recorded in run.json and the folder
    expected = 3.5 if guidance_embeds else None
    assert record["training_target"]["distilled_guidance"] == expected
    saved = json.loads((tmp_path / "erased" / "model_index.json").read_text())["_erase"]
    assert saved["distilled_guidance"] == expected and saved["guidance_scale"] == 1.0
    assert saved["image_size"] == IMAGE_SIZE


def attention_parameter(name: str) -> bool:
    """The rule, restated: parameters of the `attn` module of a double-stream (transformer_blocks.i) or single-stream
    (single_transformer_blocks.i) block; both attend over text and image tokens together."""
    parts = name.split(".")
    return parts[0] in ("transformer_blocks", "single_transformer_blocks") and parts[2] == "attn"


def test_xattn_trains_only_the_attention_of_the_blocks(tmp_path):
    from erase.pipelines.flux import FluxAdapter

    pipeline = flux_pipeline(tmp_path, guidance_embeds=True)
    adapter = FluxAdapter.from_pipeline(pipeline, copy.deepcopy(pipeline.transformer),
                                        dict(pipeline.config["_erase"]), train_params="xattn")
    flags = {name: p.requires_grad for name, p in adapter.denoiser.named_parameters()}
    assert flags == {name: attention_parameter(name) for name in flags}
    assert any(name.startswith("single_transformer_blocks.") for name, on in flags.items() if on)
    adapter.select_trainable("noxattn")
    frozen = ("time_text_embed.", "context_embedder.", "norm_out.", "proj_out.")
    for name, p in adapter.denoiser.named_parameters():
        assert p.requires_grad == (not attention_parameter(name) and not name.startswith(frozen)), name

    before = state(pipeline.transformer)
    erased, record = erase.unlearn(pipeline, forget=FORGET, remain=[RETAIN], train_params="xattn", **FAST)
    assert record["train_params"] == "xattn"
    after = state(erased.transformer)
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all(attention_parameter(name) for name in moved), moved


def test_latents_are_unpacked_and_shifted_as_the_pipeline_decodes(tmp_path):
    """x0 space: (z - shift) * scale, (N, C, h, w); model_output keeps that shape; sampling follows the pipeline's
    token count for the dynamic shift."""
    from erase.pipelines.flux import FluxAdapter

    pipeline = flux_pipeline(tmp_path, guidance_embeds=True)
    adapter = FluxAdapter.from_pipeline(pipeline, pipeline.transformer, {"image_size": IMAGE_SIZE,
                                                                         "max_sequence_length": 8}, train_params=None)
    assert adapter.latent_shape == (4, 8, 8) and adapter.image_seq_len == 16 and adapter.image_shape == (3, 16, 16)
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    torch.manual_seed(0)
    latents = adapter.encode(images)
    torch.manual_seed(0)
    z = pipeline.vae.encode(images).latent_dist.sample()
    assert torch.allclose(latents, (z - 0.1159) * 0.3611, atol=1e-6)
    ids = adapter.register_prompts(["a cat", "a dog"])
    assert adapter.embeddings["prompt_embeds"].shape == (3, 8, 32) and adapter.embeddings["pooled"].shape == (3, 32)
    output = adapter.model_output(latents, torch.tensor([500.0, 900.0]), ids)
    assert output.shape == latents.shape
    guided = adapter.guided_output(latents, torch.tensor([500.0, 900.0]), ids, guidance_scale=2.0)
    assert guided.shape == latents.shape and not torch.allclose(guided, output)


@pytest.mark.parametrize("guidance_embeds", [True, False], ids=["dev", "schnell"])
def test_erase_samples_what_the_flux_pipeline_samples(tmp_path, guidance_embeds):
    """Same noise, same steps: erase's sampler (unpacked latents, its own prompt table, the distilled guidance, CFG
    scale 1, the dynamic shift from image_seq_len) gives FluxPipeline's images."""
    from erase.pipelines.flux import FluxAdapter

    pipeline = flux_pipeline(tmp_path, guidance_embeds)
    adapter = FluxAdapter.from_pipeline(pipeline, pipeline.transformer, dict(pipeline.config["_erase"]),
                                        train_params=None)
    ours = adapter.sample([FORGET, RETAIN], num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    theirs = pipeline([FORGET, RETAIN], num_inference_steps=3, guidance_scale=3.5, output_type="pt",
                      generator=torch.Generator().manual_seed(0), **SAMPLE_KWARGS).images
    assert ours.shape == theirs.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.allclose(ours, theirs, atol=1e-5)
