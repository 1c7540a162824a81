"""vidrt: a compiled inference engine for video diffusion models.

``import vidrt`` is light: torch, ONNX Runtime and the rest load when first used.
"""

from .errors import VidrtError

__version__ = "0.1.0"
__all__ = ["CacheConfig", "CancelToken", "Cancelled", "Progress", "TextToVideoPipeline", "VideoPipeline", "VideoPipelineOutput",
           "VidrtError", "__version__"]


def __getattr__(name):
    if name in ("CancelToken", "Cancelled", "Progress"):
        from . import control

        return getattr(control, name)
    if name == "CacheConfig":
        from .step_cache import CacheConfig

        return CacheConfig
    if name in ("VideoPipeline", "VideoPipelineOutput"):
        from .families.svd import pipeline

        return getattr(pipeline, name)
    if name == "TextToVideoPipeline":
        from .families.t2v.pipeline import TextToVideoPipeline

        return TextToVideoPipeline
    raise AttributeError(f"module 'vidrt' has no attribute {name!r}")
