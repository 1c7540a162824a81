"""Reading conditioning images and writing videos (MP4 via imageio-ffmpeg, GIF, PNG frames)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image

from .errors import VidrtError
from .fsutil import atomic_dir, check_writable

VIDEO_FORMATS = ("mp4", "gif", "png")


def load_image(path: str | Path, announce: bool = True) -> PIL.Image.Image:
    """Opens an image file as RGB (RGBA, greyscale and palette images are converted, and said so).

    Raises:
        VidrtError: missing, unreadable or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise VidrtError(f"--image {path}: file not found")
    try:
        with PIL.Image.open(path) as im:
            im.load()
            image = im.copy()
    except (PIL.UnidentifiedImageError, OSError, ValueError) as e:
        raise VidrtError(f"--image {path}: not a readable image ({type(e).__name__}); pass a PNG, JPEG or WebP file") from None
    if image.mode != "RGB":
        if announce:
            print(f"vidrt: {path.name} is {image.mode}; converted to RGB", flush=True)
        image = image.convert("RGB")
    return image


def video_format(path: str | Path, fmt: str | None = None) -> str:
    """The format to write: ``fmt`` if given, else from the extension (no extension: PNG folder)."""
    if fmt:
        if fmt not in VIDEO_FORMATS:
            raise VidrtError(f"--format {fmt}: choose one of {', '.join(VIDEO_FORMATS)}")
        return fmt
    ext = Path(path).suffix.lower().lstrip(".")
    if ext in ("mp4", "gif"):
        return ext
    if ext == "":
        return "png"
    raise VidrtError(f"--output {path}: unknown extension .{ext}; use .mp4, .gif, or a folder name for PNG frames")


def write_video(frames: list[PIL.Image.Image], path: str | Path, fps: int, fmt: str | None = None) -> Path:
    """Writes frames atomically as MP4 (H.264), GIF or a folder of PNGs; returns the path."""
    path = Path(path)
    fmt = video_format(path, fmt)
    if fmt == "png":
        check_writable(path / "x") if path.is_dir() else check_writable(path.with_name(path.name + ".tmp"))
        with atomic_dir(path) as tmp:
            for i, frame in enumerate(frames):
                frame.save(tmp / f"frame_{i:04d}.png")
        return path
    check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{fmt}", dir=path.parent or ".")
    os.close(fd)
    try:
        if fmt == "gif":
            frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
        else:
            _write_mp4(frames, tmp, fps)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _write_mp4(frames, path: str, fps: int) -> None:
    import imageio_ffmpeg

    w, h = frames[0].size
    writer = imageio_ffmpeg.write_frames(
        path, (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=8, macro_block_size=1,
        output_params=["-f", "mp4"],
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(np.asarray(frame.convert("RGB"))))
    writer.close()
