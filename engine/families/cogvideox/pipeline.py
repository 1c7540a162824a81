"""CogVideoXTextToVideoPipeline: diffusers' CogVideoXPipeline on compiled engines.

As diffusers does: prompts are tokenized to ``max_sequence_length`` and encoded with the
padding attended (CogVideoX passes T5 no mask); latents are drawn [V, F, C, h, w] from the
request's generator; the folder's scheduler sets the timesteps (CogVideoX's DDIM with its
SNR shift, or its DPM solver, which also takes the previous step's prediction); rotary
tables, where the transformer has them, come from diffusers' own functions for the
request's grid; the latents are decoded in diffusers' chunks (see the family's model).
Unlike diffusers, the prompt and negative prompt are encoded in one call, both guidance
halves run in one transformer call per step, and ``num_videos_per_prompt`` is honoured
(diffusers' CogVideoX pipelines set it to 1 whatever is passed).
"""

from __future__ import annotations

import math

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
from ...prompts import PromptRequest
from ...samplers import make_sampler
from .model import FIRST_CHUNK

# diffusers' CogVideoX pipelines hand ``eta`` to these schedulers' ``step``, which ignores it
ETA_IGNORED = ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")


class CogVideoXTextToVideoPipeline(BasePipeline):
    """CogVideoX text-to-video generation on compiled engines; built by
    ``VideoPipeline.from_pretrained`` from a CogVideoXPipeline folder."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.tokenizer = load_tokenizer(model.folder)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = 49,
        num_inference_steps: int = 50,
        guidance_scale: float = 6.0,
        use_dynamic_cfg: bool = False,
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int | None = None,
        progress: bool = False,
    ):
        """Generates videos from text, as diffusers' CogVideoXPipeline does.

        Args mirror CogVideoXPipeline.__call__, with its defaults: height and width default
        to the transformer's sample size (480x720 for CogVideoX), ``max_sequence_length``
        to its text length (226). ``guidance_scale`` <= 1 turns guidance off;
        ``use_dynamic_cfg`` rises the scale along the schedule as diffusers does; ``eta``
        changes nothing under CogVideoX's own DDIM and DPM schedulers (their ``step``
        takes it and ignores it) and must be 0 under any other. ``prompt_embeds`` /
        ``negative_prompt_embeds`` ([prompts, L, D], as CogVideoXPipeline's encode_prompt
        returns them) stand in for ``prompt`` / ``negative_prompt``. ``callback_on_step_end``
        runs after each step as in diffusers. Latents are [videos, (num_frames - 1) / 4 + 1, C, h, w].

        Returns:
            VideoPipelineOutput: frames as lists of PIL images (pil), [B, F, H, W, 3] (np),
            [B, F, 3, H, W] (pt) or latents (latent).

        Raises:
            VidrtError: invalid arguments (frames not 4k+1, sizes not multiples of 16, ...)
                or a shape outside the engines' ranges.
        """
        return self._serve({k: v for k, v in locals().items() if k != "self"})

    def _generate(self, prompt, negative_prompt, height, width, num_frames, num_inference_steps, guidance_scale,
                  use_dynamic_cfg, num_videos_per_prompt, eta, generator, latents, prompt_embeds, negative_prompt_embeds,
                  output_type, return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs,
                  max_sequence_length, progress, image=None):
        start = self._now()
        m = self.model
        height = m.default_size[0] if height is None else height
        width = m.default_size[1] if width is None else width
        length = m.default_text_length if max_sequence_length is None else max_sequence_length
        text = PromptRequest.read(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, text_dim=m.text_dim)
        check_request(height, width, num_frames, num_inference_steps, 1, num_videos_per_prompt, output_type, generator)
        check_finite(guidance_scale=guidance_scale, eta=eta)
        scheduler = m.scheduler.get("_class_name")
        if eta != 0.0 and scheduler not in ETA_IGNORED:
            raise VidrtError(f"eta={eta!r}: vidrt steps {scheduler} at eta 0 (diffusers' default); pass 0.0")
        length = check_text_length(length, m.max_text_length)
        videos = text.count * num_videos_per_prompt
        if isinstance(generator, list) and len(generator) != videos:
            raise VidrtError(f"{len(generator)} generators for {videos} videos; pass one per video, or a single generator")
        do_cfg = guidance_scale > 1.0
        m.check_ranges(videos, do_cfg, num_frames, height, width, text_length=text.given_length() or length)
        sampler = make_sampler(self.sampler_name, m.scheduler)
        sampler.set_timesteps(num_inference_steps)
        self.timings = StageTimings()

        embeds, _ = text.states(lambda texts: (self._encode_unmasked(texts, length)[0], None), do_cfg,
                                num_videos_per_prompt, self.device)
        s = m.vae_scale_factor
        shape = (videos, m.loop_frames(num_frames), m.latent_channels, height // s, width // s)
        inputs = {"encoder_hidden_states": embeds}
        if image is not None:
            first = self._image_latents(image, shape, generator, height, width, num_videos_per_prompt)
            inputs["image_latents"] = torch.cat([first, first]) if do_cfg else first
        latents = initial_latents(shape, latents, generator, sampler.init_noise_sigma).to(self.device)
        if m.rotary:
            inputs["rotary_cos"], inputs["rotary_sin"] = rotary_tables(m, height, width, shape[1], self.device)
        guidance = torch.full((1, 1, 1, 1, 1), float(guidance_scale), device=self.device) if do_cfg else None
        schedule = _dynamic_guidance(guidance_scale, sampler, num_inference_steps) if do_cfg and use_dynamic_cfg else None
        latents = denoise(self.engines["transformer"], sampler, latents, Conditioning(inputs, channel_axis=2), guidance,
                          generator, self.timings.unet_steps, progress=progress, state=self.loop_state,
                          guidance_per_step=schedule, control=self._control,
                          on_step=self.step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, sampler))
        if output_type == "latent":
            frames = latents  # CogVideoX 1.5's padding frames included, as from diffusers
        else:
            padding = shape[1] - m.latent_frames(num_frames)  # in front (CogVideoX 1.5), dropped as diffusers does
            frames = self._decode(latents[:, padding:])
            frames = self.video_processor.postprocess_video(video=frames, output_type=output_type)
        self.timings.end_to_end = self._now() - start
        return VideoPipelineOutput(frames=frames, timings=self.timings) if return_dict else frames

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE decoder in diffusers' chunks, video by video: an odd latent count starts
        with latent frames 0..2 (2k+1 frames and the caches), an even one with a pair
        flagged ``first``; each next pair gives 2k frames from the caches (so an even count
        F gives k*F frames, not k*(F-1)+1: 16 for 13 requested, as in diffusers). One latent
        frame (diffusers decodes it alone, to one frame) is decoded as a first pair of two
        copies of it, which gives 2k copies of that frame: each convolution's window holds
        copies only, GroupNorm's statistics over copies are the frame's own, and the
        upsampling is nearest-neighbour (2k frames' work for one; no engine of its own to
        build for such a rare request). Returns [V, 3, T, H, W] in [-1, 1]."""
        t0 = self._now()
        head, chunk = self.engines["vae_decoder"], self.engines["vae_decoder_chunk"]
        s, k = self.model.vae_scale_factor, self.model.temporal_factor
        single = latents.shape[1] == 1
        if single:
            latents = latents.expand(-1, 2, -1, -1, -1)
        v, t, _, h, w = latents.shape
        start = FIRST_CHUNK if t % 2 else 0  # latent frames the 3-frame chunk decodes
        out = torch.empty((v, 3, k * (t - 1) + 1 if start else k * t, h * s, w * s), device=self.device)
        names = [n for n in head.spec.output_names if n != "frames"]
        # Two sets of caches, read by one call while the next is written: an engine never
        # writes the tensors it reads. The first pair of an even count reads zeros it ignores.
        shapes = head.spec.output_shapes({"B": 1, "h": h, "w": w})
        sets = [{n: torch.zeros(shapes[n], device=self.device) for n in names} for _ in range(2)]
        frames = torch.empty((1, 3, 2 * k, h * s, w * s), device=self.device)
        flags = [torch.tensor([f], dtype=torch.int64, device=self.device) for f in (0, 1)]
        for i in range(v):
            caches, done = sets[1], 0  # done: frames written so far
            if start:
                result = head(latents=latents[i : i + 1, :start].contiguous())
                done = (start - 1) * k + 1
                out[i, :, :done] = result["frames"][0]
                caches = {n: result[n] for n in names}
            for n, j in enumerate(range(start, t, 2)):
                written = sets[n % 2]
                chunk(latents=latents[i : i + 1, j : j + 2].contiguous(), first=flags[int(j == 0)],
                      **{name.replace("next_", ""): c for name, c in caches.items()}, out={"frames": frames, **written})
                out[i, :, done : done + 2 * k] = frames[0]
                done += 2 * k
                caches = written
        self.timings.vae_decoder = self._now() - t0
        return out[:, :, :1] if single else out


