"""Step caching: skip the transformer's blocks on steps where they would change little.

The transformer runs as three engines (vidrt.split): ``head`` (embeddings, and for First
Block Cache the first block), ``body`` (the other blocks), ``out`` (final norm and
projection). Each call, a policy decides from the head's result whether the body runs or
its cached residual stands in for it; ``out`` always runs. MagCache, deciding from its
table alone, gets a head without the first block (``HEAD``), so its skipped steps run no
block; First Block Cache's head must hold the first block, and MagCache runs on that one
too (a pipeline loaded for first-block can switch to mag, not back). The policies follow
diffusers' hooks decision for decision (diffusers/hooks/first_block_cache.py,
diffusers/hooks/mag_cache.py):

- ``first-block`` (First Block Cache): the body runs when the first block's residual
  changed, relative to the one at the last full evaluation, by more than the threshold
  (mean |r - r_prev| / mean |r_prev|); else the last block's output is the first
  block's output plus the body's residual from that evaluation.
- ``mag`` (MagCache): skipping follows a per-step table of magnitude ratios (measured
  once per model: ``mag_ratios="calibrate"`` measures them) whose accumulated error must
  stay under the threshold, at most ``max_skip_steps`` in a row, never in the first
  ``retention_ratio`` of the steps; a skipped step adds the last evaluation's residual
  over every block to the first block's input.

Where the family's diffusers pipeline runs the guidance halves as separate calls
(Wan: cache contexts "cond" and "uncond"), each half keeps its own state and decides on
its own, and the body runs on the halves that need it; where it batches them (LTX,
CogVideoX: "cond_uncond"), one state decides for the whole batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers

import torch

from .backends.base import held
from .cache import MAX_CACHED_SHAPES, BoundedCache
from .errors import VidrtError

METHODS = ("first-block", "mag")
HEAD = {"first-block": "first-block", "mag": "embeddings"}  # the cut each loads (vidrt.split.HEADS)
DEFAULT_THRESHOLD = {"first-block": 0.05, "mag": 0.06}  # diffusers' FirstBlockCacheConfig / MagCacheConfig


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    """A step cache: ``method`` (METHODS), ``threshold`` (None: the method's diffusers
    default), and MagCache's ``mag_ratios`` (one per step, or "calibrate"),
    ``max_skip_steps`` and ``retention_ratio``."""

    method: str
    threshold: float | None = None
    mag_ratios: tuple[float, ...] | str | None = None
    max_skip_steps: int = 3
    retention_ratio: float = 0.2

    def __post_init__(self):
        if self.method not in METHODS:
            raise VidrtError(f"cache='{self.method}': choose one of {', '.join(METHODS)}")
        if self.threshold is None:
            object.__setattr__(self, "threshold", DEFAULT_THRESHOLD[self.method])
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0.0 <= t <= 1.0:
            raise VidrtError(f"cache_threshold={t!r}: must be a number in 0..1 (0 skips almost never; diffusers suggests "
                             f"0.05-0.2 for first-block, 0.06-0.12 for mag)")
        object.__setattr__(self, "threshold", float(t))
        if self.method == "mag":
            self._check_mag()
        elif self.mag_ratios is not None:
            raise VidrtError("mag_ratios go with cache='mag', not 'first-block'; drop them")

    def _check_mag(self):
        ratios = self.mag_ratios
        if ratios is None:
            raise VidrtError("cache='mag' needs mag_ratios (one per step, measured for this model); measure them "
                             "with mag_ratios='calibrate' (--mag-ratios calibrate), which skips nothing and reports them")
        if ratios != "calibrate":
            if isinstance(ratios, str) or not ratios or not all(isinstance(r, (int, float)) and r > 0 for r in ratios):
                raise VidrtError(f"mag_ratios={ratios!r}: give positive numbers, one per step, or 'calibrate'")
            object.__setattr__(self, "mag_ratios", tuple(float(r) for r in ratios))
        if isinstance(self.max_skip_steps, bool) or not isinstance(self.max_skip_steps, int) or self.max_skip_steps < 1:
            raise VidrtError(f"max_skip_steps={self.max_skip_steps!r}: must be a whole number >= 1")
        if not 0.0 <= self.retention_ratio <= 1.0:
            raise VidrtError(f"retention_ratio={self.retention_ratio!r}: must be in 0..1")

    def describe(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


class _FirstBlockState:
    """One cache context's host state: whether a full evaluation has run yet."""

    def __init__(self):
        self.has_residual = False


class _MagState:
    def __init__(self):
        self.has_residual = False
        self.ratio = torch.tensor(1.0)  # float32 0-d tensors: diffusers accumulates the table's tensor entries
        self.err = torch.tensor(0.0)
        self.run = 0
        self.step = 0
        self.measured: list[float] = []


