"""A diffusion transformer as three components, for step caching (vidrt.step_cache):
``<expert>_head`` (input embeddings and the first block), ``<expert>_body`` (every
later block) and ``<expert>_out`` (final norm, projection, unpatchify). A family that
supports caching describes the tensors passed between them (:class:`StageTensors`);
this module names the components and derives their descriptions from the whole
transformer's. The graphs are export/split_graphs.py's.
"""

from __future__ import annotations

import dataclasses

from .components import ComponentSpec, DimRange, TensorSpec, _eval_dim

STAGES = ("head", "body", "out")
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


def stage_components(components: tuple[str, ...], experts: tuple[str, ...]) -> tuple[str, ...]:
    """``components`` with each expert replaced by its three stages."""
    out = []
    for c in components:
        out += [f"{c}_{s}" for s in STAGES] if c in experts else [c]
    return tuple(out)


def _with(t: TensorSpec, name: str, tokens: str) -> TensorSpec:
    return dataclasses.replace(t, name=name, dims=tuple(tokens if d == TOKENS else d for d in t.dims))


def split_specs(full: ComponentSpec, tensors: StageTensors) -> dict[str, ComponentSpec]:
    """The head, body and out descriptions of one expert from its whole description.

    The head takes the expert's inputs and gives each stream before (``<stream>_in``)
    and after (``<stream>_first``) the first block, the context and the final tensors;
    the body takes the streams after the first block and the context and gives the
    streams after the last (``<stream>_last``); the out stage takes the sample (for its
    shape), the last video tokens and the final tensors, and gives the prediction.
    """
    expr = tensors.tokens
    sample = full.inputs[0]
    prediction = full.outputs[0]
    streams = tensors.streams
    head = ComponentSpec(
        name=f"{full.name}_head",
        inputs=full.inputs,
        outputs=(*(_with(s, f"{s.name}_in", expr) for s in streams),
                 *(_with(s, f"{s.name}_first", expr) for s in streams),
                 *(_with(t, t.name, expr) for t in tensors.context + tensors.final)),
        ranges=full.ranges,
        opt=full.opt,
    )
    top = _eval_dim(expr, full.corner("max"))
    # The body keeps the latent grid's ranges beside its tokens', so its TensorRT profile's
    # token corners follow the head's grid corners (``derived``).
    body_ranges = dict(full.ranges) | {TOKENS: DimRange(1, top)}
    body = ComponentSpec(
        name=f"{full.name}_body",
        inputs=(*(_with(s, f"{s.name}_first", TOKENS) for s in streams), *tensors.context),
        outputs=tuple(_with(s, f"{s.name}_last", TOKENS) for s in streams),
        ranges=body_ranges,
        opt=dict(full.opt) | {TOKENS: _eval_dim(expr, full.corner("opt"))},
        derived={TOKENS: expr},
    )
    out = ComponentSpec(
        name=f"{full.name}_out",
        inputs=(sample, _with(streams[0], f"{streams[0].name}_last", expr), *(_with(t, t.name, expr) for t in tensors.final)),
        outputs=(prediction,),
        ranges={k: v for k, v in full.ranges.items() if k != "L"},
        opt={k: v for k, v in full.opt.items() if k != "L"},
    )
    return {"head": head, "body": body, "out": out}



class SplitDenoiserMixin:
    """For a model description (a frozen dataclass with a ``split_denoisers`` field and
    ``denoisers``) whose transformer can run as stages: its components, descriptions and
    per-component tables with each denoiser cut in three when ``split_denoisers``."""

    split_denoisers: bool
    denoisers: tuple[str, ...]

    def split_components(self, components: tuple[str, ...]) -> tuple[str, ...]:
        return stage_components(components, self.denoisers) if self.split_denoisers else components

    def denoiser_specs(self, name: str, full: ComponentSpec) -> dict[str, ComponentSpec]:
        """{name: full}, or the three stage descriptions when split."""
        if not self.split_denoisers:
            return {name: full}
        return {f"{name}_{stage}": spec for stage, spec in split_specs(full, self.stage_tensors()).items()}

    def per_stage(self, by_denoiser: dict) -> dict:
        """``by_denoiser`` with the same value under each denoiser's stage names too."""
        return by_denoiser | {f"{d}_{s}": v for d, v in by_denoiser.items() for s in STAGES}

    @staticmethod
    def denoiser_spec(specs: dict[str, ComponentSpec], name: str) -> ComponentSpec:
        """The description that takes the denoiser's inputs: its own, or its head's."""
        return specs.get(name) or specs[f"{name}_head"]

    def stage_tensors(self) -> StageTensors:
        raise NotImplementedError
