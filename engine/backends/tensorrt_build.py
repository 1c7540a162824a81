"""TensorRT builder: ONNX → serialized plan, with the settings trt_plan derived.

Build side only (the runtime is tensorrt.py). The TensorRT API is used directly,
one code path for every component and precision. A build can take the process
down (driver faults, out-of-memory kills), so ``build_in_child`` runs it in a
fresh process and turns any failure into one error carrying TensorRT's own log.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
import traceback
from pathlib import Path

from ..errors import VidrtError
from ..fsutil import atomic_write_text

LOG_FILE = "build.log"


def _make_logger(trt, lines: list[str], keep: str = "INFO"):
    """A logger keeping messages up to severity ``keep`` (INFO: not TensorRT's
    per-tactic VERBOSE flood) for the build log."""
    order = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")
    limit = order.index(keep)

    class CapturingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            name = str(severity).rsplit(".", 1)[-1]
            if name in order and order.index(name) <= limit:
                lines.append(f"[{name}] {msg}")

    return CapturingLogger()


def build_plan(onnx_path: str, plan_path: str, settings: dict, timing_cache: str | None) -> dict:
    """Builds one plan in this process (``build_in_child`` is the safe entry).

    Args:
        onnx_path: the component's ONNX (external data beside it).
        plan_path: where to write the serialized engine.
        settings: trt_plan.builder_settings(...) output.
        timing_cache: file to read and update, or None.

    Returns:
        {"build_s", "peak_rss_mb", "log"}.

    Raises:
        RuntimeError: with TensorRT's messages, on parse or build failure.
    """
    import tensorrt as trt

    lines: list[str] = []
    logger = _make_logger(trt, lines)
    start = time.perf_counter()
    builder = trt.Builder(logger)
    flags = 0
    if settings["strongly_typed"]:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError("ONNX parser failed: " + "; ".join(errors or lines[-5:]))
    config = builder.create_builder_config()
    config.builder_optimization_level = settings["optimization_level"]
    if settings["workspace_bytes"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_bytes"])
    for flag in settings["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings.get("fp32_layers"):
        _keep_fp32(trt, network, settings["fp32_layers"])
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    if not settings.get("tf32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    for p in settings["profiles"]:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p["shapes"].items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache:
        data = Path(timing_cache).read_bytes() if os.path.exists(timing_cache) else b""
        cache = config.create_timing_cache(data)
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            raise RuntimeError(f"TensorRT refused the timing cache {timing_cache} (made by another TensorRT or GPU?); "
                               "delete it or pass another --timing-cache")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT could not build the engine: " + " | ".join(l for l in lines if "ERROR" in l)[-2000:])
    Path(plan_path).write_bytes(bytes(plan))
    if cache is not None:
        _write_timing_cache(config.get_timing_cache(), timing_cache)
    return {
        "build_s": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "log": "\n".join(lines),
    }


def _keep_fp32(trt, network, patterns: list[str]) -> int:
    """Runs the float layers whose names match ``patterns`` in fp32, outputs included
    (shape and index layers among them keep their integer types); returns how many."""
    from fnmatch import fnmatch

    floats = (trt.DataType.FLOAT, trt.DataType.HALF)
    kept = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not any(fnmatch(layer.name, p) for p in patterns) or not all(t.dtype in floats for t in outputs):
            continue
        layer.precision = trt.DataType.FLOAT
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.DataType.FLOAT)
        kept += 1
    return kept


def _write_timing_cache(cache, path: str) -> None:
    data = bytes(cache.serialize())
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _stop(proc) -> None:
    """Terminates the builder child, killing it if it ignores SIGTERM."""
    proc.terminate()
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _child(onnx_path, plan_path, settings, timing_cache, queue) -> None:
    try:
        queue.put(("ok", build_plan(onnx_path, plan_path, settings, timing_cache)))
    except BaseException as e:  # report everything; the parent decides
        queue.put(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))


def build_in_child(onnx_path: Path, out_dir: Path, plan_name: str, settings: dict, timing_cache: str | None,
                   component: str, timeout_s: float | None = None) -> dict:
    """Runs ``build_plan`` in a fresh process; writes the build log beside the plan.

    The child is stopped when ``timeout_s`` passes, and on Ctrl-C or SIGTERM of this
    process (which then re-raises): no orphaned builder keeps the GPU busy.

    Raises:
        VidrtError: build failed, timed out or the child died; the message carries TensorRT's words.
    """
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(str(onnx_path), str(out_dir / plan_name), settings, timing_cache, queue))
    proc.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    result = None
    try:
        while proc.is_alive() or not queue.empty():
            if deadline is not None and time.monotonic() > deadline:
                _stop(proc)
                raise VidrtError(f"TensorRT build of {component} did not finish in {timeout_s:.0f} s and was stopped; "
                                 "raise --build-timeout, or lower --opt-level or --max")
            try:
                result = queue.get(timeout=0.5)
                break
            except Exception:  # queue.Empty: keep waiting while the child lives
                continue
    except BaseException:
        _stop(proc)
        raise
    proc.join()
    if result is None:
        raise VidrtError(
            f"TensorRT build of {component} crashed the builder process (exit code {proc.exitcode}); "
            "try --workspace to cap memory, or a lower --opt-level"
        )
    if result[0] != "ok":
        atomic_write_text(out_dir / LOG_FILE, result[2])
        raise VidrtError(f"TensorRT build of {component} failed: {result[1]}")
    stats = result[1]
    atomic_write_text(out_dir / LOG_FILE, stats.pop("log"))
    return stats
