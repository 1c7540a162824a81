"""WanTextToVideoPipeline: diffusers' WanPipeline (Wan 2.1, 2.2 T2V and TI2V-5B) on compiled
engines; WanImageToVideoPipeline: diffusers' namesake (Wan 2.1 I2V, Wan 2.2 I2V-A14B, and
TI2V-5B's image to video).

As diffusers does: prompts are cleaned and tokenized to ``max_sequence_length`` and their
states zero-padded past each prompt's end; latents are drawn from the request's
generator in diffusers' order; the folder's scheduler steps the flow prediction; Wan
2.2's low-noise expert takes over once the timestep falls below ``boundary_ratio`` of
the training steps. Unlike diffusers, the prompt and negative prompt are encoded in one
text encoder call at the longest prompt's length, and both guidance halves run in one
transformer call per step.
"""

from __future__ import annotations

import torch

from ...backends.base import held
from ...errors import VidrtError
from ...loop import Conditioning, ExpertSwitch, denoise
from ...pipeline_base import (
    BasePipeline,
    StageTimings,
    VideoPipelineOutput,
    check_finite,
    check_request,
    check_text_length,
    initial_latents,
    load_tokenizer,
    warn_truncated,
)
from ...prompts import PromptRequest, cut_text_length
from ...samplers import make_sampler


