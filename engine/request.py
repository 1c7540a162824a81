"""A generation request, from generate's flags or a server's JSON: its options, the checks
that need no model and those that need one, and the pipeline call's keywords. The CLI and
the HTTP server (vidrt.server) share them, so both refuse the same requests with the
same one-line messages.
"""

from __future__ import annotations

import dataclasses

from .errors import VidrtError
from .options import RequestOptions

# Pipeline keywords set by generate's own flags (and a server request's own fields), and
# those whose values are tensors or functions (Python API only): --pipeline-arg takes the others.
FLAG_KEYWORDS = {"prompt": "--prompt", "negative_prompt": "--negative-prompt", "height": "--height",
                 "width": "--width", "num_frames": "--num-frames", "num_inference_steps": "--steps",
                 "guidance_scale": "--guidance-scale", "guidance_scale_2": "--guidance-scale-2",
                 "min_guidance_scale": "--min-guidance", "max_guidance_scale": "--max-guidance", "fps": "--fps",
                 "motion_bucket_id": "--motion-bucket-id", "noise_aug_strength": "--noise-aug-strength",
                 "decode_chunk_size": "--decode-chunk-size", "num_videos_per_prompt": "--batch-size",
                 "image": "--image", "generator": "--seed", "output_type": "--format", "return_dict": None,
                 "progress": None}
PYTHON_ONLY = ("latents", "prompt_embeds", "negative_prompt_embeds", "prompt_attention_mask",
               "negative_prompt_attention_mask", "callback_on_step_end", "callback_on_step_end_tensor_inputs")


@dataclasses.dataclass(frozen=True)
class GenerateConfig(RequestOptions):
    """generate options."""

    image: str | None = None
    output: str = "out.mp4"
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    decode_chunk_size: int | None = None
    format: str | None = None


def pipeline_extras(model) -> tuple[str, ...]:
    """The keywords of ``model``'s pipeline that have no flag of their own and take plain
    values (--pipeline-arg, or a server request's extra fields, may set them)."""
    import inspect

    from .families import family_pipeline

    params = inspect.signature(family_pipeline(model.kind).__call__).parameters
    return tuple(n for n in params if n != "self" and n not in FLAG_KEYWORDS and n not in PYTHON_ONLY)


def check_pipeline_args(args: dict, model) -> None:
    """Fails on --pipeline-arg keywords ``model``'s pipeline does not take, or that have a
    flag of their own."""
    allowed = pipeline_extras(model)
    for name in args:
        if name in FLAG_KEYWORDS or name in PYTHON_ONLY:
            how = FLAG_KEYWORDS.get(name)
            fix = f"set it with {how}" if how else "only the Python API takes it (vidrt.VideoPipeline)"
            raise VidrtError(f"--pipeline-arg {name}: not an extra keyword; {fix}")
        if name not in allowed:
            raise VidrtError(f"--pipeline-arg {name}: {model.kind} pipelines take no {name!r}; their extra keywords "
                             f"are {', '.join(allowed) or 'none'}")


def check_values(cfg) -> None:
    """Fails on flag values no model could use, before any model or preset is touched."""
    import math

    from .pipeline_base import check_request
    from .sources import check_weight_paths

    check_weight_paths(cfg.unet_weights, cfg.motion_adapter)
    cfg.cache_config()

    if not 0 <= cfg.seed < 2**63:
        raise VidrtError(f"--seed {cfg.seed}: take a whole number in 0..2**63-1")
    for flag in ("min_guidance", "max_guidance", "guidance_scale", "noise_aug_strength"):
        value = getattr(cfg, flag, None)
        if value is not None and not math.isfinite(value):
            raise VidrtError(f"--{flag.replace('_', '-')} {value}: must be a finite number")
    if getattr(cfg, "fps", 1) < 1:
        raise VidrtError(f"--fps {cfg.fps}: need at least 1 frame per second")
    for flag in ("prompt", "negative_prompt"):
        text = getattr(cfg, flag, None)
        try:
            (text or "").encode("utf-8")
        except UnicodeEncodeError:
            raise VidrtError(f"--{flag.replace('_', '-')}: not valid UTF-8 text; pass the prompt in UTF-8") from None
    if hasattr(cfg, "runs") and (cfg.runs < 1 or cfg.warmup < 0):
        raise VidrtError(f"--runs must be >= 1 and --warmup >= 0 (got {cfg.runs}, {cfg.warmup})")
    chunk = getattr(cfg, "decode_chunk_size", None)
    frames = cfg.num_frames if cfg.num_frames is not None else 1
    check_request(cfg.height if cfg.height is not None else 8, cfg.width if cfg.width is not None else 8, frames,
                  cfg.steps, chunk if chunk is not None else 1, cfg.batch_size)


