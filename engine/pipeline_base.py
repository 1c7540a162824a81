"""What every model family's pipeline shares: loading (and building) the engines of a
model folder, one request at a time per pipeline on vidrt's own stream, the stage clock,
the output types and the request checks. A family's pipeline (vidrt.families.<family>.pipeline)
derives from BasePipeline and adds how it conditions, denoises and decodes a request;
this module reaches them only through the registry in vidrt.families, by name.
"""

from __future__ import annotations

import abc
import contextvars
import dataclasses
import math
import numbers
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .backends import get_backend
from .backends.base import release
from .build import check_on_demand, load_engines, prepare_engines
from .control import NO_CONTROL, CancelToken, RequestControl
from .errors import VidrtError
from .families import family_pipeline
from .layout import default_engine_dir
from .loop import LoopState
from .samplers import check_sampler, draw_noise, make_sampler
from .sources import check_unet_weights, check_weight_paths, resolve_model
from .split import stage_names
from .step_cache import CachedDenoiser, as_cache_config, split_for_cache, summarize

OUTPUT_TYPES = ("pil", "np", "pt", "latent")

# The progress callback and cancel token of the request this context is making
# (set by BasePipeline.generate; a plain call has none).
_REQUEST_CONTROL: contextvars.ContextVar[RequestControl] = contextvars.ContextVar("vidrt_request", default=NO_CONTROL)


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
    # step caching (vidrt.step_cache): per denoiser, {"full": n, "skipped": m, "decisions": [...]}
    cache: dict = dataclasses.field(default_factory=dict)

    @property
    def unet(self) -> float:
        return float(sum(self.unet_steps))


