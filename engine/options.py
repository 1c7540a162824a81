"""Options shared by the commands: which model and engines, and what to generate.

Each command's config is a frozen dataclass built on these; CLI flags map
one-to-one onto fields (``--unet-weights`` → ``unet_weights``), None means default.
"""

from __future__ import annotations

import dataclasses

from .errors import VidrtError


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """Which model, and which engines to build or load for it."""

    model: str = "svd-xt"
    unet_weights: str | None = None
    motion_adapter: str | None = None
    engine_dir: str | None = None
    backend: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    # TensorRT build options (ignored by other backends; see vidrt.trt_plan).
    min: str | None = None
    opt: str | None = None
    max: str | None = None
    static: str | None = None
    workspace: int | None = None
    opt_level: int = 3
    timing_cache: str | None = None
    tf32: bool = False
    build_timeout: float | None = None
    component_precision: str | None = None
    no_cuda_graphs: bool = False
    # OpenVINO compile options.
    threads: int | None = None
    streams: int = 1
    # Step caching (vidrt.step_cache): the transformer as head/body/out engines.
    cache: str | None = None
    cache_threshold: float | None = None
    mag_ratios: str | None = None  # comma-separated, @file.json (a list), or "calibrate"

    def cache_config(self):
        """--cache/--cache-threshold/--mag-ratios as a vidrt.CacheConfig, or None.

        Raises:
            VidrtError: a bad method, threshold or ratio list.
        """
        from .step_cache import CacheConfig, as_cache_config

        if self.mag_ratios is not None and self.cache != "mag":
            raise VidrtError("--mag-ratios goes with --cache mag")
        if self.cache == "mag":
            return CacheConfig("mag", self.cache_threshold, _ratios(self.mag_ratios))
        return as_cache_config(self.cache, self.cache_threshold)

    def model_for_build(self, model):
        """``model`` as the build sees it: the transformer cut in stages under --cache."""
        from .step_cache import split_for_cache

        cache = self.cache_config()
        if cache is None:
            return model
        return split_for_cache(model, cache)

    def trt_options(self):
        """TrtOptions from the flags (shape ranges checked here, before any work)."""
        from .trt_plan import ShapeRequest, TrtOptions

        shapes = ShapeRequest.from_flags(self.min, self.opt, self.max, self.static)
        return TrtOptions(shapes=shapes, optimization_level=self.opt_level, workspace_mb=self.workspace,
                          timing_cache=self.timing_cache, tf32=self.tf32, build_timeout_s=self.build_timeout)

    def component_precisions(self) -> dict[str, str]:
        """--component-precision 'vae_decoder=fp32,image_encoder=fp16' as a dict."""
        from .errors import VidrtError

        out = {}
        for part in filter(None, (self.component_precision or "").split(",")):
            name, sep, value = part.partition("=")
            if not sep or not value:
                raise VidrtError(f"--component-precision {self.component_precision}: write component=precision, comma-separated")
            out[name.strip()] = value.strip()
        return out

    def openvino_options(self):
        """OvOptions from the flags (--static, --threads, --streams)."""
        from .backends.openvino import OvOptions
        from .trt_plan import parse_dims

        if self.threads is not None and self.threads < 1 or self.streams < 1:
            raise VidrtError("--threads and --streams take whole numbers >= 1")
        static = parse_dims(self.static, "--static") if self.static else None
        return OvOptions(static=static, threads=self.threads, streams=self.streams)

    def engine_kwargs(self) -> dict:
        """VideoPipeline.from_pretrained / prepare_engines keywords from these options.

        Raises:
            VidrtError: build flags the chosen backend does not take, or malformed values.
        """
        from .backends import get_backend

        backend = get_backend(self.backend, precision=self.precision).name
        if self.uses_trt_flags() and backend != "tensorrt":
            raise VidrtError(f"--min/--opt/--max/--workspace/--opt-level/--timing-cache/--tf32/--build-timeout are TensorRT build flags; "
                             f"--backend {backend} takes none of them")
        if self.static and backend == "onnxruntime":
            raise VidrtError("--static specialises TensorRT and OpenVINO engines; --backend onnxruntime takes dynamic shapes only")
        options = {"tensorrt": self.trt_options, "openvino": self.openvino_options}.get(backend, lambda: None)()
        return {"backend_options": options, "component_precision": self.component_precisions() or None}

    def uses_trt_flags(self) -> bool:
        return any((self.min, self.opt, self.max, self.workspace, self.timing_cache, self.opt_level != 3, self.tf32,
                    self.build_timeout is not None))