def check_on_model(cfg, model) -> None:
    """Fails on request arguments ``model``'s engines cannot serve (shape ranges, frames,
    guidance, --pipeline-arg's keywords), with the model's own rules."""
    check_pipeline_args(cfg.pipeline_args(), model)
    model = cfg.model_for_build(model)  # a step cache asks for a transformer model
    height, width = cfg.size(model)
    model.check_ranges(cfg.batch_size, cfg.guided(model), cfg.frames(model), height, width,
                       getattr(cfg, "decode_chunk_size", None))


def check_inputs(cfg, model, has_image: bool, image_hint: str, prompt_hint: str) -> None:
    """Fails when the request lacks what ``model`` conditions on: an image for the
    image-to-video models, a prompt for those guided by text (hints say how to pass them)."""
    if model.takes_image and not has_image:
        raise VidrtError(f"{cfg.model} is an image-to-video model: pass {image_hint}")
    if model.kind != "image-to-video" and cfg.prompt is None:
        what = "an image-to-video model guided by text" if model.takes_image else "a text-to-video model"
        raise VidrtError(f"{cfg.model} is {what}: pass {prompt_hint}")


def pipeline_kwargs(cfg: GenerateConfig, model, image, extra: dict | None = None) -> dict:
    """The pipeline call's keywords for generate's flags, then --pipeline-arg's and
    ``extra``'s (a server request's extra fields; checked with check_pipeline_args)."""
    return _flag_kwargs(cfg, model, image) | cfg.pipeline_args() | (extra or {})


def _flag_kwargs(cfg: GenerateConfig, model, image) -> dict:
    import torch

    height, width = cfg.size(model)
    common = dict(height=height, width=width, num_frames=cfg.num_frames, num_inference_steps=cfg.steps,
                  generator=torch.Generator().manual_seed(cfg.seed), output_type="pil", progress=True)
    if model.kind == "image-to-video":
        return common | dict(
            image=[image] * cfg.batch_size, min_guidance_scale=cfg.min_guidance, max_guidance_scale=cfg.max_guidance,
            fps=cfg.fps, motion_bucket_id=cfg.motion_bucket_id, noise_aug_strength=cfg.noise_aug_strength,
            decode_chunk_size=cfg.decode_chunk_size,
        )
    text = dict(prompt=cfg.prompt, negative_prompt=cfg.negative_prompt, num_videos_per_prompt=cfg.batch_size)
    if cfg.guidance_scale_2 is not None and model.kind not in ("wan", "wan-i2v"):
        raise VidrtError("--guidance-scale-2 is for Wan 2.2's second expert; this model has none")
    if model.kind in ("wan", "wan-i2v", "ltx", "ltx-i2v", "cogvideox", "cogvideox-i2v"):  # the diffusion transformers
        if cfg.decode_chunk_size is not None:
            how = {"wan": "decodes one latent frame (4 frames) per call",
                   "wan-i2v": "decodes one latent frame (4 frames) per call",
                   "cogvideox": "decodes the latent frames in diffusers' chunks (3, then pairs)",
                   "cogvideox-i2v": "decodes the latent frames in diffusers' chunks (3, then pairs)"}.get(
                model.kind, "decodes the whole latent clip in one call")
            raise VidrtError(f"--decode-chunk-size: this model's VAE {how}, as diffusers does; drop the flag")
        scale = cfg.guidance_scale if cfg.guidance_scale is not None else model.default_guidance_scale
        extra = dict(guidance_scale_2=cfg.guidance_scale_2) if model.kind in ("wan", "wan-i2v") else {}
        extra |= dict(image=image) if image is not None else {}
        return common | text | dict(num_frames=cfg.frames(model), guidance_scale=scale) | extra
    return common | text | dict(guidance_scale=cfg.guidance_scale, decode_chunk_size=cfg.decode_chunk_size or 16)
