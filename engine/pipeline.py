"""VideoPipeline: a drop-in for diffusers' StableVideoDiffusionPipeline on compiled engines.

The request flows as diffusers' does (same preprocessing, same random draws in
the same order) but conditioning is computed once, classifier-free guidance is
one batched UNet call, and every per-step tensor lives in a buffer allocated
once per request shape.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .backends import get_backend
from .build import load_engines, prepare_engines
from .errors import VidrtError
from .imageops import clip_pixel_values
from .layout import default_engine_dir
from .loop import Conditioning, LoopState, denoise
from .samplers import check_sampler, draw_noise, make_sampler
from .sources import check_unet_weights, check_weight_paths, resolve_model
from .svd import SvdModel
from .video_io import to_rgb

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclasses.dataclass
class VideoPipelineOutput:
    """frames: list of PIL frame lists, or [B, F, H, W, 3] array, or [B, F, 3, H, W] tensor;
    timings: this call's seconds per stage."""

    frames: list | np.ndarray | torch.Tensor
    timings: "StageTimings | None" = None


@dataclasses.dataclass
class StageTimings:
    """Seconds spent per stage in the last call (stages a model lacks stay 0)."""

    image_encoder: float = 0.0
    vae_encoder: float = 0.0
    text_encoder: float = 0.0
    unet_steps: list = dataclasses.field(default_factory=list)
    vae_decoder: float = 0.0
    end_to_end: float = 0.0

    @property
    def unet(self) -> float:
        return float(sum(self.unet_steps))