@dataclasses.dataclass(frozen=True)
class RequestOptions(EngineOptions):
    """A generation request on top of the engine options."""

    height: int | None = None  # None: the pipeline's default (SVD 576x1024; text to video: the UNet's sample size)
    width: int | None = None
    num_frames: int | None = None
    steps: int = 25
    sampler: str | None = None  # None: the one matching the model folder's scheduler
    min_guidance: float = 1.0  # image to video: guidance at the first frame
    max_guidance: float = 3.0  # image to video: guidance at the last frame
    batch_size: int = 1
    prompt: str | None = None  # text to video
    negative_prompt: str | None = None
    guidance_scale: float | None = None  # text to video; None: the pipeline's default
    guidance_scale_2: float | None = None  # Wan 2.2's low-noise expert; None: guidance_scale
    on_demand: str | None = None  # comma-separated components loaded for each call, freed after it
    pipeline_arg: list[str] | None = None  # NAME=VALUE: the pipeline's other keywords (frame_rate, sigmas, ...)

    def pipeline_args(self) -> dict:
        """--pipeline-arg NAME=VALUE items as {name: value}, each value read as JSON
        (numbers, true/false, null, lists), else as text.

        Raises:
            VidrtError: an item that is not NAME=VALUE.
        """
        import json

        out = {}
        for item in self.pipeline_arg or ():
            name, sep, text = item.partition("=")
            if not sep or not name.strip().isidentifier():
                raise VidrtError(f"--pipeline-arg {item!r}: write NAME=VALUE, e.g. --pipeline-arg frame_rate=24")
            try:
                out[name.strip()] = json.loads(text)
            except ValueError:
                out[name.strip()] = text
        return out

    def on_demand_components(self) -> tuple[str, ...]:
        """--on-demand 'text_encoder' as a tuple of component names."""
        return tuple(c.strip() for c in (self.on_demand or "").split(",") if c.strip())

    def load_pipeline(self, progress: bool = True):
        """VideoPipeline.from_pretrained with these options (building what is missing)."""
        from .families.svd.pipeline import VideoPipeline

        return VideoPipeline.from_pretrained(
            self.model, engine_dir=self.engine_dir, backend=self.backend, precision=self.precision,
            sampler=self.sampler, unet_weights=self.unet_weights, motion_adapter=self.motion_adapter, seed=self.seed,
            cuda_graphs=not self.no_cuda_graphs, on_demand=self.on_demand_components(), progress=progress,
            cache=self.cache_config(), **self.engine_kwargs(),
        )

    def size(self, model) -> tuple[int, int]:
        """(height, width) of the request on ``model``, defaults filled in as the pipelines do."""
        default = (576, 1024) if model.kind == "image-to-video" else model.default_size
        return (self.height if self.height is not None else default[0],
                self.width if self.width is not None else default[1])

    def frames(self, model) -> int:
        """Frames per video of the request on ``model``: --num-frames, else the model's."""
        return self.num_frames if self.num_frames is not None else model.default_num_frames

    def guided(self, model) -> bool:
        """Whether this request runs classifier-free guidance on ``model``."""
        if model.kind == "image-to-video":
            return self.max_guidance > 1.0
        scale = self.guidance_scale if self.guidance_scale is not None else model.default_guidance_scale
        return scale > 1.0


def _ratios(text: str | None):
    """--mag-ratios: None, "calibrate", "@file.json" (a JSON list) or "1.0,0.99,...".

    Raises:
        VidrtError: an unreadable file or a value that is not a number.
    """
    import json
    from pathlib import Path

    if text is None or text == "calibrate":
        return text
    if text.startswith("@"):
        try:
            return tuple(json.loads(Path(text[1:]).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise VidrtError(f"--mag-ratios {text}: cannot read a JSON list of numbers ({e})") from None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise VidrtError(f"--mag-ratios {text}: write numbers separated by commas, @file.json, or calibrate") from None
