"""LTXTextToVideoPipeline: diffusers' LTXPipeline on compiled engines.

As diffusers does: prompts are tokenized to ``max_sequence_length`` and encoded with the
padding attended (LTXPipeline passes T5 no mask), the mask reaching the transformer's
cross-attention only (which therefore gets only the tokens up to the last one attended:
``drop_unattended_tokens``); latents are drawn [V, C, F, h, w] from the request's generator;
the flow schedule is the folder's FlowMatchEuler on ``linspace(1, 1/n, n)`` shifted by
``mu`` from the latent token count; after the loop the latents are denormalised and,
for a timestep-conditioned VAE, blended with fresh noise at ``decode_noise_scale`` and
decoded at ``decode_timestep``. Unlike diffusers, the prompt and negative prompt are
encoded in one call and both guidance halves run in one transformer call per step;
latents stay unpacked ([V, C, F, h, w]) between steps (the flow step is elementwise,
so the packing is the transformer graph's).
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import VidrtError
from ...loop import Conditioning, denoise
from ...pipeline_base import (
    BasePipeline,
    StageTimings,
    VideoPipelineOutput,
    check_finite,
    check_request,
    check_text_length,
    initial_latents,
    load_tokenizer,
)
from ...prompts import PromptRequest, cut_text_length
from ...samplers import draw_noise, make_sampler


class LTXTextToVideoPipeline(BasePipeline):
    """LTX-Video text-to-video generation on compiled engines; built by
    ``VideoPipeline.from_pretrained`` from an LTXPipeline folder."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.tokenizer = load_tokenizer(model.folder)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 704,
        num_frames: int = 161,
        frame_rate: int = 25,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
        guidance_rescale: float = 0.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        decode_timestep: float | list[float] = 0.0,
        decode_noise_scale: float | list[float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int = 128,
        progress: bool = False,
    ):
        """Generates videos from text, as diffusers' LTXPipeline does.

        Args mirror LTXPipeline.__call__, with its defaults. ``guidance_scale`` <= 1 turns
        guidance off; ``guidance_rescale`` > 0 rescales the guided prediction towards the
        conditional one's standard deviation, as diffusers does (0: off).
        ``latents`` are diffusers' packed [videos, F*h*w, C]; ``decode_timestep`` and
        ``decode_noise_scale`` (default: the timestep) apply to a timestep-conditioned VAE,
        one value or one per video. ``prompt_embeds`` / ``negative_prompt_embeds`` ([prompts,
        L, D], with their [prompts, L] attention masks, as LTXPipeline's encode_prompt
        returns them) stand in for ``prompt`` / ``negative_prompt``; both halves then need
        one length L (they run in one batch, as in diffusers). ``callback_on_step_end`` runs
        after each step as in diffusers, on the packed [videos, F*h*w, C] latents.

        Returns:
            VideoPipelineOutput: frames as lists of PIL images (pil), [B, F, H, W, 3] (np),
            [B, F, 3, H, W] (pt) or packed latents (latent).

        Raises:
            VidrtError: invalid arguments (frames not 8k+1, sizes not multiples of 32, ...)
                or a shape outside the engines' ranges.
        """
        return self._serve({k: v for k, v in locals().items() if k != "self"})

    def _generate(self, prompt, negative_prompt, height, width, num_frames, frame_rate, num_inference_steps,
                  guidance_scale, guidance_rescale, num_videos_per_prompt, generator, latents, prompt_embeds,
                  prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask, decode_timestep,
                  decode_noise_scale, output_type, return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs,
                  max_sequence_length, progress, image=None):
        start = self._now()
        m = self.model
        text = PromptRequest.read(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, text_dim=m.text_dim,
                                  prompt_attention_mask=prompt_attention_mask,
                                  negative_prompt_attention_mask=negative_prompt_attention_mask, masked=True)
        check_request(height, width, num_frames, num_inference_steps, 1, num_videos_per_prompt, output_type, generator)
        check_finite(guidance_scale=guidance_scale, frame_rate=frame_rate, guidance_rescale=guidance_rescale)
        if frame_rate <= 0:
            raise VidrtError(f"frame_rate={frame_rate!r}: must be positive (LTX-Video's default is 25)")
        max_sequence_length = check_text_length(max_sequence_length, m.max_text_length)
        videos = text.count * num_videos_per_prompt
        if isinstance(generator, list) and len(generator) != videos:
            raise VidrtError(f"{len(generator)} generators for {videos} videos; pass one per video, or a single generator")
        decode_t, decode_scale = _decode_values(decode_timestep, decode_noise_scale, videos)
        do_cfg = guidance_scale > 1.0
        m.check_ranges(videos, do_cfg, num_frames, height, width,
                       text_length=text.given_length() or max_sequence_length)
        s, k = m.vae_scale_factor, m.temporal_factor
        grid = (m.latent_frames(num_frames), height // s, width // s)
        sampler = self._sampler(num_inference_steps, int(np.prod(grid)))
        self.timings = StageTimings()

        embeds, mask = text.states(lambda texts: self._encode_unmasked(texts, max_sequence_length), do_cfg,
                                   num_videos_per_prompt, self.device)
        embeds, mask = drop_unattended_tokens(embeds, mask)
        scale = torch.tensor([k / frame_rate, s, s], dtype=torch.float32, device=self.device)
        shape = (videos, m.latent_channels, *grid)
        latents = _unpacked(latents, shape)
        if image is not None and latents is None:
            latents = self._image_latents(image, shape, generator, height, width, num_videos_per_prompt)
        else:
            latents = initial_latents(shape, latents, generator, sampler.init_noise_sigma).to(self.device)
        conditioning_mask = torch.zeros(grid[0], dtype=torch.int64, device=self.device)
        keep = None
        if image is not None:  # the image's latent frame conditions the video and is held, not denoised
            conditioning_mask[0] = 1
            keep = (1 - conditioning_mask).to(torch.float32).view(1, 1, -1, 1, 1)
        cond = Conditioning({"encoder_hidden_states": embeds, "encoder_attention_mask": mask,
                             "rope_interpolation_scale": scale, "conditioning_mask": conditioning_mask},
                            channel_axis=1, keep=keep)
        guidance = torch.full((1, 1, 1, 1, 1), float(guidance_scale), device=self.device) if do_cfg else None
        latents = denoise(self.engines["transformer"], sampler, latents, cond, guidance, generator,
                          self.timings.unet_steps, progress=progress, state=self.loop_state, control=self._control,
                          guidance_rescale=float(guidance_rescale) if do_cfg and guidance_rescale > 0 else 0.0,
                          on_step=self.step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, sampler,
                                                     public=_packed, private=lambda x: _unpacked(x, shape)))
        if output_type == "latent":
            frames = _packed(latents)
        else:
            frames = self.video_processor.postprocess_video(video=self._decode(latents, generator, decode_t, decode_scale),
                                                            output_type=output_type)
        self.timings.end_to_end = self._now() - start
        return VideoPipelineOutput(frames=frames, timings=self.timings) if return_dict else frames

    def _sampler(self, steps: int, tokens: int):
        """The folder's flow schedule as LTXPipeline sets it: sigmas linspace(1, 1/n, n),
        shifted by ``mu`` (calculate_shift of the latent token count)."""
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

        cfg = self.model.scheduler
        sampler = make_sampler(self.sampler_name, cfg)
        mu = calculate_shift(tokens, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        sampler.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / max(steps, 1), steps), mu=mu)
        return sampler

    def _decode(self, latents, generator, decode_t, decode_scale) -> torch.Tensor:
        """LTXPipeline's decode, one decoder call per video: the graph denormalises the
        latents and, for a timestep-conditioned VAE, blends in noise drawn here from the
        request's generator after the loop, as diffusers draws it. Returns [V, 3, F, H, W]."""
        vae = self.engines["vae_decoder"]
        feeds = {"latents": latents}
        if self.model.timestep_conditioning:
            feeds |= {"noise": draw_noise(latents.shape, generator).to(self.device),
                      "timestep": torch.tensor(decode_t, dtype=torch.float32, device=self.device),
                      "noise_scale": torch.tensor(decode_scale, dtype=torch.float32, device=self.device)}
        shared = {}
        if self.model.decoder_noise_upscales:  # after the decode noise, as diffusers draws them
            shared["injected_noise"] = self._injected_noise(latents.shape[-2:])
        t0 = self._now()
        out = None
        for i in range(len(latents)):
            frames = vae(**{n: f[i : i + 1].contiguous() for n, f in feeds.items()}, **shared)["frames"]
            if out is None:
                out = torch.empty((len(latents), *frames.shape[1:]), device=self.device)
            out[i] = frames[0]  # copied at once: the engine reuses its output buffer on the next call
        self.timings.vae_decoder = self._now() - t0
        return out

    def _injected_noise(self, grid) -> torch.Tensor:
        """The noise maps LTX-Video 0.9.1's decoder injects, drawn as diffusers draws them:
        from torch's global generator (its decode takes none), one [H, W] map per draw in
        the decoder's order, the same for every video of the batch (diffusers decodes the
        batch in one call and broadcasts each map). Flattened into one vector."""
        h, w = grid
        maps = [torch.randn((h * u, w * u), dtype=torch.float32).flatten() for u in self.model.decoder_noise_upscales]
        return torch.cat(maps).to(self.device)


