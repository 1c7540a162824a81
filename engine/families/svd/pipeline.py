"""VideoPipeline: a drop-in for diffusers' StableVideoDiffusionPipeline on compiled engines.

The request flows as diffusers' does (same preprocessing, same random draws in
the same order) but conditioning is computed once, classifier-free guidance is
one batched UNet call, and every per-step tensor lives in a buffer allocated
once per request shape.
"""

from __future__ import annotations

import warnings

import PIL.Image
import torch

from ...errors import VidrtError
from ...imageops import clip_pixel_values
from ...loop import Conditioning, denoise
from ...pipeline_base import (
    BasePipeline,
    StageTimings,
    VideoPipelineOutput,
    check_finite,
    check_request,
    initial_latents,
)
from ...samplers import EulerEDMSampler, draw_noise, make_sampler
from ...video_io import to_rgb

class VideoPipeline(BasePipeline):
    """Image-to-video generation on compiled engines (see ``from_pretrained``, which
    returns a TextToVideoPipeline for text-to-video model folders)."""

    # -- request ---------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image,
        height: int = 576,
        width: int = 1024,
        num_frames: int | None = None,
        num_inference_steps: int = 25,
        sigmas: list[float] | None = None,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        decode_chunk_size: int | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        progress: bool = False,
    ):
        """Generates videos from conditioning image(s), as diffusers' pipeline does.

        Args mirror StableVideoDiffusionPipeline.__call__. ``image`` is a PIL image,
        a list of them, or a [B, 3, H, W] tensor in [0, 1]. Each image times
        ``num_videos_per_prompt`` becomes one video; all are one UNet batch.
        ``callback_on_step_end(pipe, step, timestep, {"latents": ...})`` runs after each
        step as in diffusers; latents in the dict it returns replace the loop's. ``sigmas``
        (the euler sampler's) replace the schedule of ``num_inference_steps``: one per
        step, then the final one, as diffusers' EulerDiscreteScheduler takes them.

        Returns:
            VideoPipelineOutput (or its frames when return_dict is False).

        Raises:
            VidrtError: invalid arguments, or a shape outside the engines' ranges.
        """
        return self._serve({k: v for k, v in locals().items() if k != "self"})

    def _generate(self, image, height, width, num_frames, num_inference_steps, sigmas, min_guidance_scale,
                  max_guidance_scale, fps, motion_bucket_id, noise_aug_strength, decode_chunk_size,
                  num_videos_per_prompt, generator, latents, output_type, return_dict, callback_on_step_end,
                  callback_on_step_end_tensor_inputs, progress):
        start = self._now()
        num_frames = num_frames if num_frames is not None else self.model.default_num_frames
        if decode_chunk_size is None:  # all frames at once, or as many as the decoder engine takes
            decode_chunk_size = min(num_frames, self.engines["vae_decoder"].max_dims.get("N", num_frames))
        images = self._as_images(image)
        batch = len(images) if isinstance(images, list) else images.shape[0]
        check_request(height, width, num_frames, num_inference_steps, decode_chunk_size, num_videos_per_prompt, output_type, generator)
        check_finite(min_guidance_scale=min_guidance_scale, max_guidance_scale=max_guidance_scale,
                     noise_aug_strength=noise_aug_strength, fps=fps, motion_bucket_id=motion_bucket_id)
        do_cfg = max_guidance_scale > 1.0
        videos = batch * num_videos_per_prompt
        if isinstance(generator, list) and len(generator) != videos:
            raise VidrtError(f"{len(generator)} generators for {videos} videos; pass one per video, or a single generator")
        self.model.check_ranges(videos, do_cfg, num_frames, height, width, decode_chunk_size, batch=batch)
        sampler = make_sampler(self.sampler_name, self.model.scheduler)
        if sigmas is None:
            sampler.set_timesteps(num_inference_steps)
        elif isinstance(sampler, EulerEDMSampler):
            sampler.set_timesteps(None, sigmas=sigmas)
        else:
            raise VidrtError(f"sigmas: custom sigmas go with the euler sampler (the folder's EulerDiscreteScheduler); "
                             f"the {sampler.name} sampler takes num_inference_steps only")
        self.timings = StageTimings()

        cond = self._condition(images, height, width, fps, motion_bucket_id, noise_aug_strength, num_videos_per_prompt, do_cfg, generator)
        shape = (videos, num_frames, self.model.latent_channels, height // self.model.vae_scale_factor, width // self.model.vae_scale_factor)
        latents = initial_latents(shape, latents, generator, sampler.init_noise_sigma).to(self.device)
        guidance = torch.linspace(min_guidance_scale, max_guidance_scale, num_frames).view(1, num_frames, 1, 1, 1)
        guidance = guidance.to(self.device)
        latents = denoise(
            self.engines["unet"], sampler, latents, cond, guidance if do_cfg else None, generator,
            self.timings.unet_steps, progress=progress, state=self.loop_state, control=self._control,
            on_step=self.step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, sampler),
        )
        if output_type == "latent":
            frames = latents
        else:
            video = self._decode(latents, num_frames, decode_chunk_size)
            frames = self.video_processor.postprocess_video(video=video, output_type=output_type)
        self.timings.end_to_end = self._now() - start
        return VideoPipelineOutput(frames=frames, timings=self.timings) if return_dict else frames

    def _as_images(self, image):
        if isinstance(image, PIL.Image.Image):
            image = [image]
        if isinstance(image, torch.Tensor):
            if image.ndim != 4 or image.shape[1] != 3:
                raise VidrtError(f"image tensor must be [B, 3, H, W] in [0, 1], got shape {list(image.shape)}")
            return image.float()
        if isinstance(image, list) and image and all(isinstance(i, PIL.Image.Image) for i in image):
            out = []
            for im in image:
                if im.mode != "RGB":
                    warnings.warn(f"vidrt: converted a {im.mode} image to RGB (SVD conditions on RGB)", stacklevel=3)
                    im = to_rgb(im)
                out.append(im)
            return out
        raise VidrtError(f"image must be a PIL image, a non-empty list of them or a [B,3,H,W] tensor, not {type(image).__name__}")

    def _condition(self, images, height, width, fps, motion_bucket_id, aug, per_prompt, do_cfg, generator) -> Conditioning:
        """CLIP embedding, VAE latent (of the noise-augmented image) and time ids, once per request."""
        m = self.model
        mean, std = m.feature_extractor["image_mean"], m.feature_extractor["image_std"]
        if isinstance(images, list):
            # Image by image, so images of different sizes work (diffusers stacks them before
            # resizing, and takes one size only); every step is per image, so the numbers are the same.
            vp = self.video_processor
            clip_in = torch.cat([clip_pixel_values(vp.numpy_to_pt(vp.pil_to_numpy([im])), m.clip_image_size, mean, std)
                                 for im in images])
        else:
            clip_in = clip_pixel_values(images, None, mean, std)
        t0 = self._now()
        embeds = self.engines["image_encoder"](pixel_values=clip_in.to(self.device))["image_embeds"]
        embeds = embeds.repeat_interleave(per_prompt, dim=0).unsqueeze(1)
        self.timings.image_encoder = self._now() - t0

        image = self.video_processor.preprocess(images, height=height, width=width).float().contiguous()
        noise = draw_noise(image.shape, generator)
        image = (image + aug * noise).to(self.device)
        t0 = self._now()
        image_latent = self.engines["vae_encoder"](image=image)["latent"]
        # One video per (image, repeat), repeats of an image adjacent, matching the
        # embeddings' order. (diffusers tiles latents but interleaves embeddings,
        # which pairs them wrongly when there are several images AND several videos each.)
        image_latent = image_latent.repeat_interleave(per_prompt, dim=0)
        self.timings.vae_encoder = self._now() - t0
        time_ids = torch.tensor([[fps - 1, motion_bucket_id, aug]], dtype=torch.float32, device=self.device)
        time_ids = time_ids.repeat(embeds.shape[0], 1)
        if do_cfg:
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
            image_latent = torch.cat([torch.zeros_like(image_latent), image_latent])
            time_ids = torch.cat([time_ids, time_ids])
        return Conditioning(
            {"encoder_hidden_states": embeds.contiguous(), "added_time_ids": time_ids.contiguous()},
            sample_extra=image_latent.contiguous(), channel_axis=2,
        )

    def _decode(self, latents: torch.Tensor, num_frames: int, chunk: int) -> torch.Tensor:
        """Temporal VAE decode in chunks of ``chunk`` frames, straight into one frames buffer."""
        t0 = self._now()
        flat = latents.flatten(0, 1)
        s = self.model.vae_scale_factor
        shape = (flat.shape[0], 3, flat.shape[2] * s, flat.shape[3] * s)
        frames = torch.empty(shape, dtype=torch.float32, device=self.device)
        decoder = self.engines["vae_decoder"]
        if self.device.type == "cuda":
            host = _decode_overlapped(decoder, flat, frames, chunk)
        else:
            for i in range(0, flat.shape[0], chunk):
                decoder(latents=flat[i : i + chunk], out={"frames": frames[i : i + chunk]})
            host = frames
        self.timings.vae_decoder = self._now() - t0
        return host.reshape(-1, num_frames, *host.shape[1:]).permute(0, 2, 1, 3, 4)


def _decode_overlapped(decoder, flat, frames, chunk) -> torch.Tensor:
    """GPU decode: chunk k decodes while chunk k-1 copies to pinned host memory on
    a second stream; one synchronisation at the end."""
    host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
    copy_stream = torch.cuda.Stream()
    compute = torch.cuda.current_stream()
    for i in range(0, flat.shape[0], chunk):
        decoder(latents=flat[i : i + chunk], out={"frames": frames[i : i + chunk]})
        done = torch.cuda.Event()
        done.record(compute)
        with torch.cuda.stream(copy_stream):
            copy_stream.wait_event(done)
            host[i : i + chunk].copy_(frames[i : i + chunk], non_blocking=True)
    copy_stream.synchronize()
    return host

