"""TextToVideoPipeline: diffusers' TextToVideoSDPipeline and AnimateDiffPipeline on
compiled engines.

Prompts are tokenized as diffusers does (padded to the tokenizer's length,
truncated with a warning); the prompt and negative prompt are encoded in one text
encoder call, once per request; guidance is one batched UNet call per step; random
numbers are drawn from the request's generator in diffusers' order.
"""

from __future__ import annotations

import warnings

import torch

from ...errors import VidrtError
from ...loop import Conditioning, denoise
from ...pipeline_base import (
    BasePipeline,
    StageTimings,
    VideoPipelineOutput,
    caller_stacklevel,
    check_finite,
    check_request,
    initial_latents,
    load_tokenizer,
)
from ...prompts import PromptRequest
from ...samplers import make_sampler


class TextToVideoPipeline(BasePipeline):
    """Text-to-video generation on compiled engines; built by ``VideoPipeline.from_pretrained``
    from a TextToVideoSDPipeline or AnimateDiffPipeline folder."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.tokenizer = load_tokenizer(model.folder, "CLIPTokenizer")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str | None = None,
        decode_chunk_size: int = 16,
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        progress: bool = False,
    ):
        """Generates videos from text, as diffusers' pipeline of the model's kind does.

        Args mirror TextToVideoSDPipeline/AnimateDiffPipeline.__call__; defaults are
        theirs (16 frames, the UNet's sample size, guidance 9.0 for ModelScope and 7.5
        for AnimateDiff, output "np" resp. "pil"). ``guidance_scale`` <= 1 turns
        guidance off. Latents are [videos, C, F, h, w]. ``prompt_embeds`` /
        ``negative_prompt_embeds`` ([prompts, 77, D], as the pipeline's encode_prompt
        returns them) stand in for ``prompt`` / ``negative_prompt``. ``callback_on_step_end``
        runs after each step as in AnimateDiffPipeline (ModelScope's diffusers pipeline has
        only the older ``callback``).

        Returns:
            VideoPipelineOutput: frames as [B, F, H, W, 3] (np), [B, F, 3, H, W] (pt),
            lists of PIL images (pil) or latents (latent).

        Raises:
            VidrtError: invalid arguments, or a shape outside the engines' ranges.
        """
        return self._serve({k: v for k, v in locals().items() if k != "self"})

    def _generate(self, prompt, negative_prompt, num_frames, height, width, num_inference_steps, guidance_scale,
                  num_videos_per_prompt, generator, latents, prompt_embeds, negative_prompt_embeds, output_type,
                  decode_chunk_size, return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs, progress):
        start = self._now()
        m = self.model
        dh, dw = m.default_size
        height = dh if height is None else height
        width = dw if width is None else width
        num_frames = m.default_num_frames if num_frames is None else num_frames
        guidance_scale = m.default_guidance_scale if guidance_scale is None else guidance_scale
        output_type = output_type or ("np" if m.kind == "text-to-video-sd" else "pil")
        text = PromptRequest.read(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, text_dim=m.text_dim)
        check_request(height, width, num_frames, num_inference_steps, decode_chunk_size, num_videos_per_prompt,
                      output_type, generator)
        check_finite(guidance_scale=guidance_scale)
        # The VAE decodes frame by frame, so the chunk changes memory, never frames: at most
        # what the decoder engine takes (TensorRT profiles end at 8 frames by default).
        decode_chunk_size = min(decode_chunk_size, self.engines["vae_decoder"].max_dims.get("N", decode_chunk_size))
        videos = text.count * num_videos_per_prompt
        if isinstance(generator, list) and len(generator) != videos:
            raise VidrtError(f"{len(generator)} generators for {videos} videos; pass one per video, or a single generator")
        do_cfg = guidance_scale > 1.0
        m.check_ranges(videos, do_cfg, num_frames, height, width, decode_chunk_size)
        sampler = make_sampler(self.sampler_name, m.scheduler)
        if m.kind == "text-to-video-sd":
            sampler.step_layout = (0, 2, 1, 3, 4)  # TextToVideoSDPipeline steps on [B*F, C, h, w]
        sampler.set_timesteps(num_inference_steps)
        self.timings = StageTimings()

        embeds, _ = text.states(lambda texts: (self._encode(texts), None), do_cfg, num_videos_per_prompt, self.device)
        cond = Conditioning({"encoder_hidden_states": embeds}, channel_axis=1)
        s = m.vae_scale_factor
        shape = (videos, m.latent_channels, num_frames, height // s, width // s)
        latents = initial_latents(shape, latents, generator, sampler.init_noise_sigma).to(self.device)
        guidance = torch.full((1, 1, 1, 1, 1), float(guidance_scale), device=self.device) if do_cfg else None
        latents = denoise(self.engines["unet"], sampler, latents, cond, guidance, generator, self.timings.unet_steps,
                          progress=progress, state=self.loop_state, control=self._control,
                          on_step=self.step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, sampler))
        if output_type == "latent":
            frames = latents
        else:
            video = self._decode_frames(latents, decode_chunk_size)
            frames = self.video_processor.postprocess_video(video=video, output_type=output_type)
        self.timings.end_to_end = self._now() - start
        return VideoPipelineOutput(frames=frames, timings=self.timings) if return_dict else frames

    def _encode(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings [len(texts), L, D], one text encoder call."""
        ids = self._tokenize(texts)
        t0 = self._now()
        states = self.engines["text_encoder"](input_ids=ids.to(self.device))["last_hidden_state"]
        self.timings.text_encoder = self._now() - t0
        return states

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        full = tok(texts, padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > ids.shape[-1]:
            removed = tok.batch_decode(full[:, tok.model_max_length - 1 : -1])
            warnings.warn(
                f"vidrt: prompt truncated to the text encoder's {tok.model_max_length} tokens; dropped: {removed}",
                stacklevel=caller_stacklevel(),
            )
        return ids.to(torch.int64)

    def _decode_frames(self, latents: torch.Tensor, chunk: int) -> torch.Tensor:
        """Frame-wise VAE decode in chunks of ``chunk`` frames into one buffer; returns
        the video as [V, 3, F, H, W] (diffusers' decode_latents layout)."""
        t0 = self._now()
        videos, channels, frames = latents.shape[:3]
        flat = latents.permute(0, 2, 1, 3, 4).reshape(videos * frames, channels, *latents.shape[3:])
        s = self.model.vae_scale_factor
        out = torch.empty((flat.shape[0], 3, flat.shape[2] * s, flat.shape[3] * s), device=self.device)
        decoder = self.engines["vae_decoder"]
        for i in range(0, flat.shape[0], chunk):
            decoder(latents=flat[i : i + chunk].contiguous(), out={"frames": out[i : i + chunk]})
        self.timings.vae_decoder = self._now() - t0
        return out.reshape(videos, frames, *out.shape[1:]).permute(0, 2, 1, 3, 4)
