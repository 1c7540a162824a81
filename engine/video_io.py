"""Reading conditioning images and writing videos (MP4 via imageio-ffmpeg, GIF, PNG frames)."""

from __future__ import annotations

import io
import numbers
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

from .errors import VidrtError
from .fsutil import atomic_dir, check_writable

VIDEO_FORMATS = ("mp4", "gif", "png")


MAX_IMAGE_PIXELS = 8192 * 8192  # decoded pixels; a small PNG can declare gigapixels


def load_image(path: str | Path, announce: bool = True) -> PIL.Image.Image:
    """Opens an image file as RGB, as diffusers' ``load_image`` does: EXIF orientation
    applied, then converted to RGB (16-bit images scaled to 8 bits, not clipped).

    Raises:
        VidrtError: missing, unreadable, not an image, or more than MAX_IMAGE_PIXELS.
    """
    path = Path(path)
    if not path.is_file():
        raise VidrtError(f"--image {path}: file not found")
    image = _read_image(path, f"--image {path}")
    if image.mode != "RGB":
        if announce:
            print(f"vidrt: {path.name} is {image.mode}; converted to RGB", flush=True)
        image = to_rgb(image)
    return image


def image_from_bytes(data: bytes, label: str = "image") -> PIL.Image.Image:
    """``load_image`` for an image's bytes (an upload); ``label`` names it in errors."""
    return to_rgb(_read_image(io.BytesIO(data), label))


def _read_image(source, label: str) -> PIL.Image.Image:
    try:
        with PIL.Image.open(source) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise VidrtError(f"{label}: {w}x{h} px is more than vidrt decodes ({MAX_IMAGE_PIXELS // 2**20} MP); "
                                 "downscale it first")
            im.load()
            image = PIL.ImageOps.exif_transpose(im)
    except (PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise VidrtError(f"{label}: not a readable image ({type(e).__name__}); pass a PNG, JPEG or WebP file") from None
    if min(image.size) < 2:
        raise VidrtError(f"{label}: {image.size[0]}x{image.size[1]} px is too small to condition on; "
                         "pass an image of at least 2x2 px")
    return image


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB copy of ``image``; 16-bit greyscale is scaled to 8 bits (PIL's convert would clip it)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) greyscale: PIL's convert clips at 255; scale instead.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() <= 65535 else float(values.max())
        grey = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


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


def check_output(path: str | Path, fmt: str) -> Path:
    """Raises VidrtError when ``path`` cannot take a video of ``fmt`` without destroying
    something: a file's folder must be writable, and a PNG folder may only replace a
    folder of vidrt's own frames (never a folder holding anything else)."""
    path = Path(path)
    if fmt != "png":
        return check_writable(path)
    if path.exists() and not path.is_dir():
        raise VidrtError(f"cannot write PNG frames to {path}: it is a file; give a folder name")
    if path.is_dir():
        foreign = [p.name for p in path.iterdir() if not _FRAME.fullmatch(p.name)]
        if foreign:
            raise VidrtError(f"cannot write PNG frames to {path}: the folder holds other files ({foreign[0]}, ...); "
                             "give a new or empty folder name")
    check_writable(path.with_name(path.name + ".tmp"))
    return path


_FRAME = re.compile(r"frame_\d{4,}\.png")


def write_video(frames: list[PIL.Image.Image], path: str | Path, fps: int, fmt: str | None = None) -> Path:
    """Writes frames atomically as MP4 (H.264), GIF or a folder of PNGs; returns the path.

    What was at ``path`` stays untouched unless the whole write succeeded.

    Raises:
        VidrtError: a bad fps, a path that cannot be written, or a failed encode or write
            (a full disk, say).
    """
    path = Path(path)
    fmt = video_format(path, fmt)
    if isinstance(fps, bool) or not isinstance(fps, numbers.Integral) or fps < 1:
        raise VidrtError(f"fps={fps!r}: need a whole number of at least 1 frame per second")
    fps = int(fps)
    check_output(path, fmt)
    try:
        if fmt == "png":
            with atomic_dir(path) as tmp:
                for i, frame in enumerate(frames):
                    frame.save(tmp / f"frame_{i:04d}.png")
            return path
        _write_file(frames, path, fps, fmt)
    except OSError as e:
        raise VidrtError(f"could not write {path}: {e.strerror or e}; free some space or choose another path") from None
    return path


def _write_file(frames, path: Path, fps: int, fmt: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{fmt}", dir=path.parent or ".")
    os.close(fd)
    try:
        if fmt == "gif":
            frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=max(1, round(1000 / fps)),
                           loop=0)
        else:
            _write_mp4(frames, tmp, fps)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a video is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_mp4(frames, path: str, fps: int) -> None:
    """H.264 through imageio-ffmpeg's ffmpeg binary; raises VidrtError when ffmpeg fails."""
    import subprocess

    import imageio_ffmpeg

    w, h = frames[0].size
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18",
           "-f", "mp4", path]
    data = b"".join(np.ascontiguousarray(np.asarray(f.convert("RGB"), dtype=np.uint8)).tobytes() for f in frames)
    done = subprocess.run(cmd, input=data, capture_output=True)
    if done.returncode != 0 or os.path.getsize(path) == 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        raise VidrtError(f"ffmpeg could not encode the MP4 (exit {done.returncode}: {why[-1] if why else 'no output'}); "
                         "check the disk space and --fps")
