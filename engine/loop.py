"""The denoising loop, written once for every backend and model family.

Per step: scale the latents into the UNet's input buffer (whose extra channels,
if the model has any, hold the SVD image latents, written once), one UNet call
for both guidance halves, guidance combined into a reused buffer, sampler step
in place.
The step body reads the step's scalars from a small tensor, so on a GPU it is
captured once per shape as a CUDA graph and replayed for every step. A step-cached
transformer (vidrt.step_cache) is two graphs with the host's decision between them: its
head, then the rest for that decision pattern.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import time

import torch

from .backends.base import held
from .cache import MAX_CACHED_SHAPES, BoundedCache
from .control import NO_CONTROL, RequestControl


@dataclasses.dataclass
class Conditioning:
    """Per-request UNet inputs that stay fixed across steps (CFG halves already stacked).

    ``inputs`` are UNet engine inputs by name (SVD: image embeddings and time ids;
    text-to-video: prompt embeddings). ``sample_extra`` are channels appended to the
    sample after the latents' own, the same for every frame (SVD's image latents,
    [G*V, C', h, w]). ``channel_axis`` is where channels sit in the latents: 2 for
    SVD's [V, F, C, h, w], 1 for text-to-video's [V, C, F, h, w]. ``keep``, broadcastable
    to the latents, is 0 where latents are held (LTX's image frame in image to video): the
    guided prediction is multiplied by it before the sampler's step.
    """

    inputs: dict[str, torch.Tensor]
    sample_extra: torch.Tensor | None = None
    channel_axis: int = 2
    keep: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        return list(self.inputs.values()) + [t for t in (self.sample_extra, self.keep) if t is not None]

    def like(self) -> "Conditioning":
        """Empty tensors of the same shapes (a step buffer's copy)."""
        extra, keep = (torch.empty_like(t) if t is not None else None for t in (self.sample_extra, self.keep))
        return Conditioning({k: torch.empty_like(v) for k, v in self.inputs.items()}, extra, self.channel_axis, keep)

    def sample_shape(self, latents: torch.Tensor, groups: int) -> tuple[int, ...]:
        """Shape of the UNet's sample input: both guidance groups, extra channels appended."""
        shape = list(latents.shape)
        shape[0] *= groups
        if self.sample_extra is not None:
            shape[self.channel_axis] += self.sample_extra.shape[1]
        return tuple(shape)


_SERIALS = itertools.count(1)


@dataclasses.dataclass
class StepBuffers:
    """Everything one step reads or writes, allocated once per shape. A captured CUDA
    graph reads these addresses on every replay, so each request copies its own
    latents and conditioning in rather than handing over new tensors."""

    latents: torch.Tensor
    cond: Conditioning
    guidance: torch.Tensor | None
    unet_in: torch.Tensor
    unet_out: torch.Tensor
    timestep: torch.Tensor
    guided: torch.Tensor | None
    coef: torch.Tensor  # this step's sampler coefficients, on the device
    noise: torch.Tensor | None
    host_noise: torch.Tensor | None  # where a CPU generator draws before the copy
    serial: int = 0  # which allocation: a graph captured on evicted buffers never replays on new ones

    @classmethod
    def allocate(cls, groups: int, latents: torch.Tensor, cond: Conditioning, guidance, n_coef: int,
                 needs_noise: bool, noise_device) -> "StepBuffers":
        dev = latents.device
        on_host = needs_noise and torch.device(noise_device) != dev
        return cls(
            latents=torch.empty_like(latents),
            cond=cond.like(),
            guidance=torch.empty_like(guidance) if guidance is not None else None,
            unet_in=torch.empty(cond.sample_shape(latents, groups), device=dev),
            unet_out=torch.empty((groups * latents.shape[0], *latents.shape[1:]), device=dev),
            timestep=torch.empty(1, device=dev),
            guided=torch.empty_like(latents) if groups == 2 else None,
            coef=torch.empty(n_coef, device=dev),
            # zeros: a step that draws no noise multiplies this by 0, which must not be NaN
            noise=torch.zeros_like(latents) if needs_noise else None,
            host_noise=torch.empty(latents.shape, pin_memory=dev.type == "cuda") if on_host else None,
            serial=next(_SERIALS),
        )


@dataclasses.dataclass(frozen=True)
class ExpertSwitch:
    """From step ``step`` on, the loop calls ``unet`` with ``guidance`` (Wan 2.2's
    low-noise expert and its guidance scale, shaped like the first's)."""

    step: int
    unet: object
    guidance: torch.Tensor | None


class LoopState:
    """What a pipeline keeps across requests: step buffers and CUDA graphs, per shape.

    ``capture`` turns a step function into an object whose ``replay()`` runs it: CUDA
    graph capture unless given (tests stand in for it on the CPU); given, the loop replays
    on any device.
    """

    def __init__(self, use_cuda_graphs: bool = True, capacity: int = MAX_CACHED_SHAPES, capture=None):
        self.use_cuda_graphs = use_cuda_graphs
        self.buffers = BoundedCache(capacity)
        # a step cache makes up to five graphs per shape (its head, one per decision pattern)
        self.graphs = BoundedCache(capacity * 5)
        self.warmed = BoundedCache(capacity * 5)  # graph keys whose step ran once, eagerly
        self.capture = capture or capture_cuda_graph
        self.any_device = capture is not None


def _step_inputs(b: StepBuffers, latents, cond: Conditioning, videos: int, channels: int, groups: int) -> dict:
    """Writes the step's denoiser inputs (scaled latents per guidance half, timestep) into
    their buffers; returns the denoiser's feeds."""
    for g in range(groups):
        own = b.unet_in[g * videos : (g + 1) * videos].narrow(cond.channel_axis, 0, channels)
        torch.mul(latents, b.coef[0], out=own)
    b.timestep.copy_(b.coef[1:2])
    return {"sample": b.unet_in, "timestep": b.timestep, **cond.inputs}


def _step_update(sampler, b: StepBuffers, latents, guidance, videos: int, rescale: float = 0.0) -> None:
    """Guidance combined (and rescaled), held latents' prediction zeroed, then the
    sampler's update of the latents in place."""
    model_out = b.unet_out
    if guidance is not None:
        uncond, cond_pred = b.unet_out[:videos], b.unet_out[videos:]
        torch.sub(cond_pred, uncond, out=b.guided)
        b.guided.mul_(guidance).add_(uncond)
        if rescale:
            _rescale_guided(b.guided, cond_pred, rescale)
        model_out = b.guided
    if b.cond.keep is not None:
        model_out.mul_(b.cond.keep)
    sampler.apply(latents, model_out, b.coef, b.noise)


def _rescale_guided(guided: torch.Tensor, cond_pred: torch.Tensor, rescale: float) -> None:
    """Guidance rescale in place (Lin et al. 2023, "Common Diffusion Noise Schedules and
    Sample Steps are Flawed", section 3.4): each video's guided prediction scaled towards
    the standard deviation of its conditional one, by the fraction ``rescale``
    (r * g * s_c / s_g + (1 - r) * g, per video; diffusers' rescale_noise_cfg)."""
    dims = list(range(1, guided.ndim))
    ratio = cond_pred.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    guided.mul_(ratio.mul_(rescale).add_(1.0 - rescale))


def _step_body(unet, sampler, b: StepBuffers, latents, cond: Conditioning, guidance, videos: int, channels: int,
               rescale: float = 0.0):
    """One denoising step on device tensors only (capturable)."""
    feeds = _step_inputs(b, latents, cond, videos, channels, 2 if guidance is not None else 1)
    unet(**feeds, out={"noise_pred": b.unet_out})
    _step_update(sampler, b, latents, guidance, videos, rescale)


def _step_head(unet, b: StepBuffers, videos: int, channels: int, groups: int) -> None:
    """A cached denoiser's step up to its decision (device only: capturable)."""
    unet.run_head(**_step_inputs(b, b.latents, b.cond, videos, channels, groups))


def _step_rest(unet, sampler, b: StepBuffers, run: tuple, videos: int, rescale: float = 0.0) -> None:
    """A cached denoiser's step after its decision ``run`` (device only: capturable)."""
    unet.run_rest(run, out={"noise_pred": b.unet_out}, sample=b.unet_in, timestep=b.timestep, **b.cond.inputs)
    _step_update(sampler, b, b.latents, b.guidance, videos, rescale)


def denoise(
    unet,
    sampler,
    latents: torch.Tensor,
    cond: Conditioning,
    guidance: torch.Tensor | None,
    generator: torch.Generator | None,
    step_times: list,
    progress: bool = False,
    state: LoopState | None = None,
    switch: ExpertSwitch | None = None,
    guidance_per_step: list[float] | None = None,
    control: RequestControl = NO_CONTROL,
    guidance_rescale: float = 0.0,
    on_step=None,
) -> torch.Tensor:
    """Runs every sampler step; returns the denoised latents ([V, F, C, h, w]).

    Args:
        unet: the UNet engine.
        sampler: a sampler with timesteps set.
        latents: initial latents (already scaled by init_noise_sigma), on the
            engines' device (copied into the step buffers, not modified);
            [V, F, C, h, w] for SVD, [V, C, F, h, w] for text-to-video.
        cond: conditioning; its batch is 2V with guidance, else V.
        guidance: guidance scale broadcastable to the latents (SVD's is per frame),
            on the device, or None to skip CFG.
        generator: the request's generator (stochastic samplers draw from it).
        step_times: receives each step's seconds (the UNet call; the whole step
            when it replays as a CUDA graph).
        progress: show a progress bar.
        state: buffers and graphs kept across requests (default: fresh).
        switch: a second denoiser taking over at a step (same inputs and shapes).
        guidance_per_step: a guidance scale per step replacing ``guidance``'s value
            (CogVideoX's dynamic guidance); written into the step's buffer before it runs.
        control: the request's progress callback and cancel token: told after every
            step, checked before each (vidrt.Cancelled stops the loop there).
        guidance_rescale: the fraction by which the guided prediction is rescaled to the
            conditional one's standard deviation (0: off; LTX-Video's guidance_rescale).
        on_step: ``on_step(i, latents)`` after step i (outside its timing), handed the
            loop's latents; what it returns, if not None, replaces them (diffusers'
            callback_on_step_end, through BasePipeline.step_callback).
    """
    from tqdm.auto import tqdm

    state = state or LoopState()
    videos, channels = latents.shape[0], latents.shape[cond.channel_axis]
    groups = 2 if guidance is not None else 1
    sampler.begin(generator)
    # Every step's scalars in one host table, built once; a step copies its row in.
    coefs = torch.tensor([sampler.coefficients(i) for i in range(sampler.num_steps)], dtype=torch.float32)
    first = generator[0] if isinstance(generator, (list, tuple)) else generator
    noise_device = first.device if first is not None else torch.device("cpu")
    key = (groups, tuple(latents.shape), tuple(tuple(t.shape) for t in cond.tensors()), latents.device.type,
           sampler.name, id(unet))
    b = state.buffers.get_or_make(
        key, lambda: StepBuffers.allocate(groups, latents, cond, guidance, coefs.shape[1], sampler.needs_noise, noise_device)
    )
    b.latents.copy_(latents)
    for mine, given in zip(b.cond.tensors(), cond.tensors()):
        mine.copy_(given)
    if guidance is not None:
        b.guidance.copy_(guidance)
    if cond.sample_extra is not None:  # written once: only the latents' channels change per step
        extra = b.unet_in.narrow(cond.channel_axis, channels, cond.sample_extra.shape[1])
        extra.copy_(cond.sample_extra.unsqueeze(3 - cond.channel_axis))
    cuda = latents.device.type == "cuda"
    denoisers = (unet,) if switch is None else (unet, switch.unet)
    graphs = (cuda or state.any_device) and state.use_cuda_graphs and sampler.capturable and all(
        getattr(d, "supports_cuda_graphs", False) for d in denoisers)
    coefs = coefs.pin_memory() if cuda else coefs
    timer = _Timer(cuda)
    copied = None
    control.report("denoise", 0, sampler.num_steps)
    for denoiser in denoisers:
        if hasattr(denoiser, "begin_request"):  # a step cache (vidrt.step_cache): fresh state per request
            denoiser.begin_request(groups, sampler.num_steps)
    holding = contextlib.ExitStack()  # an on-demand denoiser loads once for the loop
    holding.enter_context(held(unet))
    with holding:
        for i in tqdm(range(sampler.num_steps), desc="denoise", disable=not progress, unit="step"):
            if switch is not None and i == switch.step:
                holding.close()  # the first expert is freed before the second loads
                holding.enter_context(held(switch.unet))
                unet, key = switch.unet, (*key, "expert-2")
                if guidance is not None:
                    b.guidance.copy_(switch.guidance)
            b.coef.copy_(coefs[i], non_blocking=cuda)
            if guidance_per_step is not None and b.guidance is not None:
                b.guidance.fill_(guidance_per_step[i])
            if sampler.draws_noise(i):
                if b.host_noise is not None:
                    # The CPU generator draws into pinned memory; the one host sync of the
                    # loop waits until the previous step's copy has left that buffer.
                    if copied is not None:
                        copied.synchronize()
                    b.noise.copy_(sampler.draw(latents.shape, generator, out=b.host_noise), non_blocking=True)
                    copied = torch.cuda.Event()
                    copied.record()
                else:
                    sampler.draw(latents.shape, generator, out=b.noise)
            # Graphs replay from each denoiser's second step: its first runs eagerly, which also
            # warms TensorRT up (profiles set, lazy allocations done); so does each graph's first run.
            if graphs and i > 0 and not (switch is not None and i == switch.step):
                with timer.span(step_times):
                    if hasattr(unet, "decide"):  # a step cache: two graphs around the host's decision
                        feeds = {"sample": b.unet_in, "timestep": b.timestep, **b.cond.inputs}
                        own = (*key, b.serial, guidance_rescale, *unet.graph_key(**feeds))
                        head = functools.partial(_step_head, unet, b, videos, channels, groups)
                        _run_graph(state, (*own, "head"), head)
                        run = unet.decide(**feeds)
                        _run_graph(state, (*own, run), functools.partial(_step_rest, unet, sampler, b, run, videos,
                                                                         guidance_rescale))
                    else:
                        _run_graph(state, (*key, b.serial, guidance_rescale), functools.partial(
                            _step_body, unet, sampler, b, b.latents, b.cond, b.guidance, videos, channels,
                            guidance_rescale))
            else:
                with timer.span(step_times):
                    _step_body(unet, sampler, b, b.latents, b.cond, b.guidance, videos, channels, guidance_rescale)
            control.report("denoise", i + 1)
            if on_step is not None:
                replaced = on_step(i, b.latents)
                if replaced is not None and replaced is not b.latents:
                    b.latents.copy_(replaced)
    timer.collect(step_times)
    control.report("decode", sampler.num_steps)
    return b.latents.clone()  # the buffer belongs to the next request of this shape


def _run_graph(state: LoopState, key, step) -> None:
    """Runs ``step`` (device work only) as the graph under ``key``. Its first run is eager
    and it is captured at its second: TensorRT wants one run of a context at a shape before
    a capture (a step cache's body meets a new row count with a new decision pattern)."""
    graph = state.graphs.get(key)
    if graph is None:
        if state.warmed.get(key) is None:
            state.warmed.put(key, True)
            step()
            return
        graph = state.capture(step)
        state.graphs.put(key, graph)
    graph.replay()


def capture_cuda_graph(step):
    """``step``'s kernels captured as a CUDA graph on the current stream (not run)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=torch.cuda.current_stream()):
        step()
    return graph


class _Timer:
    """Step timing without host synchronisation: CUDA events on a GPU (read after
    the loop), perf_counter on the CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.events: list = []

    def span(self, out: list):
        timer = self

        class Span:
            def __enter__(self):
                if timer.cuda:
                    self.start = torch.cuda.Event(enable_timing=True)
                    self.start.record()
                else:
                    self.start = time.perf_counter()

            def __exit__(self, *exc):
                if timer.cuda:
                    end = torch.cuda.Event(enable_timing=True)
                    end.record()
                    timer.events.append((self.start, end))
                else:
                    out.append(time.perf_counter() - self.start)
                return False

        return Span()

    def collect(self, out: list) -> None:
        if self.events:
            self.events[-1][1].synchronize()
            out.extend(s.elapsed_time(e) / 1000.0 for s, e in self.events)
