"""Step caching: skip the transformer's blocks on steps where they would change little.

The transformer runs as three engines (vidrt.split): ``head`` (embeddings, and for First
Block Cache the first block), ``body`` (the other blocks), ``out`` (final norm and
projection). Each call, a policy decides from the head's result whether the body runs or
its cached residual stands in for it; ``out`` always runs. MagCache, deciding from its
table alone, gets a head without the first block (``HEAD``), so its skipped steps run no
block; First Block Cache's head must hold the first block, and MagCache runs on that one
too (a pipeline loaded for first-block can switch to mag, not back). The policies follow diffusers' hooks decision for
decision (diffusers/hooks/first_block_cache.py, diffusers/hooks/mag_cache.py):

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

import torch

from .backends.base import held
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
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
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
    def __init__(self):
        self.head_residual = None  # the first block's residual at the last full evaluation
        self.tail_residual = None  # last block's output - first block's output, then


class _MagState:
    def __init__(self):
        self.residual = None  # last block's output - first block's input, at the last full evaluation
        self.ratio = torch.tensor(1.0)  # float32 0-d tensors: diffusers accumulates the table's tensor entries
        self.err = torch.tensor(0.0)
        self.run = 0
        self.step = 0
        self.measured: list[float] = []


class FirstBlockPolicy:
    """First Block Cache's decision and reuse (diffusers' FBCHeadBlockHook / FBCBlockHook)."""

    def __init__(self, config: CacheConfig, steps: int):
        self.threshold = config.threshold

    new_state = staticmethod(_FirstBlockState)

    def decide(self, s: _FirstBlockState, hidden_in, hidden_first) -> bool:
        residual = hidden_first - hidden_in
        if s.head_residual is not None:
            change = (residual - s.head_residual).abs().mean() / s.head_residual.abs().mean()
            if not float(change) > self.threshold:
                return False
        s.head_residual = residual
        return True

    def skipped(self, s: _FirstBlockState, hidden_in, hidden_first):
        return hidden_first + s.tail_residual

    def computed(self, s: _FirstBlockState, hidden_in, hidden_first, hidden_last) -> None:
        s.tail_residual = hidden_last - hidden_first


class MagPolicy:
    """MagCache's decision and reuse (diffusers' MagCacheHeadHook / MagCacheBlockHook),
    the ratio table stretched to the request's steps by nearest index as diffusers does."""

    def __init__(self, config: CacheConfig, steps: int):
        self.config, self.steps = config, steps
        self.calibrate = config.mag_ratios == "calibrate"
        self.ratios = None if self.calibrate else _nearest(torch.tensor(config.mag_ratios), steps)

    new_state = staticmethod(_MagState)

    def decide(self, s: _MagState, hidden_in, hidden_first) -> bool:
        if self.calibrate:
            return True
        c = self.config
        scale = self.ratios[s.step] if s.step < len(self.ratios) else 1.0
        if s.step >= int(c.retention_ratio * self.steps + 0.5):
            s.ratio = s.ratio * scale
            s.run += 1
            s.err = s.err + abs(1.0 - s.ratio)
            if s.residual is not None and s.err <= c.threshold and s.run <= c.max_skip_steps:
                return False
            s.ratio, s.err, s.run = torch.tensor(1.0), torch.tensor(0.0), 0
        return True

    def skipped(self, s: _MagState, hidden_in, hidden_first):
        self._advance(s)
        return hidden_in + s.residual

    def computed(self, s: _MagState, hidden_in, hidden_first, hidden_last) -> None:
        residual = hidden_last - hidden_in
        if self.calibrate:
            ratio = 1.0 if s.residual is None else float(
                (torch.linalg.norm(residual, dim=-1) / (torch.linalg.norm(s.residual, dim=-1) + 1e-8)).mean())
            s.measured.append(ratio)
        s.residual = residual
        self._advance(s)

    def _advance(self, s: _MagState) -> None:
        s.step += 1


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
    diffusers' cache-context name ("cond", "uncond" or "cond_uncond"; True: the body ran)."""

    supports_cuda_graphs = False  # the decision steers the host between two paths

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
        self._in_place = [t.name for t in self.body.spec.outputs] == ["hidden_last"]
        self.policy, self.states, self.labels, self.calls = None, [], (), []

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

    def __call__(self, out=None, *, sample, timestep, **inputs):
        if self.policy is None:
            raise VidrtError(f"{self.name}: a cached denoiser needs begin_request() before its first call")
        head = self.head(sample=sample, timestep=timestep, **inputs)
        rows = sample.shape[0] // len(self.states)
        parts = [slice(g * rows, (g + 1) * rows) for g in range(len(self.states))]
        hidden_in = head["hidden_in"]
        hidden_first = head["hidden_first"] if self.first_block else hidden_in
        run = [self.policy.decide(s, hidden_in[p], hidden_first[p]) for s, p in zip(self.states, parts)]
        hidden_last = torch.empty_like(hidden_first)
        if any(run):
            # the rows of the halves that run: both, or one (at most two halves, so contiguous)
            lo, hi = min(p.start for p, r in zip(parts, run) if r), max(p.stop for p, r in zip(parts, run) if r)
            feeds = {t.name: head[t.name] for t in self.body.spec.inputs}
            feeds = {k: (v[lo:hi] if k in self._batched else v) for k, v in feeds.items()}
            if hi - lo == len(hidden_last) and self._in_place:
                self.body(**feeds, out={"hidden_last": hidden_last})  # written in place: no copy
            else:
                hidden_last[lo:hi] = self.body(**feeds)["hidden_last"]
        for s, p, ran in zip(self.states, parts, run):
            if ran:
                self.policy.computed(s, hidden_in[p], hidden_first[p], hidden_last[p])
            else:
                hidden_last[p] = self.policy.skipped(s, hidden_in[p], hidden_first[p])
        self.calls.append(dict(zip(self.labels, run)))
        final = {t.name: head[t.name] for t in self.out.spec.inputs[2:]}
        return self.out(sample=sample, hidden_last=hidden_last, **final, out=out)


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


def split_for_cache(model, cache: CacheConfig, precision: str, component_precision: dict | None):
    """The model with its transformer(s) in three components, cut for ``cache``'s method
    (``HEAD``, vidrt.split).

    Raises:
        VidrtError: the family has no cache support (the U-Net families), or the
            transformer would be quantized (not supported with a cache yet).
    """
    if not hasattr(model, "split_denoisers"):
        raise VidrtError(f"step caching is for the diffusion transformers (Wan, LTX-Video, CogVideoX); "
                         f"this {model.kind} model's denoiser is a U-Net: drop --cache")
    quantized = {precision} | set((component_precision or {}).values())
    if quantized & {"int8", "fp8"}:
        raise VidrtError("step caching runs float engines (fp32, fp16, bf16); int8/fp8 with a cache is not supported "
                         "yet: drop --cache or pick a float --precision")
    return dataclasses.replace(model, split_denoisers=HEAD[cache.method])
