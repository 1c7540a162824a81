"""How close the UNet runs to the machine: its FLOPs per step (counted by torch's
flop counter on fake tensors, no weights, no compute) and the matmul ceiling of this
machine, measured on the spot: once per process (several run-bench calls in one process
share it), and again around each timed run (CeilingProbe), as the machine's rate drifts."""

from __future__ import annotations

import functools
import time

import torch


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


# torch's counter has formulas for the CUDA attention kernels only: on a CPU, F.scaled_dot_
# product_attention dispatches to this one and would count 0 (11% of Wan's FLOPs at 1280 tokens).
CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def unet_flops(model, unet_batch: int, frames: int, height: int, width: int, by_op: bool = False,
               diffusers_graph: bool = False, text_length: int | None = None):
    """FLOPs of one call of the UNet graph vidrt exports at this shape (2 per multiply-add,
    as torch counts), or None when the folder's UNet is assembled at load time (a 2D UNet
    plus a motion adapter). With ``diffusers_graph``, of diffusers' own forward instead
    (what the baseline runs; export drops dead work such as one-token attention scores).
    ``text_length``: the prompt tokens the denoiser attends to (default: the pipeline's,
    ``model.default_text_length``; LTX-Video's requests run 128 of 512). With ``by_op``, a
    dict of FLOPs per aten op name ("convolution", "mm", "addmm", ...)."""
    import diffusers
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from vidrt.export.graphs import component_graph, diffusers_cross_attention, sample_inputs

    cls = getattr(diffusers, model.unet.get("_class_name", "UNetSpatioTemporalConditionModel"), None)
    denoiser = model.denoiser
    if cls is None or getattr(model, "motion_adapter", None) is not None:
        return None
    config = {k: v for k, v in model.unet.items() if not k.startswith("_")}
    s = model.vae_scale_factor
    spec = model.specs()[denoiser]
    dims = {"B": unet_batch, "F": model.latent_frames(frames), "h": height // s, "w": width // s}
    if "L" in spec.ranges:
        dims["L"] = text_length or model.default_text_length
    with torch.device("meta"):
        unet = cls(**config)
    with FakeTensorMode(allow_non_fake_inputs=True):
        graph = component_graph(denoiser, unet.to_empty(device="cpu"))
        if diffusers_graph:
            diffusers_cross_attention(graph)
        feeds = sample_inputs(spec, dims)
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
            graph(*(feeds[n] for n in spec.input_names))
    if by_op:
        return {str(op).split(".")[-1]: int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops())


CEILING_N = 4096  # square GEMM side: large enough that every library reaches its peak rate


def _best_seconds(run, repeats: int) -> float:
    run()  # warm-up (tile set-up, caches, first-touch pages)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def _torch_gemm(dtype: torch.dtype, n: int, repeats: int) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    return 2 * n**3 / _best_seconds(lambda: torch.matmul(a, b), repeats) / 1e12


def openvino_gemm_model(precision: str, n: int):
    """An n×n×n GEMM as OpenVINO runs a linear layer (constant weights). ``int8``:
    activations through a FakeQuantize and int8 weights with a per-channel scale, the
    pattern OpenVINO's low-precision passes turn into an integer GEMM."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([n, n], np.float32, name="x")
    if precision == "int8":
        lo, hi = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
        act = ops.fake_quantize(x, lo, hi, lo, hi, 256)
        w = ops.multiply(ops.convert(ops.constant(rng.integers(-127, 128, (n, n), dtype=np.int8)), np.float32),
                         ops.constant(np.full((n, 1), 0.01, np.float32)))
    else:
        act, w = x, ops.constant(rng.standard_normal((n, n), dtype=np.float32))
    return ov.Model([ops.matmul(act, w, False, True)], [x])


def _openvino_gemm(precision: str, n: int, repeats: int) -> float | None:
    """TFLOP/s of openvino_gemm_model, or None without OpenVINO. Its kernels sometimes
    beat torch's, and a ceiling the engine exceeds would be no ceiling."""
    try:
        import openvino as ov
    except ImportError:
        return None
    import numpy as np

    from vidrt.backends.openvino import kernel_config

    # What vidrt's own engines get: bf16 runs f32 where OpenVINO would only emulate it.
    compiled = ov.Core().compile_model(openvino_gemm_model(precision, n), "CPU", kernel_config(precision))
    request = compiled.create_infer_request()
    feed = {0: np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)}
    return 2 * n**3 / _best_seconds(lambda: request.infer(feed), repeats) / 1e12


TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_ceilings(precision: str, n: int = CEILING_N, repeats: int = 3) -> dict[str, float]:
    """TFLOP/s (TOP/s for int8) of an n×n×n matmul at ``precision`` ("fp32", "bf16",
    "int8") on this machine's CPU threads, per library that runs it here: torch
    (fp32/bf16), OpenVINO when installed. Measured on the first call of the process."""
    return dict(_measured_ceilings(precision, n, repeats))


EMULATED_N = 512  # torch's bf16 GEMM without AMX or AVX512-BF16: ~0.0006 TFLOP/s, 4 min for one 4096³


def native_torch_bf16() -> bool:
    """Whether torch has bf16 GEMM kernels on this CPU (AMX or AVX512-BF16); without them
    it converts element by element, two orders of magnitude slower than its fp32."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def library_rate(library: str, precision: str, n: int = CEILING_N, repeats: int = 3) -> float | None:
    """TFLOP/s (TOP/s for int8) of an n×n×n matmul at ``precision`` in one library
    ("torch" or "openvino"), measured now; None where that library does not run it here."""
    if library == "torch":
        if precision not in TORCH_DTYPES:
            return None
        emulated = precision == "bf16" and not native_torch_bf16()
        # An emulated GEMM's rate does not grow with size: a small one measures it in a second.
        return _torch_gemm(TORCH_DTYPES[precision], min(n, EMULATED_N) if emulated else n, 1 if emulated else repeats)
    return _openvino_gemm(precision, n, repeats)


LIBRARIES = ("torch", "openvino")


@functools.cache
def _measured_ceilings(precision: str, n: int, repeats: int) -> dict[str, float]:
    rates = {lib: library_rate(lib, precision, n, repeats) for lib in LIBRARIES}
    return {lib: r for lib, r in rates.items() if r is not None}


class CeilingProbe:
    """The matmul ceiling measured again at chosen moments. A 2-core VM's rate drifts by
    15-30% within minutes (its neighbours, its host's clocks), so a ceiling measured once
    and a denoiser timed minutes later can describe two different machines: run-bench
    probes just before and just after each timed run and puts the run against the mean of
    the two. Each probe times every library that ran the once-per-process ceiling
    (``repeats`` GEMMs after a warm-up: the best of two, as one 0.5 s GEMM alone swings by
    20% here) and keeps the best, and frees what it allocated.

    Attributes:
        rates: every probe's TFLOP/s, in order.
    """

    def __init__(self, precision: str, n: int = CEILING_N, repeats: int = 2):
        self.precision, self.n, self.repeats = precision, n, repeats
        self.libraries = tuple(matmul_ceilings(precision, n))
        self.rates: list[float] = []

    def __call__(self) -> float:
        rates = [library_rate(lib, self.precision, self.n, self.repeats) for lib in self.libraries]
        self.rates.append(max(r for r in rates if r is not None))
        return self.rates[-1]


def matmul_ceiling(precision: str, n: int = CEILING_N, repeats: int = 3) -> float | None:
    """Best rate of an n×n×n matmul at ``precision`` on this machine over the
    libraries that run it here (the measured ceiling a UNet's rate is put against),
    or None when none does (int8 without OpenVINO)."""
    rates = matmul_ceilings(precision, n, repeats)
    return max(rates.values()) if rates else None