class WanTextToVideoPipeline(BasePipeline):
    """Wan text-to-video generation on compiled engines; built by
    ``VideoPipeline.from_pretrained`` from a WanPipeline folder."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.tokenizer = load_tokenizer(model.folder)
        self.image_processor = None
        if model.image_encoder is not None:  # Wan 2.1 I2V's CLIP preprocessing, the folder's own
            from transformers import CLIPImageProcessor

            self.image_processor = CLIPImageProcessor.from_pretrained(model.folder / "image_processor")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int = 480,
        width: int = 832,
        num_frames: int = 81,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        guidance_scale_2: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int = 512,
        progress: bool = False,
    ):
        """Generates videos from text, as diffusers' WanPipeline does.

        Args mirror WanPipeline.__call__, with its defaults. ``guidance_scale`` <= 1 turns
        guidance off; ``guidance_scale_2`` is the low-noise expert's (Wan 2.2; default:
        ``guidance_scale``). Latents are [videos, 16, (num_frames - 1) / 4 + 1, h, w].
        ``prompt_embeds`` / ``negative_prompt_embeds`` ([prompts, L, D], as WanPipeline's
        encode_prompt returns them) stand in for ``prompt`` / ``negative_prompt``; both
        halves must then have one length L (vidrt runs them in one batch).
        ``callback_on_step_end`` runs after each step as in diffusers.

        Returns:
            VideoPipelineOutput: frames as [B, F, H, W, 3] (np), [B, F, 3, H, W] (pt),
            lists of PIL images (pil) or latents (latent).

        Raises:
            VidrtError: invalid arguments (frames not 4k+1, sizes not multiples of 16, ...)
                or a shape outside the engines' ranges.
        """
        return self._serve({k: v for k, v in locals().items() if k != "self"})

    def _generate(self, prompt, negative_prompt, height, width, num_frames, num_inference_steps, guidance_scale,
                  guidance_scale_2, num_videos_per_prompt, generator, latents, prompt_embeds, negative_prompt_embeds,
                  output_type, return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs,
                  max_sequence_length, progress, image=None, image_embeds=None, last_image=None):
        start = self._now()
        m = self.model
        text = PromptRequest.read(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, text_dim=m.text_dim)
        check_request(height, width, num_frames, num_inference_steps, 1, num_videos_per_prompt, output_type, generator)
        check_finite(guidance_scale=guidance_scale)
        guidance_scale_2 = _second_guidance(m, guidance_scale, guidance_scale_2)
        if image_embeds is not None and m.image_encoder is None:
            raise VidrtError("image_embeds are the CLIP image states of Wan 2.1 I2V; this model takes none, drop them")
        if last_image is not None:
            _check_last_image(m, num_frames)
        max_sequence_length = check_text_length(max_sequence_length, m.max_text_length)
        videos = text.count * num_videos_per_prompt
        if isinstance(generator, list) and len(generator) != videos:
            raise VidrtError(f"{len(generator)} generators for {videos} videos; pass one per video, or a single generator")
        do_cfg = guidance_scale > 1.0
        m.check_ranges(videos, do_cfg, num_frames, height, width,
                       text_length=text.given_length() or max_sequence_length)
        sampler = make_sampler(self.sampler_name, m.scheduler)
        sampler.set_timesteps(num_inference_steps)
        self.timings = StageTimings()

        embeds, _ = text.states(lambda texts: (self._encode(texts, max_sequence_length), None), do_cfg,
                                num_videos_per_prompt, self.device)
        embeds, bias = collapse_padding(embeds)
        inputs = {"encoder_hidden_states": embeds, "text_bias": bias}
        s = m.vae_scale_factor
        shape = (videos, m.latent_channels, m.latent_frames(num_frames), height // s, width // s)
        latents = initial_latents(shape, latents, generator, sampler.init_noise_sigma).to(self.device)
        condition = None
        if m.image_condition == "first-frame":
            condition = self._image_condition(image, videos, num_videos_per_prompt, height, width)
            inputs["image_latents"] = torch.cat([condition, condition]) if do_cfg else condition
        elif m.image_condition == "channels":
            for name, tensor in self._channels_condition(image, image_embeds, last_image, videos, num_videos_per_prompt,
                                                         height, width, num_frames).items():
                inputs[name] = torch.cat([tensor, tensor]) if do_cfg else tensor
        cond = Conditioning(inputs, channel_axis=1)
        guidance = self._guidance(guidance_scale) if do_cfg else None
        first, switch = self._experts(sampler, guidance_scale_2 if do_cfg else None)
        latents = denoise(first, sampler, latents, cond, guidance, generator, self.timings.unet_steps,
                          progress=progress, state=self.loop_state, switch=switch, control=self._control,
                          on_step=self.step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, sampler))
        if condition is not None:  # frame 0 is the image's, as diffusers puts it back after the loop
            latents[:, :, 0] = condition
        if output_type == "latent":
            frames = latents
        else:
            frames = self.video_processor.postprocess_video(video=self._decode(latents), output_type=output_type)
        self.timings.end_to_end = self._now() - start
        return VideoPipelineOutput(frames=frames, timings=self.timings) if return_dict else frames

    def _image_condition(self, image, videos: int, per_prompt: int, height: int, width: int) -> torch.Tensor:
        """WanImageToVideoPipeline.prepare_latents with expand_timesteps: each image encoded
        by the ``vae_encoder`` engine into its latent's mean (no draw), normalised.
        ``image``: one image, or one per prompt. Returns [videos, C, h, w], each prompt's
        videos adjacent."""
        pixels = self._image_pixels(image, videos, per_prompt, height, width)
        t0 = self._now()
        with held(self.engines["vae_encoder"]) as encoder:  # copied before the next call reuses the output
            latents = torch.cat([encoder(image=pixels[i : i + 1].to(self.device))["latent_mean"].clone()
                                 for i in range(len(pixels))])
        self.timings.vae_encoder = self._now() - t0
        return latents.repeat_interleave(videos // len(latents), dim=0)

    def _channels_condition(self, image, image_embeds, last_image, videos: int, per_prompt: int, height: int,
                            width: int, num_frames: int) -> dict[str, torch.Tensor]:
        """WanImageToVideoPipeline.prepare_latents without expand_timesteps (Wan 2.1 I2V, Wan
        2.2 I2V-A14B): each image followed by ``num_frames - 1`` zero frames, encoded chunk
        by chunk (``vae_encoder_first``, then ``vae_encoder_chunk`` per 4 frames with the caches)
        into its latents' mean, normalised, after a mask that is 1 on latent frame 0;
        and for Wan 2.1 I2V the CLIP image states (``_clip_states``). With ``last_image``
        (Wan 2.2 I2V-A14B's first-last-frame to video) the clip's last frame is that image and
        the mask is 1 on it too. Returns the transformer inputs ``condition`` [videos, 4 + C,
        F, h, w] (and ``image_embeds``), each prompt's videos adjacent."""
        m = self.model
        firsts = self._image_pixels(image, videos, per_prompt, height, width)
        lasts = self._image_pixels(last_image, videos, per_prompt, height, width) if last_image is not None else None
        pairs = max(len(firsts), len(lasts) if lasts is not None else 1)  # one image, or one per prompt, of each
        t0 = self._now()
        # each encoder's working memory given back once the clips are encoded, before the next stage's
        with held(self.engines["vae_encoder_first"]), held(self.engines["vae_encoder_chunk"]):
            latents = torch.stack([self._encode_clip(firsts[i % len(firsts)][None], num_frames,
                                                     lasts[i % len(lasts)][None] if lasts is not None else None)
                                   for i in range(pairs)])
        self.timings.vae_encoder = self._now() - t0
        mask = torch.zeros((len(latents), m.temporal_factor, *latents.shape[2:]), device=latents.device)
        mask[:, :, 0] = 1.0
        if lasts is not None:  # the clip's last frame: the last of the last latent frame's four
            mask[:, -1, -1] = 1.0
        out = {"condition": torch.cat([mask, latents], dim=1).repeat_interleave(videos // len(latents), dim=0)}
        if m.image_encoder is not None:
            states = self._clip_states(image, image_embeds, videos // per_prompt)
            out["image_embeds"] = states.repeat_interleave(videos // len(states), dim=0)
        return out

    def _encode_clip(self, pixels: torch.Tensor, num_frames: int, last: torch.Tensor | None = None) -> torch.Tensor:
        """One image [1, 3, H, W] and ``num_frames - 1`` zero frames after it (the last one
        ``last``'s, if given) through the VAE encoder, as AutoencoderKLWan._encode runs that
        clip: [C, F, h, w]."""
        first, chunk = self.engines["vae_encoder_first"], self.engines["vae_encoder_chunk"]
        k = self.model.temporal_factor
        height, width = pixels.shape[2:]
        chunks = (num_frames - 1) // k
        shapes = first.spec.output_shapes({"B": 1, "H": height, "W": width})
        result = first(image=pixels.to(self.device))
        out = torch.empty((shapes["latent_mean"][1], 1 + chunks, *shapes["latent_mean"][2:]), device=self.device)
        out[:, 0] = result["latent_mean"][0]
        names = [n for n in first.spec.output_names if n != "latent_mean"]
        caches = {n: result[n] for n in names}
        # Two sets of caches, read by one call while the next is written (as _decode's)
        sets = [{n: torch.empty(shapes[n], device=self.device) for n in names} for _ in range(2)]
        latent = torch.empty(shapes["latent_mean"], device=self.device)
        frames = torch.zeros((1, 3, k, height, width), device=self.device)
        for j in range(chunks):
            if last is not None and j == chunks - 1:
                frames[:, :, -1] = last.to(self.device)
            written = sets[j % 2]
            chunk(frames=frames, **{n.replace("next_", ""): c for n, c in caches.items()},
                  out={"latent_mean": latent, **written})
            out[:, 1 + j] = latent[0]
            caches = written
        return out

    def _clip_states(self, image, image_embeds, prompts: int) -> torch.Tensor:
        """WanImageToVideoPipeline.encode_image: each image through the folder's CLIP image
        processor and the ``image_encoder`` engine (the penultimate layer's states), or the
        given ``image_embeds`` [1 or prompts, tokens, D]. Returns [images, tokens, D]."""
        if image_embeds is not None:
            spec = self.engines["image_encoder"].spec.outputs[0]
            if image_embeds.ndim != 3 or len(image_embeds) not in (1, prompts) or tuple(image_embeds.shape[1:]) != spec.dims[1:]:
                raise VidrtError(f"image_embeds of shape {tuple(image_embeds.shape)}: pass [1 or {prompts}, "
                                 f"{spec.dims[1]}, {spec.dims[2]}] (the image encoder's penultimate states), or None")
            return image_embeds.to(self.device, torch.float32)
        images = image if isinstance(image, list) else [image]
        pixels = self.image_processor(images=images, return_tensors="pt").pixel_values
        t0 = self._now()
        with held(self.engines["image_encoder"]) as encoder:
            states = torch.cat([encoder(pixel_values=pixels[i : i + 1].to(self.device))["image_states"].clone()
                                for i in range(len(pixels))])
        self.timings.image_encoder = self._now() - t0
        return states

    def _guidance(self, scale: float) -> torch.Tensor:
        return torch.full((1, 1, 1, 1, 1), float(scale), device=self.device)

    def _experts(self, sampler, guidance_scale_2):
        """The first step's transformer and, for Wan 2.2, where the second takes over:
        diffusers' ``t >= boundary_ratio * num_train_timesteps`` runs the high-noise expert."""
        m = self.model
        if m.transformer_2 is None:
            return self.engines["transformer"], None
        boundary = m.boundary_ratio * int(m.scheduler.get("num_train_timesteps", 1000))
        low = [i for i, t in enumerate(sampler.timesteps.tolist()) if t < boundary]
        if not low:
            return self.engines["transformer"], None
        guidance = self._guidance(guidance_scale_2) if guidance_scale_2 is not None else None
        # A switch at step 0 hands every step to the second expert before the first runs.
        return self.engines["transformer"], ExpertSwitch(low[0], self.engines["transformer_2"], guidance)

    def _encode(self, texts: list[str], length: int) -> torch.Tensor:
        """Text states [len(texts), length, D]: one text encoder call (see ``prompt_states``),
        or one call of each part in turn for a split encoder."""
        parts = [self.engines[p] for p in self.model.text_parts]
        encoder = parts[0]

        def encode(ids, mask):
            t0 = self._now()
            mask = mask.to(self.device)
            states = encoder(input_ids=ids.to(self.device), attention_mask=mask)
            for part in parts[1:]:  # a split encoder: each part continues from the last one's states
                states = part(hidden_states=states["next_hidden_states"], attention_mask=mask)
            self.timings.text_encoder = self._now() - t0
            return states["last_hidden_state"]

        return prompt_states(encode, self.tokenizer, texts, length, encoder.min_dims.get("L", 1))

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE decoder as diffusers runs it, one latent frame per call, video by video:
        latent frame 0 gives 1 frame and the caches, each later one 4 frames from the
        caches. Returns [V, 3, F, H, W] in [-1, 1]."""
        t0 = self._now()
        first, chunk = self.engines["vae_decoder"], self.engines["vae_decoder_chunk"]
        s, k = self.model.vae_scale_factor, self.model.temporal_factor
        v, _, t, h, w = latents.shape
        out = torch.empty((v, 3, k * (t - 1) + 1, h * s, w * s), device=self.device)
        names = [n for n in first.spec.output_names if n != "frames"]
        # Two sets of caches, read by one call while the next is written: an engine never
        # writes the tensors it reads.
        shapes = first.spec.output_shapes({"B": 1, "h": h, "w": w})
        sets = [{n: torch.empty(shapes[n], device=self.device) for n in names} for _ in range(2)]
        frames = torch.empty((1, 3, k, h * s, w * s), device=self.device)
        # Each engine's working memory is given back after its calls: the first frame's before
        # the chunks' is taken (on OpenVINO at 256x256 2.2 and 3.4 GB for Wan 2.1's decoder).
        with held(chunk):
            for i in range(v):
                with held(first):
                    result = first(latents=latents[i : i + 1, :, :1].contiguous())
                out[i, :, :1] = result["frames"][0]
                caches = {n: result[n] for n in names}
                for j in range(1, t):
                    written = sets[j % 2]
                    chunk(latents=latents[i : i + 1, :, j : j + 1].contiguous(),
                          **{n.replace("next_", ""): c for n, c in caches.items()},
                          out={"frames": frames, **written})
                    out[i, :, 1 + k * (j - 1) : 1 + k * j] = frames[0]
                    caches = written
        self.timings.vae_decoder = self._now() - t0
        return out


class WanImageToVideoPipeline(WanTextToVideoPipeline):
    """Wan image-to-video generation on compiled engines (diffusers'
    WanImageToVideoPipeline). Wan 2.1 I2V and Wan 2.2 I2V-A14B: the clip of the image and
    zero frames, encoded, is concatenated to the latents' channels in every transformer
    call (Wan 2.1 I2V: the CLIP image states attended beside the text). TI2V-5B
    (expand_timesteps): the image's latent is frame 0 of every transformer call, its tokens
    at timestep 0, and frame 0 of the result."""

    @torch.no_grad()
    def __call__(self, image, prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None,
                 height: int = 480, width: int = 832, num_frames: int = 81, num_inference_steps: int = 50,
                 guidance_scale: float = 5.0, guidance_scale_2: float | None = None, num_videos_per_prompt: int = 1,
                 generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                 output_type: str = "np", return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] | None = None, max_sequence_length: int = 512,
                 image_embeds=None, last_image=None, progress: bool = False):
        """Generates videos from an image and text, as diffusers' WanImageToVideoPipeline
        does.

        Args mirror WanImageToVideoPipeline.__call__ and WanTextToVideoPipeline's; ``image``
        is one image (every video starts from it) or one per prompt (PIL, NumPy or a
        [3, H, W] tensor in [0, 1]), resized to height x width as diffusers does (and, for
        Wan 2.1 I2V's CLIP encoder, by the folder's image processor). ``image_embeds``
        (Wan 2.1 I2V): the CLIP states [1 or prompts, tokens, D] in place of encoding the
        image. ``last_image`` (Wan 2.2 I2V-A14B's first-last-frame to video): the last frame's
        image, one or one per prompt, encoded as the clip's last frame as diffusers does.

        Raises:
            VidrtError: as WanTextToVideoPipeline, a missing image, or ``last_image`` on a
                model that takes none.
        """
        if image is None:
            raise VidrtError("image-to-video needs an image: pass image=PIL.Image (or --image PATH)")
        return self._serve({k: v for k, v in locals().items() if k != "self"})


def prompt_states(encode, tokenizer, texts: list[str], length: int, min_tokens: int = 1) -> torch.Tensor:
    """Text states [len(texts), length, D] as WanPipeline._get_t5_prompt_embeds makes them:
    cleaned prompts tokenized to ``length``, zeros past each prompt's end. ``encode(ids,
    mask)`` runs the text encoder once, at the longest prompt's token count (padded up to
    ``min_tokens``, what the engine takes): the mask hides the padding, so the real
    tokens' states are those of a call at ``length``."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    texts = [prompt_clean(t) for t in texts]
    tok = tokenizer(texts, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                    return_attention_mask=True, return_tensors="pt")
    warn_truncated(tokenizer, texts, length)
    mask = tok.attention_mask.to(torch.int64)
    used = min(length, max(1, int(mask.sum(1).max()), min_tokens))
    states = encode(tok.input_ids[:, :used].to(torch.int64), mask[:, :used])
    embeds = torch.zeros((len(texts), length, states.shape[-1]), device=states.device)
    embeds[:, :used] = states * mask[:, :used, None].to(states)
    return embeds


def collapse_padding(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text states [N, L, D] with each row's trailing zero states (WanPipeline pads every
    prompt's to max_sequence_length with zeros) cut to the fewest that keep one in every
    row (rounded up: vidrt.prompts.cut_text_length), and the [N, L'] logit bias that makes
    the transformer's cross-attention see what it sees at length L.

    Exact: Wan's cross-attention has no mask, and a zero state gives every padding token
    of a row the same key and value, so m of them weigh as one whose logit is raised by
    log(m) (softmax: m·exp(s) = exp(s + log m)). A row with n real tokens keeps L' - n
    padding tokens, each biased by log((L - n) / (L' - n)); its real tokens get 0. At
    256x256 and 17 frames that is 7% of Wan 2.1 1.3B's transformer FLOPs for a short
    prompt (torch's FLOP counter, 512 against 32 text tokens).
    """
    n, length = states.shape[0], states.shape[1]
    nonzero = states.ne(0).any(dim=-1)  # [N, L]
    real = torch.where(nonzero.any(dim=1), nonzero.int().cumsum(dim=1).argmax(dim=1) + 1, 0)  # after the last non-zero
    keep = cut_text_length(int(real.max()) + 1, length)
    bias = torch.zeros((n, keep), dtype=torch.float32, device=states.device)
    if keep == length:
        return states, bias
    pads = torch.arange(keep, device=states.device)[None] >= real[:, None]
    weight = ((length - real) / (keep - real)).log().to(torch.float32)[:, None]
    bias = torch.where(pads, weight, bias)
    return states[:, :keep].contiguous(), bias


def _check_last_image(model, num_frames: int) -> None:
    """Raises VidrtError unless ``model`` takes a last image (Wan 2.2 I2V-A14B's layout) and
    the clip has frames between the two."""
    if model.image_condition != "channels" or model.image_encoder is not None:
        what = {"first-frame": "TI2V-5B's image to video starts from one image (diffusers ignores last_image there)",
                "channels": "Wan 2.1 I2V needs its first-last-frame model (Wan2.1-FLF2V), which vidrt does not serve yet"}
        raise VidrtError(f"last_image: {what.get(model.image_condition, 'this model takes no image')}; drop it")
    if num_frames < 5:
        raise VidrtError(f"last_image needs num_frames >= 5 (the last frame after the first), got {num_frames}")


def _second_guidance(model, guidance_scale, guidance_scale_2):
    if guidance_scale_2 is None:
        return guidance_scale if model.transformer_2 is not None else None
    if model.transformer_2 is None:
        raise VidrtError("guidance_scale_2 is for Wan 2.2's second expert; this model has one transformer, drop it")
    check_finite(guidance_scale_2=guidance_scale_2)
    return guidance_scale_2
