"""Checks an ONNX graph's operators against what TensorRT's ONNX parser supports.

The list is data (trt_onnx_ops.json, copied from onnx-tensorrt's
docs/operators.md and naming its release), so the check needs no TensorRT.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import onnx


@dataclasses.dataclass(frozen=True)
class OpCheck:
    """Result of checking one graph against the TensorRT operator list."""

    ops: tuple[str, ...]  # every op type used, sorted
    unsupported: tuple[str, ...]  # ops TensorRT's parser cannot take
    opset: int
    tensorrt_list: str  # where the list came from

    @property
    def ok(self) -> bool:
        return not self.unsupported

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"ok": self.ok}


@functools.lru_cache(maxsize=1)
def tensorrt_ops() -> dict:
    return json.loads((Path(__file__).with_name("trt_onnx_ops.json")).read_text())


def check_tensorrt_ops(model: onnx.ModelProto) -> OpCheck:
    """Lists the graph's ops (subgraphs included) and those TensorRT cannot parse."""
    table = tensorrt_ops()
    supported = set(table["supported"])
    seen: set[tuple[str, str]] = set()
    _collect(model.graph, seen)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    unsupported = sorted(
        f"{dom}::{op}" if dom not in ("", "ai.onnx") else op
        for dom, op in seen
        if dom not in ("", "ai.onnx") or op not in supported
    )
    if not table["opset_min"] <= opset <= table["opset_max"]:
        unsupported.append(f"opset {opset} (TensorRT parses {table['opset_min']}..{table['opset_max']})")
    return OpCheck(
        ops=tuple(sorted(op for _, op in seen)),
        unsupported=tuple(unsupported),
        opset=opset,
        tensorrt_list=f"TensorRT {table['tensorrt_version']} ({table['source']})",
    )


def _collect(graph: onnx.GraphProto, seen: set) -> None:
    for node in graph.node:
        seen.add((node.domain, node.op_type))
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _collect(attr.g, seen)
            for g in attr.graphs:
                _collect(g, seen)