class _ShapeBuffers:
    """One input shape's tensors, kept across requests: every stage engine writes into
    them and the policy's device state lives in them, so a step captured as CUDA graphs
    replays on the same addresses. ``serial`` tells a graph made for an evicted set from
    one made for its replacement."""

    def __init__(self, serial: int, head_out: dict, body_out: dict, groups: int, first_block: bool):
        self.serial = serial
        self.head_out, self.body_out = head_out, body_out
        hidden = head_out["hidden_in"]
        self.hidden_last = body_out["hidden_last"]
        self.saved = torch.empty_like(hidden)  # the residual at the last full evaluation (the policy's)
        self.change = torch.zeros(groups, device=hidden.device)  # first-block: relative change per context
        # first-block only (a head without the first block never runs it): this call's
        # first-block residual; the last block's output minus the first's at the last full evaluation
        self.residual = torch.empty_like(hidden) if first_block else None
        self.tail = torch.empty_like(hidden) if first_block else None


class FirstBlockPolicy:
    """First Block Cache's decision and reuse (diffusers' FBCHeadBlockHook / FBCBlockHook).

    ``measure`` and the reuse methods are device work only (a captured step replays them);
    ``decide`` is the host's, from the measured change read back."""

    measures = True

    def __init__(self, config: CacheConfig, steps: int):
        self.threshold = config.threshold

    new_state = staticmethod(_FirstBlockState)

    @staticmethod
    def measure(buf: _ShapeBuffers, parts, hidden_in, hidden_first) -> None:
        torch.sub(hidden_first, hidden_in, out=buf.residual)
        for g, p in enumerate(parts):
            buf.change[g] = (buf.residual[p] - buf.saved[p]).abs().mean() / buf.saved[p].abs().mean()

    def decide(self, s: _FirstBlockState, change: float) -> bool:
        if s.has_residual and not change > self.threshold:
            return False
        s.has_residual = True
        return True

    @staticmethod
    def skipped(s, buf: _ShapeBuffers, p, hidden_in, hidden_first, hidden_last) -> None:
        torch.add(hidden_first[p], buf.tail[p], out=hidden_last[p])

    @staticmethod
    def computed(s, buf: _ShapeBuffers, p, hidden_in, hidden_first, hidden_last) -> None:
        buf.saved[p] = buf.residual[p]
        torch.sub(hidden_last[p], hidden_first[p], out=buf.tail[p])


class MagPolicy:
    """MagCache's decision and reuse (diffusers' MagCacheHeadHook / MagCacheBlockHook),
    the ratio table stretched to the request's steps by nearest index as diffusers does.
    It decides from the table alone (host); calibration reads each ratio back, so a
    calibrating step is never captured."""

    measures = False

    def __init__(self, config: CacheConfig, steps: int):
        self.config, self.steps = config, steps
        self.calibrate = config.mag_ratios == "calibrate"
        self.ratios = None if self.calibrate else _nearest(torch.tensor(config.mag_ratios), steps)

    new_state = staticmethod(_MagState)

    @staticmethod
    def measure(buf, parts, hidden_in, hidden_first) -> None:
        pass

    def decide(self, s: _MagState, change: float) -> bool:
        step, s.step = s.step, s.step + 1
        if self.calibrate:
            return True
        c = self.config
        scale = self.ratios[step] if step < len(self.ratios) else 1.0
        if step >= int(c.retention_ratio * self.steps + 0.5):
            s.ratio = s.ratio * scale
            s.run += 1
            s.err = s.err + abs(1.0 - s.ratio)
            if s.has_residual and s.err <= c.threshold and s.run <= c.max_skip_steps:
                return False
            s.ratio, s.err, s.run = torch.tensor(1.0), torch.tensor(0.0), 0
        s.has_residual = True
        return True

    @staticmethod
    def skipped(s, buf: _ShapeBuffers, p, hidden_in, hidden_first, hidden_last) -> None:
        torch.add(hidden_in[p], buf.saved[p], out=hidden_last[p])

    def computed(self, s: _MagState, buf: _ShapeBuffers, p, hidden_in, hidden_first, hidden_last) -> None:
        if self.calibrate:
            residual = hidden_last[p] - hidden_in[p]
            ratio = 1.0 if len(s.measured) == 0 else float(
                (torch.linalg.norm(residual, dim=-1) / (torch.linalg.norm(buf.saved[p], dim=-1) + 1e-8)).mean())
            s.measured.append(ratio)
        torch.sub(hidden_last[p], hidden_in[p], out=buf.saved[p])


def _nearest(table: torch.Tensor, length: int) -> torch.Tensor:
    if len(table) == length:
        return table
    if length == 1:
        return table[-1:]
    index = torch.round(torch.arange(length, dtype=torch.float32) * ((len(table) - 1) / (length - 1))).long()
    return table[index]