class BasePipeline(abc.ABC):
    """Engines of one model, served one request at a time (see ``from_pretrained``). A
    family's pipeline adds ``__call__`` with its diffusers pipeline's arguments, which
    hands them to ``_serve``, and ``_generate``, which runs them."""

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
        self._control = NO_CONTROL  # the running request's (set under the lock)

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
        on_demand: tuple[str, ...] = (),
        cache=None,
        cache_threshold: float | None = None,
        seed: int = 0,
        build: bool = True,
        progress: bool = True,
    ) -> "BasePipeline":
        """Loads (building what is missing) the engines for a model.

        Args:
            model: preset (vidrt.sources.ALL_PRESETS), local diffusers folder or hub id.
                The folder's model_index.json picks the pipeline: StableVideoDiffusionPipeline
                gives a VideoPipeline (image to video); TextToVideoSDPipeline and
                AnimateDiffPipeline give a TextToVideoPipeline (vidrt.families.t2v.pipeline),
                WanPipeline a WanTextToVideoPipeline, LTXPipeline and
                LTXImageToVideoPipeline their vidrt namesakes, CogVideoXPipeline a
                CogVideoXTextToVideoPipeline and CogVideoXImageToVideoPipeline its namesake
                (vidrt.families.<family>.pipeline).
            engine_dir: where engines live (default: under $VIDRT_CACHE).
            backend: "auto" or a backend name.
            precision: engine precision.
            sampler: one of vidrt.samplers.SAMPLERS ("euler", "animatelcm" for SVD;
                "ddim", "lcm", "dpm++", "euler", "scheduler" for text to video;
                vidrt.samplers.SAMPLERS_FOR lists each model kind's), or None for the one
                matching the model folder's scheduler.
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
            on_demand: components loaded for each call and freed after it (a component's
                kind names all its parts: "text_encoder" is every part of Wan's split UMT5),
                so their weights take memory only while they run; each call pays the load.
            cache: step caching for a diffusion transformer (Wan, LTX-Video, CogVideoX):
                "first-block" or "mag", or a vidrt.CacheConfig (MagCache's ratio table and
                limits); the transformer is built and run as head/body/out engines and the
                body skipped on steps the cache judges (vidrt.step_cache). None: no cache.
            cache_threshold: the cache's threshold in 0..1 (None: diffusers' default for
                the method, 0.05 for first-block, 0.06 for mag).
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
        cache = as_cache_config(cache, cache_threshold)
        if cache is not None:
            m = split_for_cache(m, cache)
        check_sampler(sampler, m.kind)
        make_sampler(sampler, m.scheduler)  # fail early on a bad sampler name
        check_on_demand(on_demand, m.specs())
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
        engines = load_engines(engine_dir, backend_cls, precision, m, component_precision, backend_options, on_demand)
        if cache is not None:
            for e in m.denoisers:
                stages = {role: engines.pop(c) for role, c in stage_names(e, m.split_denoisers).items()}
                engines[e] = CachedDenoiser(e, stages, cache, per_half=m.cache_contexts == "per-half")
        pipe = family_pipeline(m.kind)(m, engines, sampler, backend_cls.name, precision, engine_dir, backend_cls.device, cuda_graphs)
        pipe.builds = builds
        return pipe

    def set_cache(self, cache, threshold: float | None = None) -> None:
        """Changes the step cache's method or threshold for the next requests (same engines).

        Args:
            cache: "first-block", "mag" or a vidrt.CacheConfig.
            threshold: as from_pretrained's cache_threshold.

        Raises:
            VidrtError: the pipeline was loaded without a cache (its transformer is one
                engine: load it with cache=...), or a bad method or threshold.
        """
        config = as_cache_config(cache, threshold)
        denoisers = {n: e for n, e in self.engines.items() if isinstance(e, CachedDenoiser)}
        if not denoisers:
            raise VidrtError("this pipeline was loaded without a step cache; load it with cache='first-block' or 'mag'")
        if config is None:
            raise VidrtError("set_cache needs a method; to run without skipping, pass cache_threshold=0")
        for e in denoisers.values():
            e.check(config)
        with self._lock:
            for e in denoisers.values():
                e.config = config

    def generate(self, *args, on_progress=None, cancel: CancelToken | None = None, **kwargs):
        """Calls the pipeline (``__call__``'s arguments) with a progress callback and a cancel token.

        Args:
            on_progress: called with a vidrt.Progress at each stage and after each
                denoising step, on the thread running the request (from ``agenerate``:
                a worker thread; hand it to the event loop with ``call_soon_threadsafe``).
            cancel: a vidrt.CancelToken; ``cancel()`` from any thread stops the request
                before its next step or stage.

        Returns:
            What ``__call__`` returns.

        Raises:
            vidrt.Cancelled: the token was cancelled before the request finished.
            VidrtError: a bad request or option, as ``__call__``.
        """
        reset = _REQUEST_CONTROL.set(RequestControl(on_progress, cancel))
        try:
            return self(*args, **kwargs)
        finally:
            _REQUEST_CONTROL.reset(reset)

    async def agenerate(self, *args, on_progress=None, cancel: CancelToken | None = None, **kwargs):
        """``generate`` without blocking the event loop: the request runs on a worker
        thread. Cancelling the awaiting task cancels the request (it stops within one
        step) and waits for it to stop before re-raising, so the pipeline is free again."""
        import asyncio
        import functools

        cancel = cancel if cancel is not None else CancelToken()
        call = functools.partial(self.generate, *args, on_progress=on_progress, cancel=cancel, **kwargs)
        future = asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.cancel()
            await asyncio.wait([future])
            raise

    def _serve(self, request: dict):
        """Runs one request under the pipeline's lock, on vidrt's own stream on a GPU.

        A pipeline owns one set of step, engine-output and I/O buffers (and, on OpenVINO,
        one infer request), so calls from several threads take turns: each returns
        exactly what it would alone. ``timings`` then describes the last call to finish;
        each output carries its own. Between requests the engines hold their weights, not
        their intermediate tensors (Engine.release).
        """
        control = _REQUEST_CONTROL.get()
        with self._lock:
            self._control = control
            try:
                control.report("encode")
                if self.stream is None:
                    result = self._generate(**request)
                else:
                    with torch.cuda.stream(self.stream):  # every op of the request on vidrt's own stream
                        result = self._generate(**request)
                self.timings.cache = {name: summarize(e.calls) for name, e in self.engines.items()
                                      if isinstance(e, CachedDenoiser) and e.calls}
                return result
            finally:
                self._control = NO_CONTROL
                release(*self.engines.values())  # between requests a pipeline holds its weights only

    @abc.abstractmethod
    def _generate(self, **request):
        """Runs one request (``__call__``'s arguments by name); returns the output."""

    def _encode_unmasked(self, texts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Text states [len(texts), length, D] of a T5 run without an attention mask, as
        LTXPipeline and CogVideoXPipeline run it (the padding to ``length`` attended): one
        call, or one per part of a split encoder, each continuing from the last one's
        states. Returns (states, the tokenizer's [len(texts), length] mask)."""
        tok = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                             return_tensors="pt")
        warn_truncated(self.tokenizer, texts, length)
        t0 = self._now()
        parts = [self.engines[p] for p in self.model.text_parts]
        states = parts[0](input_ids=tok.input_ids.to(torch.int64).to(self.device))
        for part in parts[1:]:
            states = part(hidden_states=states["next_hidden_states"])
        self.timings.text_encoder = self._now() - t0
        return states["last_hidden_state"], tok.attention_mask.to(torch.int64).to(self.device)

    def _image_pixels(self, image, videos: int, per_prompt: int, height: int, width: int) -> torch.Tensor:
        """``image`` (one image, or one per prompt) resized to height x width as diffusers'
        video processor does: [images, 3, H, W] in [-1, 1].

        Raises:
            VidrtError: the number of images fits neither one nor one per prompt.
        """
        images = image if isinstance(image, list) else [image]
        prompts = videos // per_prompt
        if len(images) not in (1, prompts):
            raise VidrtError(f"{len(images)} images for {prompts} prompts; pass one image, or one per prompt")
        return self.video_processor.preprocess(images, height=height, width=width).to(torch.float32)

    def _sample_image_latents(self, image, videos: int, per_prompt: int, generator, height: int, width: int):
        """Each image encoded by the ``vae_encoder`` engine (mean and std of its latent) and
        its latent sampled from the request's generator, image by image, as diffusers'
        image-to-video pipelines draw them (a list of generators: one draw per video, each
        from its own). ``image``: one image, or one per prompt. Returns [videos, C, 1, h, w],
        each prompt's videos adjacent.

        Raises:
            VidrtError: the number of images fits neither one nor one per prompt.
        """
        pixels = self._image_pixels(image, videos, per_prompt, height, width)
        if isinstance(generator, list):
            pixels = pixels.repeat_interleave(videos // len(pixels), dim=0)
        t0 = self._now()
        samples = []
        for i in range(len(pixels)):  # each sample taken before the next call reuses the engine's outputs
            out = self.engines["vae_encoder"](image=pixels[i : i + 1].to(self.device))
            g = generator[i] if isinstance(generator, list) else generator
            noise = draw_noise(out["latent_mean"].shape, g).to(self.device)
            samples.append(out["latent_mean"] + out["latent_std"] * noise)
        self.timings.vae_encoder = self._now() - t0
        samples = torch.cat(samples)
        return samples if len(samples) == videos else samples.repeat_interleave(videos // len(samples), dim=0)

    def step_callback(self, callback, tensor_inputs, sampler, public=None, private=None):
        """diffusers' ``callback_on_step_end`` as the loop's ``on_step`` (None without one).

        ``callback(pipe, i, t, {"latents": ...})`` runs after each step with the latents in
        diffusers' layout for the family (``public`` makes that view of the loop's; LTX
        packs them), as diffusers calls it; ``latents`` in the dict it returns replace the
        loop's (``private`` brings them back). A diffusers PipelineCallback's own
        ``tensor_inputs`` are used, as diffusers does.

        Raises:
            VidrtError: a callback that is not callable, or tensor inputs other than latents.
        """
        if callback is None:
            return None
        if not callable(callback):
            raise VidrtError(f"callback_on_step_end must be callable, not {type(callback).__name__}")
        names = list(getattr(callback, "tensor_inputs", None) or tensor_inputs or ["latents"])
        if any(n != "latents" for n in names):
            raise VidrtError(f"callback_on_step_end_tensor_inputs={names}: vidrt hands the callback 'latents' only")

        def on_step(i: int, latents: torch.Tensor):
            seen = public(latents) if public else latents
            returned = (callback(self, i, sampler.timesteps[i], {"latents": seen}) or {}).get("latents")
            if returned is None or returned is seen:
                return None
            if not isinstance(returned, torch.Tensor) or returned.shape != seen.shape:
                got = list(returned.shape) if hasattr(returned, "shape") else type(returned).__name__
                raise VidrtError(f"callback_on_step_end returned latents of shape {got}; the loop's are "
                                 f"{list(seen.shape)}")
            returned = returned.to(latents.device, torch.float32)
            return private(returned) if private else returned

        return on_step

    def _now(self) -> float:
        """Stage clock: on a GPU, waits for the stream first (stage boundaries only,
        never inside the denoising loop, which times itself with CUDA events)."""
        if self.stream is not None:
            self.stream.synchronize()
        return time.perf_counter()


def check_finite(**values) -> None:
    """Raises VidrtError naming the first value that is not a finite number (a NaN or
    infinite guidance scale would silently give black videos, or turn guidance off).
    NumPy's scalars count as numbers, as they do for diffusers."""
    for name, value in values.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise VidrtError(f"{name}={value!r}: must be a finite number")


def check_text_length(length, limit: int) -> int:
    """``max_sequence_length`` as an int in 1..``limit`` (NumPy integers too), else VidrtError."""
    if isinstance(length, (bool, np.bool_)) or not isinstance(length, numbers.Integral) or not 1 <= length <= limit:
        raise VidrtError(f"max_sequence_length={length!r}: must be a whole number in 1..{limit}")
    return int(length)


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


def initial_latents(shape, latents, generator, init_noise_sigma) -> torch.Tensor:
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


def load_tokenizer(folder: Path, cls_name: str = "AutoTokenizer"):
    """The model folder's tokenizer (a transformers class by name).

    Raises:
        VidrtError: the tokenizer files are missing or unreadable.
    """
    import transformers

    try:
        return getattr(transformers, cls_name).from_pretrained(folder / "tokenizer")
    except (OSError, ValueError) as e:
        raise VidrtError(f"cannot load the tokenizer in {folder / 'tokenizer'}: {str(e).splitlines()[0]}") from None


def warn_truncated(tokenizer, texts, length) -> None:
    """Warns with the dropped text when a prompt is longer than ``length`` tokens (as
    diffusers does), pointed at the pipeline's caller."""
    import warnings

    full = tokenizer(texts, padding="longest", add_special_tokens=True, return_tensors="pt").input_ids
    if full.shape[-1] > length:
        removed = tokenizer.batch_decode(full[:, length - 1 : -1], skip_special_tokens=True)
        warnings.warn(f"vidrt: prompt truncated to max_sequence_length={length} tokens; dropped: {removed}",
                      stacklevel=caller_stacklevel())


def caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised by this function's caller at the
    first frame outside vidrt and torch (whose no_grad wrapper sits around ``__call__``):
    the user's call, however deep in vidrt the warning is raised."""
    import sys

    inside = (str(Path(__file__).resolve().parent), str(Path(torch.__file__).resolve().parent))
    frame, level = sys._getframe(2), 2  # the warning function's caller is stacklevel 2
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level
