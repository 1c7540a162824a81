"""A diffusion transformer cut into three graphs at its block loop, for step caching
(vidrt.step_cache): ``head`` (input embeddings and the first block), ``body`` (every
later block) and ``out`` (final norm, projection, unpatchify); or, cut before the first
block (vidrt.split.HEADS), ``embed`` (input embeddings) and ``blocks`` (every block).

A family describes its transformer as :class:`DenoiserStages`: ``embed`` (the code
before the block loop), ``run_block`` (one block call) and ``finish`` (the code after
it), each written from diffusers' forward of that model. The graphs here compose them:
head + body + out is the whole forward; with a cached body, head + out. Tests compare
the composition with diffusers' own forward.
"""

from __future__ import annotations

import torch


class DenoiserStages(torch.nn.Module):
    """A transformer's forward in three parts (a family subclasses it).

    ``streams`` are what the blocks carry from one to the next (the video tokens; for
    CogVideoX also the text tokens); ``context`` is what every block reads unchanged
    (text states, timestep projections, rotary tables); ``final`` is what ``finish``
    reads besides the streams (the time embedding).
    """

    blocks: torch.nn.ModuleList

    def embed(self, *inputs) -> tuple[tuple, tuple, tuple]:
        """The component's inputs -> (streams, context, final)."""
        raise NotImplementedError

    def run_block(self, block, streams: tuple, context: tuple) -> tuple:
        """One block: streams -> streams."""
        raise NotImplementedError

    def finish(self, sample, streams: tuple, final: tuple) -> torch.Tensor:
        """The last block's streams -> the prediction, shaped like ``sample``."""
        raise NotImplementedError

    def forward(self, *inputs):
        streams, context, final = self.embed(*inputs)
        for block in self.blocks:
            streams = self.run_block(block, streams, context)
        return self.finish(inputs[0], streams, final)


class HeadGraph(torch.nn.Module):
    """Inputs -> (each stream before the first block, [with_first_block: each after it,]
    context, final)."""

    def __init__(self, stages: DenoiserStages, with_first_block: bool):
        super().__init__()
        self.stages = stages
        self.with_first_block = with_first_block

    def forward(self, *inputs):
        streams, context, final = self.stages.embed(*inputs)
        if not self.with_first_block:
            return (*streams, *context, *final)
        first = self.stages.run_block(self.stages.blocks[0], streams, context)
        return (*streams, *first, *context, *final)


class BodyGraph(torch.nn.Module):
    """(streams before block ``start``, context) -> streams after the last block."""

    def __init__(self, stages: DenoiserStages, n_streams: int, start: int):
        super().__init__()
        self.stages = stages
        self.n_streams = n_streams
        self.start = start

    def forward(self, *tensors):
        streams, context = tuple(tensors[: self.n_streams]), tuple(tensors[self.n_streams :])
        for block in self.stages.blocks[self.start :]:
            streams = self.stages.run_block(block, streams, context)
        return streams if len(streams) > 1 else streams[0]


class OutGraph(torch.nn.Module):
    """(sample, for its shape; the last block's video tokens; final) -> the prediction."""

    def __init__(self, stages: DenoiserStages):
        super().__init__()
        self.stages = stages

    def forward(self, sample, hidden, *final):
        return self.stages.finish(sample, (hidden,), final)


def stage_graph(stage: str, stages: DenoiserStages, n_streams: int) -> torch.nn.Module:
    """The graph of one stage (a name in vidrt.split.ALL_STAGES) of a family's stages."""
    if stage in ("head", "embed"):
        return HeadGraph(stages, with_first_block=stage == "head")
    if stage in ("body", "blocks"):
        return BodyGraph(stages, n_streams, start=1 if stage == "body" else 0)
    return OutGraph(stages)
