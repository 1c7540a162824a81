"""Options shared by the commands: which model and engines, and what to generate.

Each command's config is a frozen dataclass built on these; CLI flags map
one-to-one onto fields (``--unet-weights`` → ``unet_weights``), None means default.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """Which model, and which engines to build or load for it."""

    model: str = "svd-xt"
    unet_weights: str | None = None
    engine_dir: str | None = None
    backend: str = "auto"
    precision: str = "fp32"
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class RequestOptions(EngineOptions):
    """A generation request on top of the engine options."""

    height: int = 576
    width: int = 1024
    num_frames: int | None = None
    steps: int = 25
    sampler: str = "euler"
    min_guidance: float = 1.0
    max_guidance: float = 3.0
    batch_size: int = 1