def rotary_tables(model, height: int, width: int, frames: int, device="cpu"):
    """CogVideoXPipeline._prepare_rotary_positional_embeddings for ``frames`` latent frames:
    diffusers' get_3d_rotary_pos_embed over the token grid cropped and resized into the
    transformer's sample grid (CogVideoX 1.0), or sliced out of it, one position per pair
    of frames (1.5). Returns cos, sin: [tokens, head_dim]."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    t, p, s, pt = model.transformer, model.patch_size, model.vae_scale_factor, model.patch_size_t
    grid = (height // (s * p), width // (s * p))
    base = (int(t.get("sample_height", 60)) // p, int(t.get("sample_width", 90)) // p)
    head = int(t.get("attention_head_dim", 64))
    if pt == 1:
        crops = get_resize_crop_region_for_grid(grid, base[1], base[0])
        cos, sin = get_3d_rotary_pos_embed(embed_dim=head, crops_coords=crops, grid_size=grid, temporal_size=frames,
                                           device=device)
    else:
        cos, sin = get_3d_rotary_pos_embed(embed_dim=head, crops_coords=None, grid_size=grid,
                                           temporal_size=-(-frames // pt), grid_type="slice", max_size=base, device=device)
    return cos.to(torch.float32).contiguous(), sin.to(torch.float32).contiguous()


def _dynamic_guidance(scale: float, sampler, steps: int) -> list[float]:
    """CogVideoXPipeline's use_dynamic_cfg: step i guides at
    1 + scale * (1 - cos(pi * ((steps - t_i) / steps) ** 5)) / 2."""
    return [1 + scale * ((1 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2) for t in sampler.timesteps.tolist()]


class CogVideoXImageToVideoPipeline(CogVideoXTextToVideoPipeline):
    """CogVideoX image-to-video generation on compiled engines (diffusers'
    CogVideoXImageToVideoPipeline): the image's scaled latent is appended to every step's
    latents as extra channels of frame 0."""

    @torch.no_grad()
    def __call__(self, image, prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None,
                 height: int | None = None, width: int | None = None, num_frames: int = 49,
                 num_inference_steps: int = 50, guidance_scale: float = 6.0, use_dynamic_cfg: bool = False,
                 num_videos_per_prompt: int = 1, eta: float = 0.0, generator=None, latents=None,
                 prompt_embeds=None, negative_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] | None = None,
                 max_sequence_length: int | None = None, progress: bool = False):
        """Generates videos from an image and text, as diffusers' CogVideoXImageToVideoPipeline does.

        Args mirror CogVideoXImageToVideoPipeline.__call__ and CogVideoXTextToVideoPipeline's;
        ``image`` is one image (every video starts from it) or one per prompt (PIL, NumPy
        or a [3, H, W] tensor in [0, 1]), resized to height x width as diffusers does.

        Raises:
            VidrtError: as CogVideoXTextToVideoPipeline, or a missing image.
        """
        if image is None:
            raise VidrtError("image-to-video needs an image: pass image=PIL.Image (or --image PATH)")
        return self._serve({k: v for k, v in locals().items() if k != "self"})

    def _image_latents(self, image, shape, generator, height, width, per_prompt: int) -> torch.Tensor:
        """CogVideoXImageToVideoPipeline.prepare_latents: each image encoded, its latent
        sampled from the request's generator image by image (before the latents' noise)
        and scaled. Returns [V, C, h, w], each prompt's videos adjacent."""
        return self._sample_image_latents(image, shape[0], per_prompt, generator, height, width)[:, :, 0].contiguous()
