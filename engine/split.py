"""A diffusion transformer as three components, for step caching (vidrt.step_cache).

Two cuts, by what the first engine holds (``HEADS``):
- ``first-block``: ``<expert>_head`` (input embeddings and the first block), ``<expert>_body``
  (every later block), ``<expert>_out`` (final norm, projection, unpatchify). First Block
  Cache decides from the first block's residual, so it needs this one.
- ``embeddings``: ``<expert>_embed`` (input embeddings only), ``<expert>_blocks`` (every
  block), ``<expert>_out``. MagCache decides from its table alone, so a skipped step then
  runs no block at all.
A family that supports caching describes the tensors passed between them
(:class:`StageTensors`); this module names the components and derives their
descriptions from the whole transformer's. The graphs are export/split_graphs.py's.
"""

from __future__ import annotations

import dataclasses

from .components import ComponentSpec, DimRange, TensorSpec, _eval_dim

ROLES = ("head", "body", "out")
# the head's extent -> each role's component suffix
HEADS = {"first-block": ROLES, "embeddings": ("embed", "blocks", "out")}
ALL_STAGES = ("head", "body", "embed", "blocks", "out")
TOKENS = "T"  # the body's token axis: it sees tokens, not the latent grid they came from


@dataclasses.dataclass(frozen=True)
class StageTensors:
    """What flows between the stages, with ``T`` for the video-token axis.

    ``streams``: what each block updates (video tokens ``hidden``; CogVideoX: also ``text``);
    ``context``: what every block reads unchanged; ``final``: what the output stage reads
    besides the last block's video tokens. ``tokens``: the token count as an expression
    of the transformer's input dims (``"(F//1)*(h//2)*(w//2)"``).
    """

    streams: tuple[TensorSpec, ...]
    context: tuple[TensorSpec, ...]
    final: tuple[TensorSpec, ...]
    tokens: str


def stage_components(components: tuple[str, ...], experts: tuple[str, ...], head: str) -> tuple[str, ...]:
    """``components`` with each expert replaced by its three stages under the ``head`` cut."""
    out = []
    for c in components:
        out += [f"{c}_{s}" for s in HEADS[head]] if c in experts else [c]
    return tuple(out)


def stage_names(expert: str, head: str) -> dict[str, str]:
    """role (``ROLES``) -> the component that plays it, for ``expert`` under the ``head`` cut."""
    return {role: f"{expert}_{s}" for role, s in zip(ROLES, HEADS[head])}


def _with(t: TensorSpec, name: str, tokens: str) -> TensorSpec:
    return dataclasses.replace(t, name=name, dims=tuple(tokens if d == TOKENS else d for d in t.dims))


def split_specs(full: ComponentSpec, tensors: StageTensors, head: str) -> dict[str, ComponentSpec]:
    """The descriptions of one expert's three stages (by role) under the ``head`` cut.

    The head takes the expert's inputs and gives each stream before the first block
    (``<stream>_in``) and, with the first block in the head, after it
    (``<stream>_first``), the context and the final tensors; the body takes the streams
    the head ends with and the context and gives the streams after the last block
    (``<stream>_last``); the out stage takes the sample (for its shape), the last video
    tokens and the final tensors, and gives the prediction.
    """
    names = HEADS[head]
    expr = tensors.tokens
    sample = full.inputs[0]
    prediction = full.outputs[0]
    streams = tensors.streams
    ends = ("_in", "_first") if head == "first-block" else ("_in",)
    into_body = ends[-1]
    head_spec = ComponentSpec(
        name=f"{full.name}_{names[0]}",
        inputs=full.inputs,
        outputs=(*(_with(s, f"{s.name}{end}", expr) for end in ends for s in streams),
                 *(_with(t, t.name, expr) for t in tensors.context + tensors.final)),
        ranges=full.ranges,
        opt=full.opt,
    )
    top = _eval_dim(expr, full.corner("max"))
    # The body keeps the latent grid's ranges beside its tokens', so its TensorRT profile's
    # token corners follow the head's grid corners (``derived``).
    body_ranges = dict(full.ranges) | {TOKENS: DimRange(1, top)}
    body = ComponentSpec(
        name=f"{full.name}_{names[1]}",
        inputs=(*(_with(s, f"{s.name}{into_body}", TOKENS) for s in streams), *tensors.context),
        outputs=tuple(_with(s, f"{s.name}_last", TOKENS) for s in streams),
        ranges=body_ranges,
        opt=dict(full.opt) | {TOKENS: _eval_dim(expr, full.corner("opt"))},
        derived={TOKENS: expr},
    )
    out = ComponentSpec(
        name=f"{full.name}_{names[2]}",
        inputs=(sample, _with(streams[0], f"{streams[0].name}_last", expr), *(_with(t, t.name, expr) for t in tensors.final)),
        outputs=(prediction,),
        ranges={k: v for k, v in full.ranges.items() if k != "L"},
        opt={k: v for k, v in full.opt.items() if k != "L"},
    )
    return {"head": head_spec, "body": body, "out": out}



class SplitDenoiserMixin:
    """For a model description (a frozen dataclass with a ``split_denoisers`` field and
    ``denoisers``) whose transformer can run as stages: its components, descriptions and
    per-component tables with each denoiser cut in three when ``split_denoisers`` names
    a cut (a key of ``HEADS``; None: whole)."""

    split_denoisers: str | None
    denoisers: tuple[str, ...]

    def split_components(self, components: tuple[str, ...]) -> tuple[str, ...]:
        if not self.split_denoisers:
            return components
        return stage_components(components, self.denoisers, self.split_denoisers)

    def denoiser_specs(self, name: str, full: ComponentSpec) -> dict[str, ComponentSpec]:
        """{name: full}, or the three stage descriptions when split."""
        if not self.split_denoisers:
            return {name: full}
        return {spec.name: spec for spec in split_specs(full, self.stage_tensors(), self.split_denoisers).values()}

    def per_stage(self, by_denoiser: dict) -> dict:
        """``by_denoiser`` with the same value under each denoiser's stage names too."""
        return by_denoiser | {f"{d}_{s}": v for d, v in by_denoiser.items() for s in ALL_STAGES}

    def denoiser_spec(self, specs: dict[str, ComponentSpec], name: str) -> ComponentSpec:
        """The description that takes the denoiser's inputs: its own, or its head's."""
        return specs[stage_names(name, self.split_denoisers)["head"]] if self.split_denoisers else specs[name]

    def stage_tensors(self) -> StageTensors:
        raise NotImplementedError