POLICIES = {"first-block": FirstBlockPolicy, "mag": MagPolicy}


class CachedDenoiser:
    """One expert's head, body and out engines behind the denoiser's call
    (``sample``, ``timestep``, the conditioning, ``out=``), skipping the body where the
    cache's policy says so. ``per_half``: one decision per guidance half (see the
    module's docstring). ``calls`` holds, after a request, each call's decision by
    diffusers' cache-context name ("cond", "uncond" or "cond_uncond"; True: the body ran).

    A call is three phases: ``run_head`` (device: the head, and what the policy measures),
    ``decide`` (host: which contexts run the body; First Block Cache reads its measured
    change back, one float per context), ``run_rest`` (device: the body where it runs,
    the cached residual elsewhere, the out engine). On a GPU the loop captures the two
    device phases as CUDA graphs (the second once per decision pattern) and replays them
    around the host's decision (vidrt.loop); elsewhere a call runs them in turn.
    """

    def __init__(self, name: str, engines: dict, config: CacheConfig, per_half: bool):
        self.name = name
        self.head, self.body, self.out = engines["head"], engines["body"], engines["out"]
        self.spec = self.out.spec
        # the head holds the first block (its outputs include the streams after it)
        self.first_block = any(t.name == "hidden_first" for t in self.head.spec.outputs)
        self.check(config)
        self.config = config
        self.per_half = per_half
        self._batched = {t.name for t in self.body.spec.inputs if t.dims[0] == "B"}
        self._shapes = BoundedCache(MAX_CACHED_SHAPES)
        self._serial = 0
        self.policy, self.states, self.labels, self.calls = None, [], (), []

    @property
    def supports_cuda_graphs(self) -> bool:
        """Whether the loop may capture the device phases: every stage engine can be
        captured, and the policy decides without reading tensors in them."""
        engines = (self.head, self.body, self.out)
        calibrating = self.config.method == "mag" and self.config.mag_ratios == "calibrate"
        return all(getattr(e, "supports_cuda_graphs", False) for e in engines) and not calibrating

    def graph_key(self, sample, timestep, **inputs) -> tuple:
        """What a captured phase depends on beyond the loop's own key: the method (its
        device work) and the shape's buffers."""
        return self.config.method, self._buffers(sample, timestep, inputs).serial

    def check(self, config: CacheConfig) -> None:
        """Raises VidrtError if ``config``'s method cannot run on these engines."""
        if config.method == "first-block" and not self.first_block:
            raise VidrtError(f"{self.name}: this pipeline was loaded for cache='mag', whose head engine has no first "
                             "block, and First Block Cache decides from it; load it with cache='first-block' (which "
                             "can switch to 'mag' later)")

    def begin_request(self, groups: int, steps: int) -> None:
        """Fresh states for a request of ``groups`` guidance halves and ``steps`` steps."""
        self.policy = POLICIES[self.config.method](self.config, steps)
        self.states = [self.policy.new_state() for _ in range(groups if self.per_half else 1)]
        # diffusers' cache-context names: the batch holds the negative half first
        self.labels = ("uncond", "cond")[-len(self.states):] if self.per_half else ("cond_uncond",)
        self.calls = []

    @property
    def measured_ratios(self) -> dict[str, list[float]]:
        """MagCache calibration: the last request's ratio per step, by cache context."""
        return {label: s.measured for label, s in zip(self.labels, self.states) if isinstance(s, _MagState)}

    @contextlib.contextmanager
    def held(self):
        """Holds on-demand stage engines loaded for the whole block (one load per request)."""
        with contextlib.ExitStack() as stack:
            for engine in (self.head, self.body, self.out):
                stack.enter_context(held(engine))
            yield self

    def release(self) -> None:
        """Its stage engines' intermediate memory, given back (Engine.release)."""
        for engine in (self.head, self.body, self.out):
            if hasattr(engine, "release"):
                engine.release()

    def _buffers(self, sample, timestep, inputs) -> _ShapeBuffers:
        feeds = {"sample": sample, "timestep": timestep, **inputs}
        key = (sample.device.type, len(self.states), tuple((k, tuple(v.shape)) for k, v in feeds.items()))
        buf = self._shapes.get(key)
        if buf is None:
            def empty(engine, dims):
                return {n: torch.empty(s, device=sample.device) for n, s in engine.spec.output_shapes(dims).items()}

            head_dims = self.head.spec.bind({k: tuple(v.shape) for k, v in feeds.items()})
            head_out = empty(self.head, head_dims)
            body_dims = self.body.spec.bind({t.name: tuple(head_out[t.name].shape) for t in self.body.spec.inputs})
            self._serial += 1
            buf = _ShapeBuffers(self._serial, head_out, empty(self.body, body_dims), len(self.states), self.first_block)
            self._shapes.put(key, buf)
        return buf

    def _parts(self, rows: int) -> list[slice]:
        per = rows // len(self.states)
        return [slice(g * per, (g + 1) * per) for g in range(len(self.states))]

    def run_head(self, sample, timestep, **inputs) -> None:
        """Device phase 1: the head engine, then what the policy measures."""
        if self.policy is None:
            raise VidrtError(f"{self.name}: a cached denoiser needs begin_request() before its first call")
        buf = self._buffers(sample, timestep, inputs)
        head = self.head(sample=sample, timestep=timestep, **inputs, out=buf.head_out)
        hidden_in = head["hidden_in"]
        hidden_first = head["hidden_first"] if self.first_block else hidden_in
        self.policy.measure(buf, self._parts(len(hidden_in)), hidden_in, hidden_first)

    def decide(self, sample, timestep, **inputs) -> tuple[bool, ...]:
        """Host: whether each cache context runs the body this call (recorded in ``calls``)."""
        buf = self._buffers(sample, timestep, inputs)
        change = buf.change.tolist() if self.policy.measures else [0.0] * len(self.states)
        run = tuple(self.policy.decide(s, c) for s, c in zip(self.states, change))
        self.calls.append(dict(zip(self.labels, run)))
        return run

    def run_rest(self, run: tuple[bool, ...], out=None, *, sample, timestep, **inputs):
        """Device phase 2, for the decisions ``run``: the body on the rows of the contexts
        that run it, the cached residual on the others, the out engine."""
        buf = self._buffers(sample, timestep, inputs)
        head = buf.head_out
        hidden_in = head["hidden_in"]
        hidden_first = head["hidden_first"] if self.first_block else hidden_in
        hidden_last = buf.hidden_last
        parts = self._parts(len(hidden_in))
        if any(run):
            # the rows of the halves that run: both, or one (at most two halves, so contiguous)
            lo, hi = min(p.start for p, r in zip(parts, run) if r), max(p.stop for p, r in zip(parts, run) if r)
            feeds = {t.name: (head[t.name][lo:hi] if t.name in self._batched else head[t.name])
                     for t in self.body.spec.inputs}
            self.body(**feeds, out={k: v[lo:hi] for k, v in buf.body_out.items()})  # written in place
        for s, p, ran in zip(self.states, parts, run):
            (self.policy.computed if ran else self.policy.skipped)(s, buf, p, hidden_in, hidden_first, hidden_last)
        final = {t.name: head[t.name] for t in self.out.spec.inputs[2:]}
        return self.out(sample=sample, hidden_last=hidden_last, **final, out=out)

    def __call__(self, out=None, *, sample, timestep, **inputs):
        self.run_head(sample=sample, timestep=timestep, **inputs)
        run = self.decide(sample=sample, timestep=timestep, **inputs)
        return self.run_rest(run, out, sample=sample, timestep=timestep, **inputs)


