"""The diffusers baseline in its own worker process.

run-bench keeps vidrt's engines in its own process and diffusers' models in a
spawned worker: runs still alternate (engine, baseline, engine, ...) on the same
inputs, but no process holds both models, and the worker's memory is its own
(so each side's peak is measured separately, and their sum at the same instant).
The worker runs one request at a time; the parent waits for it, so the two sides
never compete for the cores.
"""

from __future__ import annotations

import multiprocessing
import traceback

from vidrt.errors import VidrtError

from .memory import PeakDeviceMemory, PeakRss, rss_mb


def _serve(conn, model, precision, unet_weights, device, compile, sampler, cache=None, steps=None) -> None:
    """Worker main loop: builds the baseline, then answers requests until 'close'."""
    import torch

    from vidrt.backends.base import trim_heap

    from .baseline import DiffusersBaseline
    from .reference_schedulers import reference_scheduler

    try:
        torch.set_grad_enabled(False)
        baseline = DiffusersBaseline(model, precision, unet_weights, device=device, compile=compile, cache=cache,
                                     steps=steps)
        baseline.pipe.scheduler = reference_scheduler(sampler, baseline.pipe.scheduler)
        conn.send(("ready", {"weight_bytes": baseline.weight_bytes(), "rss_mb": rss_mb()}))
    except VidrtError as e:
        conn.send(("error", str(e)))
        return
    except BaseException:  # noqa: BLE001 - the parent reports it
        conn.send(("crash", traceback.format_exc()))
        return
    while True:
        message, payload = conn.recv()
        if message == "close":
            return
        if message == "cache":  # another threshold of the same method, on the same models
            from . import cache_hooks

            if baseline.cache_log is not None:
                cache_hooks.disable(baseline.pipe, baseline.cache_log)
            baseline.cache_log = cache_hooks.enable(baseline.pipe, *payload)
            conn.send(("ok", None))
            continue
        try:
            result = _run(baseline, sampler, **payload)
            trim_heap()  # idle between runs at its weights, as the engine side is (Engine.release)
            conn.send(("ok", result))
        except BaseException:  # noqa: BLE001 - the parent reports it
            conn.send(("crash", traceback.format_exc()))


def _run(baseline, sampler, inputs, seed, kwargs) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    if sampler == "animatelcm":
        # diffusers' pipeline gives scheduler.step no generator: the reference holds it.
        baseline.pipe.scheduler.generator = gen
    with PeakRss() as mem, PeakDeviceMemory() as dev:
        frames, stages, steps, total = baseline(inputs, gen, **kwargs)
    return {"stages": stages, "unet_steps": steps, "total": total, "peak": mem.peak_mb - mem.start_mb,
            "peak_rss_mb": mem.peak_mb, "frames": frames, "device": dev.as_dict(),
            "cache": baseline.cache_log.summary() if baseline.cache_log is not None else {}}


class BaselineWorker:
    """diffusers' pipeline for ``model`` in a spawned process; call ``run`` per request.
    ``cache``: a vidrt.CacheConfig whose diffusers hook the pipeline runs with (MagCache:
    for ``steps`` steps)."""

    def __init__(self, model, precision: str, unet_weights=None, device: str = "cpu", compile: bool = False,
                 sampler: str | None = None, cache=None, steps: int | None = None):
        import time

        start = time.perf_counter()
        ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no copy of the engines' memory
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, model, precision, unet_weights, device, compile, sampler, cache, steps),
                                   daemon=True, name="vidrt-baseline")
        self.process.start()
        child.close()
        info = self._receive()
        self.load_s = time.perf_counter() - start  # process start, imports and model loading
        self.weight_bytes = info["weight_bytes"]
        self.resident_mb = info["rss_mb"]

    @property
    def pid(self) -> int:
        return self.process.pid

    def run(self, inputs: dict, seed: int, kwargs: dict) -> dict:
        """One request: frames, stage seconds, step seconds, total and peak RSS of the worker."""
        try:
            self._conn.send(("run", {"inputs": inputs, "seed": seed, "kwargs": kwargs}))
        except (BrokenPipeError, ConnectionResetError):
            self._died()
        return self._receive()

    def set_cache(self, cache, steps: int) -> None:
        """Runs the next requests with diffusers' hook for ``cache`` (a vidrt.CacheConfig)."""
        try:
            self._conn.send(("cache", (cache, steps)))
        except (BrokenPipeError, ConnectionResetError):
            self._died()
        self._receive()

    def _died(self):
        self.process.join(timeout=5)
        raise VidrtError(f"the diffusers baseline process died (exit code {self.process.exitcode}; "
                         "-9 is usually the kernel's out-of-memory killer); run with --one-side-at-a-time so the two "
                         "sides never hold memory together, or --baseline-precision none to benchmark the engines alone") from None

    def _receive(self):
        try:
            status, payload = self._conn.recv()
        except (EOFError, ConnectionResetError):
            self._died()
        if status == "error":
            raise VidrtError(payload)
        if status == "crash":
            raise VidrtError("the diffusers baseline failed: " + payload.strip().splitlines()[-1])
        return payload

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self._conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
            self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
