"""Named, reproducible benchmark scenarios (run-bench --scenario NAME).

A scenario fixes the request (model, size, frames, steps, sampler, guidance,
batch); the backend, precisions and baseline options stay run-bench flags, so the
same scenario is measured at fp32, bf16 and with torch.compile by changing those.
"""

from __future__ import annotations

from vidrt.errors import VidrtError

SCENARIOS = {
    # (a) SVD-XT architecture, 14 frames, 128x128, 4 Euler steps with CFG, batch 1.
    "a": dict(model="svd-xt", height=128, width=128, num_frames=14, steps=4, sampler="euler",
              min_guidance=1.0, max_guidance=3.0, batch_size=1),
    # (b) the same at 256x256.
    "b": dict(model="svd-xt", height=256, width=256, num_frames=14, steps=4, sampler="euler",
              min_guidance=1.0, max_guidance=3.0, batch_size=1),
    # (c) AnimateLCM 4 steps without CFG, against Euler 25 steps with CFG (c-euler).
    "c-lcm": dict(model="svd-xt", height=128, width=128, num_frames=14, steps=4, sampler="animatelcm",
                  min_guidance=1.0, max_guidance=1.0, batch_size=1),
    "c-euler": dict(model="svd-xt", height=128, width=128, num_frames=14, steps=25, sampler="euler",
                    min_guidance=1.0, max_guidance=3.0, batch_size=1),
}


def scenario(name: str) -> dict:
    """The request fields of a named scenario.

    Raises:
        VidrtError: unknown name.
    """
    if name not in SCENARIOS:
        raise VidrtError(f"--scenario {name}: choose one of {', '.join(SCENARIOS)}")
    return dict(SCENARIOS[name])
