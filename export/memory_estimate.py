"""How much activation memory a component needs at a shape, before any engine is built.

The component's exported graph runs on fake tensors (no weights, no compute) while a
dispatch mode tracks which intermediate tensors are alive; the peak of their bytes is
what eager PyTorch would hold at once. TensorRT fuses and reuses buffers, so its
activation block is usually below this figure: it is an upper estimate, used to pick
default shape ranges and to refuse ranges that cannot fit before a build of an hour
fails on the GPU.
"""

from __future__ import annotations

import importlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vidrt.errors import VidrtError

# Bytes per element of the activations at each engine precision (quantized engines keep
# fp16 activations between their int8/fp8 layers).
ACTIVATION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 2, "fp8": 2}


class _LiveBytes(TorchDispatchMode):
    """Counts bytes of tensors created inside the mode and still referenced."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for i, t in enumerate(outs):
            aliased = i < len(returns) and returns[i].alias_info is not None
            if isinstance(t, torch.Tensor) and not aliased:
                n = t.numel() * t.element_size()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out

    def _free(self, n: int) -> None:
        self.live -= n


def _empty_module(model, component: str):
    """The component's torch module built from the model's config on the meta device
    (no weights read, no folder needed)."""

    lib, name, sub = model.torch_classes[component]
    cls = getattr(importlib.import_module(lib), name)
    config = {k: v for k, v in getattr(model, sub).items() if not k.startswith("_")}
    with torch.device("meta"):
        if lib == "diffusers":
            return cls.from_config(config)
        module = cls(cls.config_class(**config))
    part = model.text_part(component)
    if part is not None:  # one part of a split text encoder: its blocks only (export/graphs.py)
        module.vidrt_part = part
    return module


def activation_peak_bytes(model, component: str, dims: dict[str, int], precision: str = "fp16",
                          variant: str | None = None) -> int:
    """Peak live activation bytes of one call of ``component``'s graph at ``dims``
    (the spec's dim names), at ``precision``'s activation width.

    Raises:
        VidrtError: the component cannot be built from its config here (an AnimateDiff
            UNet assembled from a motion adapter at load time).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .graphs import component_graph, sample_inputs

    if component == "unet" and getattr(model, "motion_adapter_path", None) is not None:
        raise VidrtError("activation memory of a UNet merged from a motion adapter is not estimated")
    spec = model.specs()[component]
    module = _empty_module(model, component)
    counter = _LiveBytes()
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        graph = component_graph(component, module.to_empty(device="cpu"), variant)
        feeds = sample_inputs(spec, dims)
        with counter:
            out = graph(*(feeds[n] for n in spec.input_names))
        del out
    return counter.peak * ACTIVATION_BYTES[precision] // 4