def drop_unattended_tokens(states: torch.Tensor, mask: torch.Tensor):
    """Text states [N, L, D] and masks [N, L] cut after the last token any row attends
    (rounded up: vidrt.prompts.cut_text_length).

    The cut changes no number diffusers computes: LTX's cross-attention adds -10000 to a
    masked token's logit, so its softmax weight is exactly 0 in fp32 and bf16 (exp
    underflows) and a token no row attends adds nothing. A row that attends nothing is
    softmaxed over every token (all shifted alike); then nothing is cut. Short prompts
    padded to max_sequence_length (LTXPipeline's 128) thus skip most of the transformer's
    cross-attention work.
    """
    attended = mask.bool()
    if not bool(attended.any(dim=1).all()):
        return states, mask
    last = int(attended.any(dim=0).nonzero().max()) + 1
    length = cut_text_length(last, mask.shape[1])
    return states[:, :length].contiguous(), mask[:, :length].contiguous()


def _decode_values(decode_timestep, decode_noise_scale, videos: int) -> tuple[list[float], list[float]]:
    """Per-video decode timestep and noise scale (the scale defaults to the timestep, as in
    diffusers); one value or a list of one per video."""

    def per_video(value, name):
        values = list(value) if isinstance(value, (list, tuple)) else [value] * videos
        if len(values) != videos:
            raise VidrtError(f"{name}: {len(values)} values for {videos} videos; pass one, or one per video")
        check_finite(**{f"{name}[{i}]": v for i, v in enumerate(values)})
        return [float(v) for v in values]

    timesteps = per_video(decode_timestep, "decode_timestep")
    return timesteps, timesteps if decode_noise_scale is None else per_video(decode_noise_scale, "decode_noise_scale")


