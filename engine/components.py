"""One description per model component, read by export, build, runtime and tests.

A :class:`ComponentSpec` names a component's input and output tensors, their
dimensions (symbolic names for the dynamic ones, integers for fixed ones), the
valid range of every dynamic dimension and the multiple it must be of. Output
dimensions may be simple expressions of input dimensions (``"H//8"``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping

from .errors import VidrtError

# Human words for dimension names, used in error messages.
DIM_WORDS = {
    "B": "batch",
    "F": "num_frames",
    "H": "height",
    "W": "width",
    "h": "latent height",
    "w": "latent width",
    "N": "decode chunk size",
    "L": "text sequence length",
    "T": "video tokens",
}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A named tensor: its dims (ints or symbols/expressions) and element type.

    ``high`` bounds integer tensors (token ids: the vocabulary size) and ``value``
    fills scalar inputs (a timestep) when export makes sample inputs.
    """

    name: str
    dims: tuple[int | str, ...]
    dtype: str = "float32"
    high: int | None = None
    value: float | None = None


@dataclasses.dataclass(frozen=True)
class DimRange:
    """Valid values of one dynamic dimension: ``min..max``, a multiple of ``multiple``."""

    min: int
    max: int
    multiple: int = 1

    def __post_init__(self):
        if not (1 <= self.min <= self.max) or self.multiple < 1:
            raise VidrtError(f"invalid dimension range {self.min}..{self.max} (multiple of {self.multiple})")

    def contains(self, value: int) -> bool:
        return self.min <= value <= self.max and value % self.multiple == 0


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """Inputs, outputs and shape ranges of one exported component."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    ranges: Mapping[str, DimRange]
    # The shape the engine is tuned for (TensorRT's "opt" profile point).
    opt: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # Dims whose profile corners follow from others' (a transformer body's tokens from the
    # frames and latent size its ``ranges`` also hold, though no tensor of it has them).
    derived: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX dynamic axes: every non-integer dim of every tensor."""
        axes = {}
        for t in self.inputs + self.outputs:
            named = {i: str(d) for i, d in enumerate(t.dims) if not isinstance(d, int)}
            if named:
                axes[t.name] = named
        return axes

    def bind(self, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        """Binds symbolic dims from concrete input shapes.

        Raises:
            VidrtError: a tensor is missing, has the wrong rank or a fixed dim
                differs, or two tensors disagree on a dim.
        """
        dims: dict[str, int] = {}
        for t in self.inputs:
            if t.name not in input_shapes:
                raise VidrtError(f"{self.name}: missing input '{t.name}' (expected {self.input_names})")
            shape = tuple(input_shapes[t.name])
            if len(shape) != len(t.dims):
                raise VidrtError(f"{self.name}: input '{t.name}' has shape {list(shape)}, expected rank {len(t.dims)}")
            for axis, (want, got) in enumerate(zip(t.dims, shape)):
                if isinstance(want, int):
                    if want != got:
                        raise VidrtError(
                            f"{self.name}: input '{t.name}' axis {axis} is {got}, this engine needs {want}"
                        )
                elif want.isidentifier():
                    if dims.setdefault(want, got) != got:
                        raise VidrtError(
                            f"{self.name}: inputs disagree on {DIM_WORDS.get(want, want)} ({dims[want]} vs {got})"
                        )
        return dims

    def check(self, dims: Mapping[str, int]) -> None:
        """Raises VidrtError naming the first dim outside this engine's range."""
        for name, rng in self.ranges.items():
            if name not in dims:
                continue
            value = dims[name]
            if not rng.contains(value):
                what = DIM_WORDS.get(name, name)
                mult = f" and a multiple of {rng.multiple}" if rng.multiple > 1 else ""
                raise VidrtError(
                    f"{self.name}: {what}={value} is outside this engine's range "
                    f"{rng.min}..{rng.max}{mult}; pick a value in range or rebuild the engines with a wider range"
                )

    def shape_of(self, tensor: TensorSpec, dims: Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape of a tensor given bound dims (expressions evaluated)."""
        return tuple(d if isinstance(d, int) else _eval_dim(d, dims) for d in tensor.dims)

    def output_shapes(self, dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        return {t.name: self.shape_of(t, dims) for t in self.outputs}

    def corner(self, which: str) -> dict[str, int]:
        """The 'min', 'opt' or 'max' point of the declared ranges."""
        if which == "opt":
            return {k: self.opt.get(k, r.min) for k, r in self.ranges.items()}
        pick = min if which == "min" else max
        out = {}
        for k, r in self.ranges.items():
            v = pick(r.min, r.max)
            # round inward to the multiple
            v = math.ceil(v / r.multiple) * r.multiple if which == "min" else (v // r.multiple) * r.multiple
            out[k] = v
        return out

    def describe(self) -> dict:
        """JSON-friendly description (goes into manifests and cache keys)."""
        return {
            "name": self.name,
            "inputs": [_tensor_record(t) for t in self.inputs],
            "outputs": [_tensor_record(t) for t in self.outputs],
            "ranges": {k: dataclasses.asdict(v) for k, v in sorted(self.ranges.items())},
            "opt": dict(sorted(self.opt.items())),
            **({"derived": dict(sorted(self.derived.items()))} if self.derived else {}),
        }


def _tensor_record(t: TensorSpec) -> dict:
    # Unset hints are left out so descriptions (and the cache keys hashed from them)
    # of tensors without hints read as before.
    return {k: v for k, v in dataclasses.asdict(t).items() if v is not None}


def _eval_dim(expr: str, dims: Mapping[str, int]) -> int:
    try:
        value = eval(expr, {"__builtins__": {}}, dict(dims))  # expressions are vidrt's own constants
    except NameError as e:
        raise VidrtError(f"cannot size dimension '{expr}': {e}") from None
    return int(value)


def component_kind(component: str) -> str:
    """The component a part belongs to: a split text encoder's ``text_encoder_partN`` are
    described, profiled and given precisions as ``text_encoder`` (models' ``text_parts``); a
    transformer cut for step caching, ``transformer_head``/``_body``/``_out`` (or ``_embed``/``_blocks``),
    as ``transformer`` (vidrt.split)."""
    return re.sub(r"_(part\d+|head|body|embed|blocks|out)$", "", component)