class VideoPipeline:
    """Image-to-video generation on compiled engines (see ``from_pretrained``, which
    returns a TextToVideoPipeline for text-to-video model folders)."""

    def __init__(self, model, engines: dict, sampler: str, backend: str, precision: str, engine_dir: Path,
                 device: str = "cpu", cuda_graphs: bool = True):
        from diffusers.video_processor import VideoProcessor

        self.model = model
        self.engines = engines
        self.sampler_name = sampler
        self.backend = backend
        self.precision = precision
        self.engine_dir = engine_dir
        self.builds: dict = {}
        self.video_processor = VideoProcessor(do_resize=True, vae_scale_factor=model.vae_scale_factor)
        self.timings = StageTimings()
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream() if self.device.type == "cuda" else None  # vidrt's own stream
        self.loop_state = LoopState(use_cuda_graphs=cuda_graphs)
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        engine_dir: str | Path | None = None,
        backend: str = "auto",
        precision: str = "fp32",
        sampler: str | None = None,
        *,
        unet_weights: str | Path | None = None,
        motion_adapter: str | Path | None = None,
        quant=None,
        backend_options=None,
        component_precision: dict | None = None,
        cuda_graphs: bool = True,
        seed: int = 0,
        build: bool = True,
        progress: bool = True,
    ) -> "VideoPipeline":
        """Loads (building what is missing) the engines for a model.

        Args:
            model: preset (vidrt.sources.ALL_PRESETS), local diffusers folder or hub id.
                The folder's model_index.json picks the pipeline: StableVideoDiffusionPipeline
                gives a VideoPipeline (image to video); TextToVideoSDPipeline and
                AnimateDiffPipeline give a vidrt.t2v_pipeline.TextToVideoPipeline.
            engine_dir: where engines live (default: under $VIDRT_CACHE).
            backend: "auto" or a backend name.
            precision: engine precision.
            sampler: one of vidrt.samplers.SAMPLERS ("euler", "animatelcm" for SVD;
                "ddim", "lcm", "dpm++", "euler", "scheduler" for text to video), or None
                for the one matching the model folder's scheduler.
            unet_weights: safetensors UNet state dict replacing the model's (AnimateLCM-SVD-xt).
            motion_adapter: AnimateDiff motion adapter (diffusers folder or checkpoint file)
                merged into a Stable Diffusion (or AnimateDiff) folder's 2D UNet.
            quant: vidrt.export.quantize.QuantConfig for precision int8/fp8 (calibration
                images, steps, layers kept in high precision); default: what the engines
                were built with, else the built-in synthetic calibration set.
            backend_options: backend build options (vidrt.trt_plan.TrtOptions for TensorRT:
                shape profiles, optimisation level, workspace, timing cache).
            component_precision: per-component precision, e.g. {"vae_decoder": "fp32"}.
            cuda_graphs: on a GPU, capture each denoising step as a CUDA graph.
            seed: weight seed of random presets.
            build: build missing/stale engines; False refuses with an error instead.
            progress: show progress bars and what was chosen.

        Raises:
            VidrtError: any problem with the model, the engines or the options.
        """
        check_weight_paths(unet_weights, motion_adapter)
        m = resolve_model(str(model), seed=seed, progress=progress, motion_adapter=motion_adapter)
        if unet_weights:
            check_unet_weights(m, unet_weights)
        check_sampler(sampler, m.kind)
        make_sampler(sampler, m.scheduler)  # fail early on a bad sampler name
        backend_cls = get_backend(backend, announce=progress and backend == "auto", precision=precision)
        from .backends.openvino import OvOptions
        from .trt_plan import TrtOptions

        expected = {"tensorrt": TrtOptions, "openvino": OvOptions}.get(backend_cls.name)
        if expected is None or not isinstance(backend_options, expected):
            backend_options = None  # options for another backend mean nothing here
        unet_weights = str(Path(unet_weights).resolve()) if unet_weights else None
        engine_dir = Path(engine_dir) if engine_dir else default_engine_dir(m, unet_weights)
        builds = prepare_engines(
            m, engine_dir, backend_cls, precision, unet_weights=unet_weights, quant=quant,
            backend_options=backend_options, component_precision=component_precision, build=build, progress=progress,
        )
        engines = load_engines(engine_dir, backend_cls, precision, m, component_precision, backend_options)
        if m.kind == "image-to-video":
            pipe_cls = VideoPipeline
        else:
            from .t2v_pipeline import TextToVideoPipeline as pipe_cls
        pipe = pipe_cls(m, engines, sampler, backend_cls.name, precision, engine_dir, backend_cls.device, cuda_graphs)
        pipe.builds = builds
        return pipe

    # -- request ---------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image,
        height: int = 576,
        width: int = 1024,
        num_frames: int | None = None,
        num_inference_steps: int = 25,
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
        progress: bool = False,
    ):
        """Generates videos from conditioning image(s), as diffusers' pipeline does.

        Args mirror StableVideoDiffusionPipeline.__call__. ``image`` is a PIL image,
        a list of them, or a [B, 3, H, W] tensor in [0, 1]. Each image times
        ``num_videos_per_prompt`` becomes one video; all are one UNet batch.

        Returns:
            VideoPipelineOutput (or its frames when return_dict is False).

        Raises:
            VidrtError: invalid arguments, or a shape outside the engines' ranges.
        """
        return self._serve({k: v for k, v in locals().items() if k != "self"})

    def _serve(self, request: dict):
        """Runs one request under the pipeline's lock, on vidrt's own stream on a GPU.

        A pipeline owns one set of step, engine-output and I/O buffers (and, on OpenVINO,
        one infer request), so calls from several threads take turns: each returns
        exactly what it would alone. ``timings`` then describes the last call to finish;
        each output carries its own.
        """
        with self._lock:
            if self.stream is None:
                return self._generate(**request)
            with torch.cuda.stream(self.stream):  # every op of the request on vidrt's own stream
                return self._generate(**request)

    def _generate(self, image, height, width, num_frames, num_inference_steps, min_guidance_scale, max_guidance_scale,
                  fps, motion_bucket_id, noise_aug_strength, decode_chunk_size, num_videos_per_prompt, generator,
                  latents, output_type, return_dict, progress):
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
        check_ranges(self.model, batch, videos, do_cfg, num_frames, height, width, decode_chunk_size)
        sampler = make_sampler(self.sampler_name, self.model.scheduler)
        sampler.set_timesteps(num_inference_steps)
        self.timings = StageTimings()

        cond = self._condition(images, height, width, fps, motion_bucket_id, noise_aug_strength, num_videos_per_prompt, do_cfg, generator)
        shape = (videos, num_frames, self.model.latent_channels, height // self.model.vae_scale_factor, width // self.model.vae_scale_factor)
        latents = _initial_latents(shape, latents, generator, sampler.init_noise_sigma).to(self.device)
        guidance = torch.linspace(min_guidance_scale, max_guidance_scale, num_frames).view(1, num_frames, 1, 1, 1)
        guidance = guidance.to(self.device)
        latents = denoise(
            self.engines["unet"], sampler, latents, cond, guidance if do_cfg else None, generator,
            self.timings.unet_steps, progress=progress, state=self.loop_state,
        )
        if output_type == "latent":
            frames = latents
        else:
            video = self._decode(latents, num_frames, decode_chunk_size)
            frames = self.video_processor.postprocess_video(video=video, output_type=output_type)
        self.timings.end_to_end = self._now() - start
        return VideoPipelineOutput(frames=frames, timings=self.timings) if return_dict else frames

    def _now(self) -> float:
        """Stage clock: on a GPU, waits for the stream first (stage boundaries only,
        never inside the denoising loop, which times itself with CUDA events)."""
        if self.stream is not None:
            self.stream.synchronize()
        return time.perf_counter()

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
        if isinstance(images, list):
            pixels01 = self.video_processor.numpy_to_pt(self.video_processor.pil_to_numpy(images))
            clip_in = clip_pixel_values(pixels01, m.clip_image_size, m.feature_extractor["image_mean"], m.feature_extractor["image_std"])
        else:
            clip_in = clip_pixel_values(images, None, m.feature_extractor["image_mean"], m.feature_extractor["image_std"])
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


def check_finite(**values) -> None:
    """Raises VidrtError naming the first value that is not a finite number (a NaN or
    infinite guidance scale would silently give black videos, or turn guidance off)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise VidrtError(f"{name}={value!r}: must be a finite number")


def check_request(height, width, frames, steps, chunk=1, per_prompt=1, output_type="np", generator=None) -> None:
    """Raises VidrtError for request arguments no engine could serve."""
    for name, value in (("height", height), ("width", width), ("num_frames", frames), ("num_inference_steps", steps),
                        ("decode_chunk_size", chunk), ("num_videos_per_prompt", per_prompt)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise VidrtError(f"{name}={value!r}: must be a whole number")
    if height % 8 or width % 8 or height < 8 or width < 8:
        raise VidrtError(f"height and width must be positive multiples of 8, got {height}x{width}")
    if frames < 1:
        raise VidrtError(f"num_frames={frames}: need at least 1 frame")
    if steps < 1:
        raise VidrtError(f"num_inference_steps={steps}: need at least 1 step")
    if chunk < 1:
        raise VidrtError(f"decode_chunk_size={chunk}: need at least 1")
    if per_prompt < 1:
        raise VidrtError(f"num_videos_per_prompt={per_prompt}: need at least 1")
    if output_type not in OUTPUT_TYPES:
        raise VidrtError(f"output_type='{output_type}': choose one of {', '.join(OUTPUT_TYPES)}")
    gens = generator if isinstance(generator, list) else [generator]
    if generator is not None and not all(isinstance(g, torch.Generator) for g in gens):
        raise VidrtError("generator must be a torch.Generator or a list of them (one per video)")


def check_ranges(model: SvdModel, batch, videos, do_cfg, frames, height, width, chunk) -> None:
    """Raises VidrtError naming the first size outside a component's declared range."""
    s = model.vae_scale_factor
    unet_batch = videos * (2 if do_cfg else 1)
    specs = model.specs()
    specs["image_encoder"].check({"B": batch})
    specs["vae_encoder"].check({"B": batch, "H": height, "W": width})
    specs["unet"].check({"B": unet_batch, "F": frames, "h": height // s, "w": width // s})
    specs["vae_decoder"].check({"N": min(chunk, frames * videos), "h": height // s, "w": width // s})


def _initial_latents(shape, latents, generator, init_noise_sigma) -> torch.Tensor:
    if isinstance(latents, np.ndarray):
        latents = torch.from_numpy(np.ascontiguousarray(latents))
    if latents is None:
        latents = draw_noise(shape, generator)
    elif not isinstance(latents, torch.Tensor):
        raise VidrtError(f"latents must be a torch.Tensor or a NumPy array of shape {list(shape)}, not {type(latents).__name__}")
    else:
        if tuple(latents.shape) != tuple(shape):
            raise VidrtError(f"latents have shape {list(latents.shape)}, this request needs {list(shape)}")
        if not torch.isfinite(latents).all():
            raise VidrtError("latents contain NaN or Inf; pass finite values (e.g. torch.randn)")
        latents = latents.to(torch.float32).clone()
    return latents.mul_(init_noise_sigma)
