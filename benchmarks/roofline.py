"""How close the UNet runs to the machine: its FLOPs per step (counted by torch's
flop counter on fake tensors, no weights, no compute) and the matmul ceiling of this
machine, measured on the spot."""

from __future__ import annotations

import time

import torch


def unet_flops(model, unet_batch: int, frames: int, height: int, width: int, by_op: bool = False):
    """FLOPs of one UNet call at this shape (2 per multiply-add, as torch counts), or
    None when the folder's UNet is assembled at load time (a 2D UNet plus a motion adapter).
    With ``by_op``, a dict of FLOPs per aten op name ("convolution", "mm", "addmm", ...)."""
    import diffusers
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from vidrt.export.graphs import component_graph, sample_inputs

    cls = getattr(diffusers, model.unet.get("_class_name", "UNetSpatioTemporalConditionModel"), None)
    if cls is None or getattr(model, "motion_adapter", None) is not None:
        return None
    config = {k: v for k, v in model.unet.items() if not k.startswith("_")}
    s = model.vae_scale_factor
    spec = model.specs()["unet"]
    dims = {"B": unet_batch, "F": frames, "h": height // s, "w": width // s}
    if "L" in spec.ranges:
        dims["L"] = model.max_text_length
    with torch.device("meta"):
        unet = cls(**config)
    with FakeTensorMode(allow_non_fake_inputs=True):
        graph = component_graph("unet", unet.to_empty(device="cpu"))
        feeds = sample_inputs(spec, dims)
        with FlopCounterMode(display=False) as counter:
            graph(*(feeds[n] for n in spec.input_names))
    if by_op:
        return {str(op).split(".")[-1]: int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops())


def matmul_ceiling(dtype: torch.dtype, n: int = 4096, repeats: int = 3) -> float:
    """Best TFLOP/s of an n×n×n matmul in ``dtype`` on this machine's CPU threads."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up (AMX tile set-up, caches)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12
