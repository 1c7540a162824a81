"""Environment variables vidrt reads, all in one place (debug and location knobs only)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root for presets and default engine directories: $VIDRT_CACHE or ~/.cache/vidrt."""
    return Path(os.environ.get("VIDRT_CACHE") or Path.home() / ".cache" / "vidrt")


def hub_offline() -> bool:
    """True when the user asked huggingface_hub to stay offline."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
