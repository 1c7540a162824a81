"""Where a component's time goes inside OpenVINO: the per-node counters of one
compiled engine, summed by operation type. run-bench's stage timers stop at the
engine boundary; this looks inside it.

    python -m vidrt.benchmarks.profile_ops --model svd-xt --precision bf16 \
        --batch 2 --frames 14 --height 128 --width 128 --output unet_ops.json
    python -m vidrt.benchmarks.profile_ops --model wan2.1-t2v-1.3b --precision bf16 \
        --batch 2 --frames 17 --height 256 --width 256

The engine is compiled for the one static shape given (as ``--static`` does), with
OpenVINO's PERF_COUNT on. GEMM-class nodes (convolutions, matmuls, fused attention)
carry all the FLOPs torch's counter sees, so their share of the time, and the FLOP
rate they reach alone, say how much of the distance to the matmul ceiling is the
GEMMs' and how much the rest's (normalisation, softmax, layout, elementwise).
"""

from __future__ import annotations

import argparse
import collections
import time

GEMM_TYPES = ("Convolution", "MatMul", "FullyConnected", "ScaledDotProductAttention", "GroupConvolution",
              "Deconvolution")


def profile_component(onnx_path, spec, dims: dict, precision: str, runs: int = 2) -> dict:
    """Runs the component ``runs`` times at ``dims`` with OpenVINO's counters on.

    Returns:
        {"wall_s": median seconds per run, "by_type": [{type, ms, share, nodes}], "gemm_share": float}
    """
    import openvino as ov

    from vidrt.backends.openvino import kernel_config
    from vidrt.export.graphs import sample_inputs

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    model.reshape({t.name: list(spec.shape_of(t, dims)) for t in spec.inputs})
    compiled = core.compile_model(model, "CPU", kernel_config(precision) | {"PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    feeds = {k: v.numpy() for k, v in sample_inputs(spec, dims).items()}
    request.infer(feeds)  # warm-up: first-run allocations and kernel set-up
    walls, totals = [], collections.defaultdict(float)
    kernels = collections.defaultdict(float)  # (op type, kernel OpenVINO picked) -> seconds
    counts = collections.Counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        request.infer(feeds)
        walls.append(time.perf_counter() - t0)
        for node in request.get_profiling_info():
            if node.status != node.Status.EXECUTED:
                continue
            totals[node.node_type] += node.real_time.total_seconds() / runs
            kernels[(node.node_type, node.exec_type)] += node.real_time.total_seconds() / runs
            counts[node.node_type] += 1
    busy = sum(totals.values())
    rows = [{"type": t, "ms": 1000 * s, "share": s / busy, "nodes": counts[t] // runs}
            for t, s in sorted(totals.items(), key=lambda kv: -kv[1])]
    gemm = sum(s for t, s in totals.items() if t in GEMM_TYPES)
    by_kernel = [{"type": t, "kernel": k, "ms": 1000 * v, "share": v / busy}
                 for (t, k), v in sorted(kernels.items(), key=lambda kv: -kv[1])]
    return {"wall_s": sorted(walls)[len(walls) // 2], "busy_s": busy, "gemm_s": gemm,
            "gemm_share": gemm / busy if busy else 0.0, "by_type": rows, "by_kernel": by_kernel,
            "seconds_by_type": dict(totals)}


def _print_rows(result: dict) -> None:
    for row in result["by_type"][:15]:
        print(f"  {row['type']:<28}{row['ms']:9.1f} ms {100 * row['share']:5.1f}%  ({row['nodes']} nodes)")


def denoiser_rates(model, result: dict, batch: int, frames: int, height: int, width: int, ceiling: float,
                   text_length: int | None = None) -> dict:
    """The denoiser's FLOP rate per call against ``ceiling`` (this machine's matmul rate,
    TFLOP/s), whole and per class of node: convolutions, linear layers and attention as
    torch's counter splits the FLOPs, timed by the OpenVINO nodes that run them (fused
    attention is a Subgraph or ScaledDotProductAttention node; a Subgraph also carries
    fused elementwise work)."""
    from vidrt.benchmarks.roofline import unet_flops

    flops = unet_flops(model, batch, frames, height, width, text_length=text_length)
    split = unet_flops(model, batch, frames, height, width, by_op=True, text_length=text_length)
    out = {"unet_tflop": flops / 1e12, "ceiling_tflops": ceiling, "tflops_whole": flops / result["wall_s"] / 1e12,
           "tflops_gemm_only": flops / result["gemm_s"] / 1e12, "rates": {}}
    seconds = result["seconds_by_type"]
    classes = {"Convolution": (("convolution",), ("Convolution",)),
               "FullyConnected": (("mm", "addmm"), ("FullyConnected",)),
               "Attention": (("_scaled_dot_product_flash_attention_for_cpu", "bmm"),
                             ("ScaledDotProductAttention", "Subgraph", "MatMul"))}
    for name, (ops, node_types) in classes.items():
        f, sec = sum(split.get(o, 0) for o in ops), sum(seconds.get(t, 0.0) for t in node_types)
        if f and sec:
            out["rates"][name] = {"tflop": f / 1e12, "s": sec, "tflops": f / sec / 1e12,
                                  "of_ceiling": f / sec / 1e12 / ceiling}
    return out


def main(argv: list[str] | None = None) -> int:
    from vidrt.backends import get_backend
    from vidrt.benchmarks.roofline import CeilingProbe
    from vidrt.build import prepare_engines
    from vidrt.layout import default_engine_dir, onnx_path
    from vidrt.sources import resolve_model

    p = argparse.ArgumentParser(prog="python -m vidrt.benchmarks.profile_ops", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="svd-xt", help="a preset or a diffusers folder")
    p.add_argument("--component", help="default: the model's denoiser (unet, transformer); FLOP rates for a denoiser only")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "int8"],
                   help="int8: the quantization stage's graph of the component (the denoiser or vae_decoder)")
    p.add_argument("--batch", type=int, default=2, help="denoiser rows (2 per guided video)")
    p.add_argument("--frames", type=int, default=14, help="video frames (the latent frames follow the model's VAE)")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--text-length", type=int, help="prompt tokens, for models with text (default: the pipeline's, "
                   "as run-bench runs it)")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--output", help="write the profile as JSON")
    args = p.parse_args(argv)

    model = resolve_model(args.model)
    component = args.component or model.denoiser
    engine_dir = default_engine_dir(model, None)
    backend = get_backend("openvino")
    quantized = {component: args.precision} if args.precision == "int8" else None
    prepare_engines(model, engine_dir, backend, args.precision, component_precision=quantized)
    spec = model.specs()[component]
    s = model.vae_scale_factor
    dims = {"B": args.batch, "F": model.latent_frames(args.frames), "N": args.frames, "h": args.height // s,
            "w": args.width // s, "H": args.height, "W": args.width}
    text_length = args.text_length or model.default_text_length
    if "L" in spec.ranges:
        dims["L"] = text_length
    dims = {k: v for k, v in dims.items() if k in spec.ranges}
    # The machine's rate drifts within minutes: the ceiling is probed just before and after the profile.
    probe = CeilingProbe(args.precision)
    before = probe()
    result = profile_component(onnx_path(model, engine_dir, backend, component, args.precision), spec, dims,
                               args.precision, args.runs)
    ceiling = (before + probe()) / 2
    result |= {"model": model.label, "component": component, "dims": dims, "precision": args.precision}
    if component in model.denoisers:
        result |= denoiser_rates(model, result, args.batch, args.frames, args.height, args.width, ceiling,
                                 text_length)
        print(f"{model.label}: {component} {dims} {args.precision}: {result['wall_s']:.2f} s/call, "
              f"{result['tflops_whole']:.3f} TFLOP/s whole = {100 * result['tflops_whole'] / ceiling:.0f}% of the "
              f"{ceiling:.3f} TFLOP/s ceiling; GEMM-class nodes {100 * result['gemm_share']:.0f}% of the time")
        _print_rows(result)
        for name, r in result["rates"].items():
            print(f"  {name}: {r['tflop']:.3f} TFLOP in {r['s']:.3f} s = {r['tflops']:.3f} TFLOP/s "
                  f"({100 * r['of_ceiling']:.0f}% of the ceiling)")
        for row in result["by_kernel"][:8]:
            print(f"  kernel {row['type']}/{row['kernel']}: {row['ms']:.1f} ms ({100 * row['share']:.1f}%)")
    else:
        print(f"{model.label}: {component} {dims} {args.precision}: {result['wall_s']:.2f} s/call")
        _print_rows(result)
    if args.output:
        from vidrt.fsutil import atomic_write_json

        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
