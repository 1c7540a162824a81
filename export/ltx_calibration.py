"""Calibration inputs of the LTX-Video transformer for the quantization stage.

As for Wan (export/wan_calibration.py): flow-matching latents ``(1 - sigma)·x0 + sigma·noise``
at each calibrated timestep of the folder's schedule (shifted as LTXPipeline shifts it
for the calibration size), and text states of real prompts through the folder's own T5
and tokenizer at LTXPipeline's max_sequence_length, with guidance's unconditional half
(the empty negative prompt) stacked in the batch. LTX latents are normalised
(latents_mean/std), so x0 is unit-variance noise.
"""

from __future__ import annotations

import numpy as np
import torch

from vidrt.samplers import make_sampler

CALIB_PROMPTS = 4
CALIB_LATENT_FRAMES = 2
TEXT_LENGTH = 128  # LTXPipeline's max_sequence_length

# --keep-high-precision's default: the patch embedding (proj_in), the time and caption
# embedders and the output projection, as for Wan.
TRANSFORMER_KEEP = ("*proj_in*", "*time_embed*", "*caption_projection*", "*proj_out*")


def transformer_calibration_batches(model, cfg) -> list[dict[str, torch.Tensor]]:
    """Transformer inputs (guidance batch of 2) per calibration prompt and timestep."""
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift
    from transformers import AutoTokenizer

    from vidrt.families.t2v.presets import PROMPT_CORPUS

    from .wan_calibration import encode_text, flow_batches

    side = (cfg.calib_size or 2 * model.pixel_multiple) // model.vae_scale_factor
    shape = (1, model.latent_channels, CALIB_LATENT_FRAMES, side, side)
    sched = model.scheduler
    sampler = make_sampler(None, sched)
    mu = calculate_shift(CALIB_LATENT_FRAMES * side * side, sched.get("base_image_seq_len", 256),
                         sched.get("max_image_seq_len", 4096), sched.get("base_shift", 0.5), sched.get("max_shift", 1.15))
    n = cfg.calib_steps
    sampler.set_timesteps(n, sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    tokenizer = AutoTokenizer.from_pretrained(model.folder / "tokenizer")
    prompts = [PROMPT_CORPUS[(cfg.seed + i) % len(PROMPT_CORPUS)] for i in range(CALIB_PROMPTS)]
    tok = tokenizer(["", *prompts], padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                    add_special_tokens=True, return_tensors="pt")
    with torch.no_grad():  # no mask: LTXPipeline's T5 attends the padding
        states = encode_text(model, tok.input_ids, None)
    mask = tok.attention_mask.to(torch.int64)
    s, k = model.vae_scale_factor, model.temporal_factor
    scale = torch.tensor([k / 25.0, s, s], dtype=torch.float32)  # LTXPipeline's default frame rate
    conditioning_mask = torch.zeros(CALIB_LATENT_FRAMES, dtype=torch.int64)
    return flow_batches(model, cfg, shape, sampler.timesteps.tolist(), len(prompts), lambda i: {
        "encoder_hidden_states": torch.cat([states[:1], states[i + 1 : i + 2]]),
        "encoder_attention_mask": torch.cat([mask[:1], mask[i + 1 : i + 2]]),
        "rope_interpolation_scale": scale,
        "conditioning_mask": conditioning_mask,
    })
