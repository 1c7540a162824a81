"""One revision's engines for ``vidrt bench-ab``, run as a script beside the driver.

``python ab_worker.py SOURCE FD`` imports ``vidrt`` from the checkout SOURCE (its
pyproject's ``[tool.setuptools] package-dir`` says which folder is which package), not
from the installed one, and on the connection FD (a socket the driver passed) answers:
``load`` (from_pretrained, building what is missing), ``run`` (one timed request) and
``close``. It uses nothing of vidrt but ``from_pretrained``, the call and its ``timings``,
so an older revision runs through it unchanged. Standalone on purpose: importing
anything of the driver's vidrt here would mix two revisions in one process.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import traceback
from pathlib import Path


class SourceFinder:
    """Imports the packages of one checkout from their folders (``vidrt`` from engine/,
    ``vidrt.export`` from export/, ...), ahead of the installed vidrt's own finder."""

    def __init__(self, root: Path, package_dir: dict[str, str]):
        self.folders = {name: root / folder for name, folder in package_dir.items()}

    def find_spec(self, fullname, path=None, target=None):
        folder = self.folders.get(fullname)
        if folder is None:
            return None  # subpackages not named in package-dir are found through their parent's __path__
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def package_dirs(root: Path) -> dict[str, str]:
    """The checkout's package-dir mapping, from its pyproject.toml."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    with open(root / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f).get("tool", {}).get("setuptools", {}).get("package-dir", {})
    if "vidrt" not in mapping:
        raise RuntimeError(f"{root}: pyproject.toml maps no folder to the vidrt package")
    return mapping


def _run(pipe, request: dict) -> dict:
    import resource

    import torch

    gen = torch.Generator().manual_seed(request["seed"])
    out = pipe(**request["inputs"], generator=gen, output_type="np", **request["kwargs"])
    t = pipe.timings
    stages = {name: getattr(t, name, 0.0) for name in ("image_encoder", "vae_encoder", "text_encoder", "vae_decoder")}
    stages[pipe.model.denoiser] = t.unet
    return {"stages": stages, "unet_steps": list(t.unet_steps), "total": t.end_to_end,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # the process's peak so far (KiB on Linux)
            "frames": out.frames, "device": None}


def serve(root: Path, fd: int) -> None:
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    try:
        sys.meta_path.insert(0, SourceFinder(root, package_dirs(root)))
        import torch

        torch.set_grad_enabled(False)
        from vidrt import VideoPipeline
        from vidrt.errors import VidrtError
    except BaseException:  # noqa: BLE001 - the driver reports it
        conn.send(("crash", traceback.format_exc()))
        return
    pipe = None
    while True:
        message, payload = conn.recv()
        if message == "close":
            return
        try:
            if message == "load":
                pipe = VideoPipeline.from_pretrained(**payload)
                conn.send(("ok", {"module": sys.modules["vidrt"].__file__}))
            else:
                conn.send(("ok", _run(pipe, payload)))
        except VidrtError as e:
            conn.send(("error", str(e)))
        except BaseException:  # noqa: BLE001 - the driver reports it
            conn.send(("crash", traceback.format_exc()))


if __name__ == "__main__":
    del sys.path[0]  # this script's folder: its modules' names (environment, memory, ...) must not shadow others
    serve(Path(sys.argv[1]).resolve(), int(sys.argv[2]))
