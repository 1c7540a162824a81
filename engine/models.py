"""Which model family a diffusers folder holds, from its model_index.json."""

from __future__ import annotations

from pathlib import Path

from .svd import SvdModel, _read_json
from .t2v import PIPELINES, T2vModel


def read_model(folder: str | Path, motion_adapter: str | Path | None = None):
    """Reads a model folder's configs as the family its pipeline class belongs to
    (a Stable Diffusion folder with a ``motion_adapter`` is AnimateDiff).

    Returns:
        SvdModel (image-to-video) or T2vModel (text-to-video).

    Raises:
        VidrtError: the folder is missing, incomplete, or holds an unsupported pipeline.
    """
    folder = Path(folder)
    index = _read_json(folder / "model_index.json", folder)
    if index.get("_class_name") in (*PIPELINES, "StableDiffusionPipeline") or motion_adapter is not None:
        return T2vModel.from_folder(folder, index, motion_adapter)
    return SvdModel.from_folder(folder, index)
