"""Calibration inputs of the CogVideoX transformer for the quantization stage.

What inference feeds it: noised latents ``sqrt(a_t)·x0 + sqrt(1 - a_t)·noise`` at each of the
folder's calibrated timesteps (a_t from CogVideoX's SNR-shifted schedule), in diffusers'
[B, F, C, h, w] layout, and text states of real prompts through the folder's own T5 and
tokenizer at the transformer's text length, with guidance's unconditional half (the empty
negative prompt) stacked in the batch; for image to video the clean first latent frame as
the image's, and rotary tables for the grid. CogVideoX latents are scaled to about unit
variance, so x0 is unit-variance noise (a random-weight model has no clean latents).
"""

from __future__ import annotations

import torch

from vidrt.samplers import make_sampler

CALIB_PROMPTS = 4
CALIB_FRAMES = 9  # 3 latent frames (CogVideoX 1.5 denoises 4: its frames go in pairs)

# --keep-high-precision's default: the patch embedding (video and text projections), the
# time embedding and the output projection, as for Wan and LTX-Video.
TRANSFORMER_KEEP = ("*patch_embed*", "*time_embedding*", "*proj_out*")


def transformer_calibration_batches(model, cfg) -> list[dict[str, torch.Tensor]]:
    """Transformer inputs (guidance batch of 2) per calibration prompt and timestep."""
    from transformers import AutoTokenizer

    from vidrt.families.cogvideox.pipeline import rotary_tables
    from vidrt.families.t2v.presets import PROMPT_CORPUS

    from .wan_calibration import encode_text

    sampler = make_sampler(None, model.scheduler)
    sampler.set_timesteps(cfg.calib_steps)
    alphas = sampler.scheduler.alphas_cumprod.double()
    tokenizer = AutoTokenizer.from_pretrained(model.folder / "tokenizer")
    prompts = [PROMPT_CORPUS[(cfg.seed + i) % len(PROMPT_CORPUS)] for i in range(CALIB_PROMPTS)]
    tok = tokenizer(["", *prompts], padding="max_length", max_length=model.default_text_length, truncation=True,
                    add_special_tokens=True, return_tensors="pt")
    with torch.no_grad():  # no mask: CogVideoX's T5 attends the padding
        states = encode_text(model, tok.input_ids, None)
    s = model.vae_scale_factor
    if model.learned_positions:  # the table's size and frames only
        frames, height, width = model.latent_frames(model.sample_size[0]), *model.sample_size[1:]
    else:
        frames, height = model.loop_frames(CALIB_FRAMES), cfg.calib_size or 2 * model.pixel_multiple
        width = height
    shape = (1, frames, model.latent_channels, height // s, width // s)
    extra = dict(zip(("rotary_cos", "rotary_sin"), rotary_tables(model, height, width, frames))) if model.rotary else {}
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = []
    for k in range(len(prompts)):
        x0 = torch.randn(shape, generator=gen)
        text = torch.cat([states[:1], states[k + 1 : k + 2]])
        image = {"image_latents": torch.cat([x0[:, 0], x0[:, 0]])} if model.image_to_video else {}
        for t in sampler.timesteps.tolist():
            a = float(alphas[int(t)])
            x = a**0.5 * x0 + (1 - a) ** 0.5 * torch.randn(shape, generator=gen)
            batches.append({"sample": torch.cat([x, x]), "timestep": torch.tensor([float(t)]),
                            "encoder_hidden_states": text, **image, **extra})
    return batches