def _packed(latents: torch.Tensor) -> torch.Tensor:
    """[V, C, F, h, w] latents as diffusers' packed [V, F*h*w, C] (a view)."""
    return latents.flatten(2).transpose(1, 2)


def _unpacked(latents, shape):
    """User latents in diffusers' packed layout [V, F*h*w, C] as [V, C, F, h, w]."""
    if latents is None:
        return None
    if isinstance(latents, np.ndarray):
        latents = torch.from_numpy(np.ascontiguousarray(latents))
    v, c, *grid = shape
    packed = (v, int(np.prod(grid)), c)
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != packed:
        got = list(latents.shape) if hasattr(latents, "shape") else type(latents).__name__
        raise VidrtError(f"latents: LTX-Video takes diffusers' packed latents of shape {list(packed)}, got {got}")
    return latents.transpose(1, 2).reshape(shape)


class LTXImageToVideoPipeline(LTXTextToVideoPipeline):
    """LTX-Video image-to-video generation on compiled engines (diffusers'
    LTXImageToVideoPipeline): the image's latent is the first latent frame, kept through
    the loop; its tokens see timestep 0."""

    @torch.no_grad()
    def __call__(self, image, prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None,
                 height: int = 512, width: int = 704, num_frames: int = 161, frame_rate: int = 25,
                 num_inference_steps: int = 50, guidance_scale: float = 3.0, guidance_rescale: float = 0.0,
                 num_videos_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                 prompt_attention_mask=None, negative_prompt_embeds=None, negative_prompt_attention_mask=None,
                 decode_timestep=0.0, decode_noise_scale=None, output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] | None = None,
                 max_sequence_length: int = 128, progress: bool = False):
        """Generates videos from an image and text, as diffusers' LTXImageToVideoPipeline does.

        Args mirror LTXImageToVideoPipeline.__call__ and LTXTextToVideoPipeline's; ``image``
        is one image (every video starts from it) or one per prompt (PIL, NumPy or a
        [3, H, W] tensor in [0, 1]), resized to height x width as diffusers does.

        Raises:
            VidrtError: as LTXTextToVideoPipeline, or a missing or unreadable image.
        """
        if image is None:
            raise VidrtError("image-to-video needs an image: pass image=PIL.Image (or --image PATH)")
        return self._serve({k: v for k, v in locals().items() if k != "self"})

    def _image_latents(self, image, shape, generator, height, width, per_prompt: int) -> torch.Tensor:
        """LTXImageToVideoPipeline.prepare_latents: each image encoded (its latent sampled
        from the request's generator, image by image), normalised, then noise drawn for the
        whole clip; frame 0 is the image's latent, the others noise."""
        first = self._sample_image_latents(image, shape[0], per_prompt, generator, height, width)
        latents = draw_noise(shape, generator).to(self.device)
        latents[:, :, :1] = first
        return latents
