"""What a benchmark ran on: git revision, package versions, and the machine's fingerprint
(the CPU, the instruction sets that decide which kernels run, cores, memory, GPU)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

# The CPU flags that change which kernels run: AMX tiles and AVX512-BF16 make bf16 GEMMs
# native, VNNI makes int8 ones exact (without it int8 kernels saturate), AVX-512 widens
# everything. Two machines differing in any of these are different machines to a benchmark.
KERNEL_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def git_revision() -> dict:
    """{"sha": HEAD's sha or None outside a checkout, "dirty": tracked files changed}."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": False}
    if out.returncode:
        return {"sha": None, "dirty": False}
    return {"sha": out.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def sha_label(rev: dict) -> str | None:
    """A git_revision() as schema 1 wrote it: the sha, "-dirty" appended when tracked files changed."""
    return rev["sha"] and rev["sha"] + ("-dirty" if rev["dirty"] else "")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def machine() -> dict:
    """The machine's fingerprint: what decides a benchmark's speed, and ``id``, a short
    hash of it that names the machine in history files. RAM is rounded to whole GiB so
    that one machine's fingerprint does not move with what the kernel reserves."""
    import psutil

    from vidrt.fsutil import sha256_json

    gpu, driver = _gpu()
    fields = {
        "cpu": cpu_name(),
        "flags": sorted(f for f in KERNEL_FLAGS if f in cpu_flags()),
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30),
        "gpu": gpu,
        "gpu_driver": driver,
    }
    return fields | {"id": sha256_json(fields)[:12]}


def _gpu() -> tuple[str | None, str | None]:
    import torch

    if not torch.cuda.is_available():
        return None, None
    name = torch.cuda.get_device_name(0)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return name, out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return name, None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    from vidrt.build import versions

    import torch

    rev = git_revision()
    return {
        "git_sha": sha_label(rev),
        "git": rev,
        "versions": versions() | _runtime_versions() | {"python": platform.python_version()},
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def _runtime_versions() -> dict:
    """The runtimes' versions, which build.versions() leaves out (engines do not depend on
    them being importable): OpenVINO, TensorRT."""
    from importlib import metadata

    out = {}
    for pkg in ("openvino", "tensorrt"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out
