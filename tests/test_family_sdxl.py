"""Stable Diffusion XL (epsilon, and v_prediction): the family acceptance on a tiny random StableDiffusionXLPipeline,
the prompt encoding and null condition against the pipeline's own, and ESD-x's parameter rule."""

import pytest
import torch

from erase.pipelines import load_adapter
from tests.conftest import write_tiny_clip_tokenizer
from tests.family_checks import check_family

IMAGE_SIZE = 16  # pixels; the tiny VAE halves it, so the UNet works on 8 x 8 latents


def sdxl_pipeline(tmp_path, prediction_type: str = "epsilon", force_zeros_for_empty_prompt: bool = True):
    """A seeded random-init StableDiffusionXLPipeline built from configs (after diffusers' own SDXL fast tests)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from erase.pipelines.latent import tiny_vae

    torch.manual_seed(0)
    folder = write_tiny_clip_tokenizer(tmp_path / "tok")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    tokenizer_2 = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=16, projection_dim=32,
                                 bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text_encoder, text_encoder_2 = CLIPTextModel(text_config), CLIPTextModelWithProjection(text_config)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        cross_attention_dim=64,  # both encoders' hidden states concatenated: 32 + 32
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,  # pooled (32) + 6 size ids * 8
        norm_num_groups=8,
    )
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
                                       prediction_type=prediction_type)  # SDXL base's scheduler
    return StableDiffusionXLPipeline(vae=tiny_vae(3, 4, (16, 32)), text_encoder=text_encoder,
                                     text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                                     unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)


def adapter_of(pipeline, train_params="full"):
    from erase.pipelines import BACKBONES, backbone_of_pipeline

    assert backbone_of_pipeline(pipeline) == "sdxl"
    return BACKBONES["sdxl"].from_pipeline(pipeline, pipeline.unet, {}, train_params=train_params)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sdxl_family_erases_a_prompt_and_writes_a_plain_diffusers_folder(tmp_path, prediction_type):
    record = check_family(sdxl_pipeline(tmp_path, prediction_type), tmp_path, "unet", prediction_type)
    assert record["backbone"] == "sdxl"
    assert record["preset"]["name"] == "stable_diffusion"  # SDXL runs under the Stable Diffusion method presets


@pytest.mark.parametrize("force_zeros", [True, False])
def test_sdxl_conditions_the_unet_as_the_pipeline_does(tmp_path, force_zeros):
    """Prompt embeddings, pooled embeddings and size ids are the pipeline's; the null condition is the negative the
    pipeline uses when given none."""
    pipeline = sdxl_pipeline(tmp_path, force_zeros_for_empty_prompt=force_zeros)
    adapter = adapter_of(pipeline)
    ids = adapter.register_prompts(["a photo of a cat", "a dog"])
    embeds, negative, pooled, negative_pooled = pipeline.encode_prompt(["a photo of a cat", "a dog"], device="cpu")
    assert torch.equal(adapter.embeddings["prompt_embeds"][ids], embeds)  # (2, 16, 64)
    assert torch.equal(adapter.embeddings["pooled"][ids], pooled)  # (2, 32)
    null = adapter.embed(adapter.null_condition(2))
    # (the table encoded "" alone, the pipeline in a batch of two: equal up to float rounding)
    assert torch.allclose(null["prompt_embeds"], negative, atol=1e-5)
    assert torch.allclose(null["pooled"], negative_pooled, atol=1e-5)
    assert bool((negative == 0).all()) is force_zeros
    pipeline.save_pretrained(tmp_path / "saved")  # a folder keeps the setting in model_index.json
    assert load_adapter(tmp_path / "saved").force_zeros_for_empty_prompt is force_zeros

    # the UNet call: the pipeline's size ids (H, W, 0, 0, H, W) at the native resolution
    time_ids = pipeline._get_add_time_ids((IMAGE_SIZE, IMAGE_SIZE), (0, 0), (IMAGE_SIZE, IMAGE_SIZE), torch.float32,
                                          text_encoder_projection_dim=32)
    assert time_ids.tolist() == [[IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE]]
    latent = IMAGE_SIZE // 2
    assert adapter.image_shape == (3, IMAGE_SIZE, IMAGE_SIZE) and adapter.latent_shape == (4, latent, latent)
    torch.manual_seed(1)
    x_t, t = torch.randn(2, 4, latent, latent), torch.tensor([10, 900])
    with torch.no_grad():
        expected = pipeline.unet(x_t, t, encoder_hidden_states=embeds,
                                 added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.repeat(2, 1)}).sample
        assert torch.allclose(adapter.model_output(x_t, t, ids), expected, atol=1e-6)


def test_sdxl_xattn_trains_only_the_cross_attention(tmp_path):
    """ESD-x's rule, stated here: exactly the parameters of the UNet's cross-attention layers (`attn2`, which read
    the text) train; self-attention, convolutions, and the time and pooled-text embeddings stay frozen."""
    pipeline = sdxl_pipeline(tmp_path)
    adapter = adapter_of(pipeline, train_params="xattn")
    names = dict(adapter.denoiser.named_parameters())
    trained = {name for name, parameter in names.items() if parameter.requires_grad}
    cross_attention = {name for name in names if ".attn2." in name}
    assert trained == cross_attention and trained
    assert not any(name.startswith(("add_embedding", "time_embedding")) or ".attn1." in name for name in trained)
    assert not any(p.requires_grad for p in adapter.text_encoder.parameters())
    assert not any(p.requires_grad for p in adapter.text_encoder_2.parameters())

    # ESD-u (noxattn) is the complement minus the time / text-time embeddings and output layers
    adapter.select_trainable("noxattn")
    trained = {name for name, parameter in adapter.denoiser.named_parameters() if parameter.requires_grad}
    assert not trained & cross_attention
    kept = ("add_embedding", "time_embedding", "conv_out", "conv_norm_out")
    assert not any(name.startswith(kept) for name in trained)
    assert any(".attn1." in name for name in trained)
