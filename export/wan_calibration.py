"""Calibration inputs of the Wan transformer(s) for the quantization stage.

What inference feeds the transformer: flow-matching latents ``(1 - sigma)·x0 + sigma·noise``
at each of the sampler's calibrated timesteps, and text states of real prompts (the
built-in prompt corpus through the folder's own text encoder and tokenizer, made as the
pipeline makes them) with guidance's unconditional half, the empty negative prompt,
stacked in the batch. Latents of a Wan VAE are normalised (latents_mean/std), so x0 is
unit-variance noise: a random-weight model has no clean latents of its own. Image to
video adds the image inputs the pipeline makes from the calibration images (the
synthetic set, or --calib-images): TI2V-5B's clean frame 0; Wan 2.1 I2V's and Wan 2.2
I2V-A14B's condition (the image and zero frames through the folder's VAE encoder, after
the frame mask) and Wan 2.1 I2V's CLIP states.
"""

from __future__ import annotations

import torch

from vidrt.samplers import make_sampler

CALIB_PROMPTS = 4  # prompts of the corpus calibrated on
CALIB_LATENT_FRAMES = 2  # 5 video frames


def transformer_calibration_batches(model, cfg) -> list[dict[str, torch.Tensor]]:
    """Transformer inputs (guidance batch of 2) per calibration prompt and timestep."""
    from transformers import AutoTokenizer

    from vidrt.families.t2v.presets import PROMPT_CORPUS
    from vidrt.families.wan.pipeline import collapse_padding, prompt_states
    sampler = make_sampler(None, model.scheduler)
    sampler.set_timesteps(cfg.calib_steps)
    tokenizer = AutoTokenizer.from_pretrained(model.folder / "tokenizer")
    prompts = [PROMPT_CORPUS[(cfg.seed + i) % len(PROMPT_CORPUS)] for i in range(CALIB_PROMPTS)]
    with torch.no_grad():
        states = prompt_states(lambda ids, mask: encode_text(model, ids, mask), tokenizer, ["", *prompts],
                               model.max_text_length)
    side = (cfg.calib_size or 2 * model.pixel_multiple) // model.vae_scale_factor
    shape = (1, model.latent_channels, CALIB_LATENT_FRAMES, side, side)
    images = image_conditions(model, cfg, CALIB_LATENT_FRAMES) if model.image_condition == "channels" else None

    def inputs(k):
        text = dict(zip(("encoder_hidden_states", "text_bias"),
                        collapse_padding(torch.cat([states[:1], states[k + 1 : k + 2]]))))
        image = {name: torch.cat([t, t]) for name, t in images[k % len(images)].items()} if images else {}
        return text | image

    return flow_batches(model, cfg, shape, sampler.timesteps.tolist(), len(prompts), inputs,
                        image=model.image_condition == "first-frame")


def image_conditions(model, cfg, latent_frames: int) -> list[dict[str, torch.Tensor]]:
    """For each calibration image, the transformer's image inputs as WanImageToVideoPipeline
    makes them without expand_timesteps: ``condition`` (the frame mask, then the image and
    zero frames through the VAE encoder, normalised) and, with an image encoder, the CLIP
    states ``image_embeds``; in torch, from the folder's own modules."""
    from diffusers.video_processor import VideoProcessor

    from vidrt.sources import load_torch_component

    from .graphs import component_graph
    from .quantize import calibration_images

    images, size = calibration_images(model, cfg)
    frames = model.temporal_factor * (latent_frames - 1) + 1
    vae = load_torch_component(model, "vae_encoder_first")
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    clip = processor = None
    if model.image_encoder is not None:
        from transformers import CLIPImageProcessor

        clip = component_graph("image_encoder", load_torch_component(model, "image_encoder"))
        processor = CLIPImageProcessor.from_pretrained(model.folder / "image_processor")
    out = []
    with torch.no_grad():
        for image in images:
            pixels = VideoProcessor(vae_scale_factor=model.vae_scale_factor).preprocess([image], height=size, width=size)
            clip_frames = torch.cat([pixels[:, :, None], pixels.new_zeros(1, 3, frames - 1, size, size)], dim=2)
            latents = (vae.encode(clip_frames.float()).latent_dist.mode() - mean) * inv_std
            mask = torch.zeros((1, model.temporal_factor, *latents.shape[2:]))
            mask[:, :, 0] = 1.0
            inputs = {"condition": torch.cat([mask, latents], dim=1)}
            if clip is not None:
                inputs["image_embeds"] = clip(processor(images=[image], return_tensors="pt").pixel_values)
            out.append(inputs)
    return out


def flow_batches(model, cfg, shape, timesteps: list[float], prompts: int, text_inputs,
                 image: bool = False) -> list[dict[str, torch.Tensor]]:
    """Per prompt k (a fresh x0) and timestep t: the guidance pair of flow latents
    ``(1 - sigma)·x0 + sigma·noise`` (sigma = t / num_train_timesteps), the timestep, and
    ``text_inputs(k)``: the prompt's states stacked after the empty negative's; with
    ``image`` (Wan TI2V-5B's image to video) x0's clean frame 0 as ``image_latents``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    train = int(model.scheduler.get("num_train_timesteps", 1000))
    batches = []
    for k in range(prompts):
        x0 = torch.randn(shape, generator=gen)
        for t in timesteps:
            sigma = t / train
            x = (1 - sigma) * x0 + sigma * torch.randn(shape, generator=gen)
            batch = {"sample": torch.cat([x, x]), "timestep": torch.tensor([float(t)]), **text_inputs(k)}
            if image:
                batch["image_latents"] = torch.cat([x0[:, :, 0], x0[:, :, 0]])
            batches.append(batch)
    return batches


# --keep-high-precision's default for the transformer: the patch embedding, the time and
# text embedders and the output projection (what the UNet's default keeps: its first and
# last layers and the embeddings).
TRANSFORMER_KEEP = ("*patch_embedding*", "*condition_embedder*", "*proj_out*")


def encode_text(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states of the folder's torch text encoder, part after part for a split
    one (WanModel.text_parts), each part loaded alone and freed before the next."""
    from vidrt.sources import load_torch_component

    from .graphs import component_graph

    states = ids
    for part in model.text_parts:
        graph = component_graph(part, load_torch_component(model, part))
        states = graph(states, mask)
        del graph
    return states
