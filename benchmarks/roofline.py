"""How close the UNet runs to the machine: its FLOPs per step (counted by torch's
flop counter on fake tensors, no weights, no compute) and the matmul ceiling of this
machine, measured on the spot."""

from __future__ import annotations

import time

import torch

from vidrt.svd import SvdModel


def unet_flops(model: SvdModel, unet_batch: int, frames: int, height: int, width: int) -> int:
    """FLOPs of one UNet call at this shape (2 per multiply-add, as torch counts)."""
    from diffusers import UNetSpatioTemporalConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    config = {k: v for k, v in model.unet.items() if not k.startswith("_")}
    s = model.vae_scale_factor
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**config)
    with FakeTensorMode(allow_non_fake_inputs=True):
        unet = unet.to_empty(device="cpu")
        c = model.latent_channels
        args = (
            torch.randn(unet_batch, frames, 2 * c, height // s, width // s),
            torch.tensor([1.0]),
            torch.randn(unet_batch, 1, int(model.unet.get("cross_attention_dim", 1024))),
            torch.randn(unet_batch, 3),
        )
        with FlopCounterMode(display=False) as counter:
            unet(*args)
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
