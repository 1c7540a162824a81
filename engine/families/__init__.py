"""Model families, one folder each: ``model.py`` reads a diffusers folder's configs and
describes its components (JSON only, no torch), ``presets.py`` holds its offline
random-weight presets, ``pipeline.py`` conditions, denoises and decodes a request on
the engines (a BasePipeline). Adding a model is adding a folder and a line below.

This registry imports a family's modules by name when first asked; the families import
only vidrt's core (components, model_folder, pipeline_base, loop, samplers), never it.
"""

from __future__ import annotations

import importlib

from ..errors import VidrtError

# model_index.json pipeline class -> the family reading it
PIPELINE_CLASSES = {
    "StableVideoDiffusionPipeline": "svd",
    "TextToVideoSDPipeline": "t2v",
    "AnimateDiffPipeline": "t2v",
    "StableDiffusionPipeline": "t2v",  # with a motion adapter: AnimateDiff
    "WanPipeline": "wan",
    "WanImageToVideoPipeline": "wan",
    "LTXPipeline": "ltx",
    "LTXImageToVideoPipeline": "ltx",
    "CogVideoXPipeline": "cogvideox",
    "CogVideoXImageToVideoPipeline": "cogvideox",
}

# model kind (``model.kind``) -> (family, its pipeline class)
KINDS = {
    "image-to-video": ("svd", "VideoPipeline"),
    "text-to-video-sd": ("t2v", "TextToVideoPipeline"),
    "animatediff": ("t2v", "TextToVideoPipeline"),
    "wan": ("wan", "WanTextToVideoPipeline"),
    "wan-i2v": ("wan", "WanImageToVideoPipeline"),
    "ltx": ("ltx", "LTXTextToVideoPipeline"),
    "ltx-i2v": ("ltx", "LTXImageToVideoPipeline"),
    "cogvideox": ("cogvideox", "CogVideoXTextToVideoPipeline"),
    "cogvideox-i2v": ("cogvideox", "CogVideoXImageToVideoPipeline"),
}

FAMILIES = ("svd", "t2v", "wan", "ltx", "cogvideox")


def family_module(family: str, part: str):
    """``vidrt.families.<family>.<part>`` (part: model, presets or pipeline)."""
    return importlib.import_module(f"{__name__}.{family}.{part}")


def presets() -> dict[str, str]:
    """Every offline preset name -> its family, in the families' order."""
    return {name: family for family in FAMILIES for name in family_module(family, "presets").PRESETS}


def family_pipeline(kind: str) -> type:
    """The pipeline class serving a model kind.

    Raises:
        VidrtError: no family serves that kind.
    """
    if kind not in KINDS:
        raise VidrtError(f"no vidrt pipeline serves '{kind}' models; supported: {', '.join(KINDS)}")
    family, name = KINDS[kind]
    return getattr(family_module(family, "pipeline"), name)