def summarize(calls: list[dict[str, bool]]) -> dict:
    """Counts of one request's transformer evaluations, one per cache context and step
    (a per-half family's guided step is two), and the decisions step by step."""
    flat = [ran for call in calls for ran in call.values()]
    return {"full": sum(flat), "skipped": len(flat) - sum(flat), "decisions": [dict(c) for c in calls]}


def as_cache_config(cache, threshold) -> CacheConfig | None:
    """from_pretrained's ``cache``/``cache_threshold`` as a CacheConfig (None: no cache).

    Raises:
        VidrtError: an unknown method, a threshold out of range, or a threshold without a method.
    """
    if cache is None:
        if threshold is not None:
            raise VidrtError("cache_threshold needs a cache method: pass cache='first-block' or 'mag' too")
        return None
    if isinstance(cache, CacheConfig):
        return cache if threshold is None else dataclasses.replace(cache, threshold=threshold)
    if not isinstance(cache, str):
        raise VidrtError(f"cache={cache!r}: give 'first-block', 'mag' or a vidrt.CacheConfig")
    return CacheConfig(cache, threshold)


def split_for_cache(model, cache: CacheConfig):
    """The model with its transformer(s) in three components, cut for ``cache``'s method
    (``HEAD``, vidrt.split). Quantized (int8/fp8), each stage is calibrated on what the
    transformer's calibration brings it (export/quantize.py ``stage_batches``).

    Raises:
        VidrtError: the family has no cache support (the U-Net families).
    """
    if not hasattr(model, "split_denoisers"):
        raise VidrtError(f"step caching is for the diffusion transformers (Wan, LTX-Video, CogVideoX); "
                         f"this {model.kind} model's denoiser is a U-Net: drop --cache")
    return dataclasses.replace(model, split_denoisers=HEAD[cache.method])
