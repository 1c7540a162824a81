"""Where a component's time goes inside OpenVINO: the per-node counters of one
compiled engine, summed by operation type. run-bench's stage timers stop at the
engine boundary; this looks inside it.

    python -m vidrt.benchmarks.profile_ops --model svd-xt --precision bf16 \
        --batch 2 --frames 14 --height 128 --width 128 --output unet_ops.json

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

    from vidrt.backends.openvino import hint
    from vidrt.export.graphs import sample_inputs

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    model.reshape({t.name: list(spec.shape_of(t, dims)) for t in spec.inputs})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint(precision),
                                                 "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": "YES"})
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


def main(argv: list[str] | None = None) -> int:
    from vidrt.backends import get_backend
    from vidrt.benchmarks.roofline import matmul_ceiling, unet_flops
    from vidrt.build import prepare_engines
    from vidrt.layout import default_engine_dir, onnx_path
    from vidrt.sources import resolve_model

    p = argparse.ArgumentParser(prog="python -m vidrt.benchmarks.profile_ops", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="svd-xt")
    p.add_argument("--component", default="unet", help="unet, vae_decoder, ... (FLOP rates for the UNet only)")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "int8"],
                   help="int8: the quantization stage's graph of the component (unet or vae_decoder)")
    p.add_argument("--batch", type=int, default=2, help="UNet rows (2 per guided video)")
    p.add_argument("--frames", type=int, default=14)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--output", help="write the profile as JSON")
    args = p.parse_args(argv)

    model = resolve_model(args.model)
    engine_dir = default_engine_dir(model, None)
    backend = get_backend("openvino")
    quantized = {args.component: args.precision} if args.precision == "int8" else None
    prepare_engines(model, engine_dir, backend, args.precision, component_precision=quantized)
    spec = model.specs()[args.component]
    s = model.vae_scale_factor
    dims = {"B": args.batch, "F": args.frames, "N": args.frames, "h": args.height // s, "w": args.width // s,
            "H": args.height, "W": args.width}
    if "L" in spec.ranges:
        dims["L"] = model.max_text_length
    dims = {k: v for k, v in dims.items() if k in spec.ranges}
    result = profile_component(onnx_path(model, engine_dir, backend, args.component, args.precision), spec, dims,
                               args.precision, args.runs)
    if args.component != "unet":
        print(f"{model.label}: {args.component} {dims} {args.precision}: {result['wall_s']:.2f} s/call")
        for row in result["by_type"][:15]:
            print(f"  {row['type']:<28}{row['ms']:9.1f} ms {100 * row['share']:5.1f}%  ({row['nodes']} nodes)")
        if args.output:
            from vidrt.fsutil import atomic_write_json

            atomic_write_json(args.output, result | {"dims": dims, "precision": args.precision})
        return 0
    flops = unet_flops(model, args.batch, args.frames, args.height, args.width)
    split = unet_flops(model, args.batch, args.frames, args.height, args.width, by_op=True)
    ceiling = matmul_ceiling(args.precision)
    result |= {"model": model.label, "dims": dims, "precision": args.precision, "unet_tflop": flops / 1e12,
               "ceiling_tflops": ceiling, "tflops_whole": flops / result["wall_s"] / 1e12,
               "tflops_gemm_only": flops / result["gemm_s"] / 1e12}
    print(f"{model.label}: unet {dims} {args.precision}: {result['wall_s']:.2f} s/call, "
          f"{result['tflops_whole']:.2f} TFLOP/s whole = {100 * result['tflops_whole'] / ceiling:.0f}% of the "
          f"{ceiling:.2f} TFLOP/s ceiling; GEMM-class nodes {100 * result['gemm_share']:.0f}% of the time at "
          f"{result['tflops_gemm_only']:.2f} TFLOP/s ({100 * result['tflops_gemm_only'] / ceiling:.0f}%)")
    for row in result["by_type"][:15]:
        print(f"  {row['type']:<28}{row['ms']:9.1f} ms {100 * row['share']:5.1f}%  ({row['nodes']} nodes)")
    # torch's counter splits the FLOPs into convolutions and linear layers (it does not
    # count the CPU attention kernel): each class's own rate against the ceiling.
    seconds = result["seconds_by_type"]
    rates = {"Convolution": (split.get("convolution", 0), seconds.get("Convolution", 0.0)),
             "FullyConnected": (split.get("mm", 0) + split.get("addmm", 0), seconds.get("FullyConnected", 0.0))}
    result["rates"] = {}
    for name, (f, sec) in rates.items():
        if sec:
            result["rates"][name] = {"tflop": f / 1e12, "s": sec, "tflops": f / sec / 1e12, "of_ceiling": f / sec / 1e12 / ceiling}
            print(f"  {name}: {f / 1e12:.3f} TFLOP in {sec:.3f} s = {f / sec / 1e12:.2f} TFLOP/s "
                  f"({100 * f / sec / 1e12 / ceiling:.0f}% of the ceiling)")
    for row in result["by_kernel"][:8]:
        print(f"  kernel {row['type']}/{row['kernel']}: {row['ms']:.1f} ms ({100 * row['share']:.1f}%)")
    if args.output:
        from vidrt.fsutil import atomic_write_json

        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
