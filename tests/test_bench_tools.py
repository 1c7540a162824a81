"""Benchmark helpers: FLOP counting without weights, scenarios, parity metrics."""

import statistics

import numpy as np
import pytest
import torch

from vidrt.benchmarks.harness import parity
from vidrt.benchmarks.roofline import unet_flops
from vidrt.benchmarks.scenarios import SCENARIOS, scenario
from vidrt.errors import VidrtError


def test_fake_tensor_flops_equal_a_real_forward(tiny_model):
    from torch.utils.flop_counter import FlopCounterMode

    from vidrt.benchmarks.roofline import CPU_ATTENTION_FLOPS
    from vidrt.export.graphs import component_graph
    from vidrt.sources import load_torch_component

    args = (torch.randn(2, 3, 8, 8, 12), torch.tensor([1.0]), torch.randn(2, 1, 32), torch.randn(2, 3))
    counted = {}
    for name, module in (("diffusers", load_torch_component(tiny_model, "unet")),
                         ("graph", component_graph("unet", load_torch_component(tiny_model, "unet")))):
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter, torch.no_grad():
            module(*args)
        counted[name] = counter.get_total_flops()
    assert unet_flops(tiny_model, 2, 3, 16, 24, diffusers_graph=True) == counted["diffusers"]
    # the exported graph skips the one-token cross-attention's queries, keys and scores
    assert unet_flops(tiny_model, 2, 3, 16, 24) == counted["graph"] < counted["diffusers"]


def test_cpu_attention_is_counted():
    """torch's counter knows only the CUDA attention kernels; on a CPU the scores and the
    weighted sum are 2 multiply-adds per (query, key, channel): 4·B·H·Lq·Lk·D FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from vidrt.benchmarks.roofline import CPU_ATTENTION_FLOPS

    q, kv = torch.randn(2, 3, 20, 8), torch.randn(2, 3, 7, 8)
    with FlopCounterMode(display=False) as plain:
        torch.nn.functional.scaled_dot_product_attention(q, kv, kv)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        torch.nn.functional.scaled_dot_product_attention(q, kv, kv)
    assert plain.get_total_flops() == 0  # when torch counts it itself, the mapping can go
    assert counter.get_total_flops() == 4 * 2 * 3 * 20 * 7 * 8


def test_scenarios_are_the_issue_set():
    assert scenario("a") == dict(model="svd-xt", height=128, width=128, num_frames=14, steps=4, sampler="euler",
                                 min_guidance=1.0, max_guidance=3.0, batch_size=1)
    assert scenario("b")["height"] == scenario("b")["width"] == 256
    assert scenario("c-lcm")["sampler"] == "animatelcm" and scenario("c-lcm")["max_guidance"] <= 1.0
    assert scenario("c-euler")["steps"] == 25 and set(SCENARIOS) == {"a", "b", "c-lcm", "c-euler"}
    with pytest.raises(VidrtError, match="--scenario z: choose one of"):
        scenario("z")


def test_parity_metrics():
    a = np.zeros((1, 2, 4, 4, 3))
    b = a.copy()
    assert parity(a, b) == {"max_abs_err": 0.0, "mean_abs_err": 0.0, "rel_l2": 0.0, "psnr_db": float("inf")}
    b[0, 0, 0, 0, 0] = 0.1
    p = parity(a, b)
    assert p["max_abs_err"] == pytest.approx(0.1) and p["psnr_db"] == pytest.approx(10 * np.log10(96 / 0.01))


@pytest.mark.parametrize("precision", ["bf16", "bf16-autocast"])
def test_bf16_baselines_run_and_stay_close(tiny_model, reference, precision):
    from vidrt.benchmarks.baseline import DiffusersBaseline
    from vidrt.benchmarks.harness import BenchConfig, bench_image

    base = DiffusersBaseline(tiny_model, precision)
    image = bench_image(BenchConfig(height=32, width=32))
    kw = dict(height=32, width=32, num_frames=2, num_inference_steps=2)
    frames, stages, steps, _ = base({"image": image}, torch.Generator().manual_seed(0), **kw)
    ref = reference(image, generator=torch.Generator().manual_seed(0), output_type="np", **kw).frames
    assert frames.dtype == np.float32 and len(steps) == 2 and stages["unet"] > 0
    # bf16 keeps 8 mantissa bits: frames stay within a few 1e-2 of fp32.
    assert np.abs(frames - ref).mean() < 0.02


def test_text_to_video_bf16_baseline_runs_with_timed_stages(vidrt_cache):
    from vidrt.benchmarks.baseline import DiffusersBaseline
    from vidrt.sources import resolve_model

    model = resolve_model("tiny-t2v", progress=False)
    base = DiffusersBaseline(model, "bf16-autocast")
    kw = dict(height=32, width=32, num_frames=2, num_inference_steps=2, guidance_scale=5.0)
    frames, stages, steps, _ = base({"prompt": "a cat"}, torch.Generator().manual_seed(0), **kw)
    assert frames.shape == (1, 2, 32, 32, 3) and frames.dtype == np.float32
    assert set(stages) == {"text_encoder", "unet", "vae_decoder"} and len(steps) == 2


def test_unet_flops_of_the_text_to_video_denoisers(vidrt_cache):
    """The fake-tensor count equals a real forward's count through the export graph, for
    the text-to-video UNets and Wan's transformer (5 video frames: 2 latent frames)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vidrt.benchmarks.roofline import CPU_ATTENTION_FLOPS, unet_flops
    from vidrt.export.graphs import component_graph, sample_inputs
    from vidrt.sources import load_torch_component, resolve_model

    for name in ("tiny-t2v", "tiny-animatediff", "tiny-wan"):
        model = resolve_model(name, progress=False)
        spec = model.specs()[model.denoiser]
        graph = component_graph(model.denoiser, load_torch_component(model, model.denoiser))
        feeds = sample_inputs(spec, {"B": 2, "F": model.latent_frames(5), "h": 8, "w": 8, "L": model.max_text_length})
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter, torch.no_grad():
            graph(*(feeds[n] for n in spec.input_names))
        assert unet_flops(model, 2, 5, 8 * model.vae_scale_factor, 8 * model.vae_scale_factor) == counter.get_total_flops() > 0


def test_openvino_op_profile_accounts_for_the_unet(tiny_model, tiny_engine_dir):
    """profile_ops sums OpenVINO's per-node counters by type; GEMM-class nodes are found."""
    pytest.importorskip("openvino")
    from vidrt.benchmarks.profile_ops import profile_component

    spec = tiny_model.specs()["unet"]
    dims = {"B": 2, "F": 3, "h": 8, "w": 8}
    prof = profile_component(tiny_engine_dir / "unet" / "onnx" / "model.onnx", spec, dims, "fp32", runs=1)
    assert prof["wall_s"] > 0 and 0 < prof["gemm_share"] <= 1
    assert sum(r["share"] for r in prof["by_type"]) == pytest.approx(1.0)
    assert {"Convolution", "MatMul"} & {r["type"] for r in prof["by_type"]}


def test_matmul_ceilings_per_library():
    from vidrt.benchmarks.roofline import matmul_ceiling, matmul_ceilings

    pytest.importorskip("openvino")
    for precision in ("fp32", "bf16"):
        rates = matmul_ceilings(precision, n=256, repeats=1)
        assert set(rates) == {"torch", "openvino"} and min(rates.values()) > 0
    int8 = matmul_ceilings("int8", n=256, repeats=1)
    assert set(int8) == {"openvino"} and int8["openvino"] > 0  # torch has no CPU int8 GEMM to time
    assert matmul_ceiling("bf16", n=256, repeats=1) > 0


def test_int8_ceiling_runs_an_integer_gemm():
    """The int8 ceiling is only a ceiling if OpenVINO runs its pattern on integer kernels."""
    ov = pytest.importorskip("openvino")
    from vidrt.benchmarks.roofline import openvino_gemm_model

    request = ov.Core().compile_model(openvino_gemm_model("int8", 64), "CPU", {"PERF_COUNT": "YES"}).create_infer_request()
    request.infer({0: np.zeros((64, 64), np.float32)})
    kernels = [p.exec_type for p in request.get_profiling_info() if p.node_type == "FullyConnected"]
    assert kernels and all(k.upper().endswith(("I8", "U8")) for k in kernels), kernels


def test_baseline_worker_runs_diffusers_in_another_process_and_reports_its_death(tiny_model):
    import os

    from vidrt.benchmarks.worker import BaselineWorker
    from vidrt.errors import VidrtError

    from conftest import make_image

    kwargs = dict(height=32, width=32, num_frames=2, num_inference_steps=1, min_guidance_scale=1.0, max_guidance_scale=1.0)
    with BaselineWorker(tiny_model, "fp32") as worker:
        assert worker.pid != os.getpid()
        run = worker.run({"image": make_image(32, 32)}, 0, kwargs)
        assert run["frames"].shape == (1, 2, 32, 32, 3) and run["peak_rss_mb"] > 0
        worker.process.kill()
        worker.process.join()
        with pytest.raises(VidrtError, match="baseline process died"):
            worker.run({"image": make_image(32, 32)}, 0, kwargs)


def test_wan_layers_folder_is_the_real_transformer_cut_short(tmp_path):
    """benchmarks/wan_layers writes a folder vidrt loads, whose transformer has the real
    Wan2.1-T2V-1.3B config but for num_layers, and whose export graph (rotary at the real
    head dim 128) computes what diffusers' transformer does."""
    import copy

    from vidrt.benchmarks.wan_layers import main
    from vidrt.export.graphs import component_graph
    from vidrt.families.wan.presets import PRESETS
    from vidrt.sources import load_torch_component, resolve_model

    assert main(["--layers", "1", "--output", str(tmp_path / "wan1")]) == 0
    model = resolve_model(str(tmp_path / "wan1"), progress=False)
    real = PRESETS["wan2.1-t2v-1.3b"]["transformer"]
    assert {k: model.transformer[k] for k in real} == {**real, "num_layers": 1}
    transformer = load_torch_component(model, "transformer")
    graph = component_graph("transformer", copy.deepcopy(transformer))
    gen = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 16, 2, 4, 6, generator=gen), torch.randn(1, 5, 4096, generator=gen)
    with torch.no_grad():
        want = transformer(x, torch.full((1,), 300.0), text, return_dict=False)[0]
        got = graph(x, torch.tensor([300.0]), text, torch.zeros(1, 5))
    # fp32, the same operations but RMSNorm written out: rounding-level differences only
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    with pytest.raises(SystemExit):
        main(["--layers", "31", "--output", str(tmp_path / "x")])


def test_the_denoisers_own_precision_picks_its_ceiling(vidrt_cache, monkeypatch):
    """An INT8 transformer in a bf16 run (--component-precision transformer=int8) is put
    against the int8 GEMM ceiling, not the run's bf16 one (it once printed 154% of bf16)."""
    import dataclasses

    from vidrt.benchmarks import harness, roofline
    from vidrt.sources import resolve_model

    monkeypatch.setattr(roofline, "matmul_ceilings", lambda precision, *args, **kwargs: {"openvino": 1.0})
    model = resolve_model("tiny-wan", progress=False)
    cfg = harness.BenchConfig(model="tiny-wan", precision="bf16", component_precision="transformer=int8")
    assert harness.ceiling_precision(model, cfg) == "int8"
    assert harness.ceiling_precision(model, dataclasses.replace(cfg, component_precision="vae_decoder=fp32")) == "bf16"
    assert harness.ceiling_precision(model, dataclasses.replace(cfg, precision="fp8", component_precision=None)) == "bf16"


def test_ceiling_probe_measures_again_each_call():
    from vidrt.benchmarks.roofline import CeilingProbe, matmul_ceilings

    pytest.importorskip("openvino")
    probe = CeilingProbe("fp32", n=256)
    assert set(probe.libraries) == set(matmul_ceilings("fp32", n=256)) == {"torch", "openvino"}
    rates = [probe(), probe()]
    assert probe.rates == rates and min(rates) > 0


def test_interleaved_run_bench_warms_the_engine_up_before_the_baseline_loads(t2v_engine_dir, monkeypatch):
    """The engine's first run is where OpenVINO packs its weights (svd-xt: ~3.5 GB above what
    it keeps); the baseline process starts after it, so that peak never meets the baseline's
    weights. Timed runs then alternate engine, baseline, each put against the matmul ceiling
    probed just before and just after it (the machine's rate drifts between runs)."""
    from vidrt.benchmarks import harness
    from vidrt.benchmarks.worker import BaselineWorker

    from conftest import ScriptedProbe

    events = []
    engine_run, load_baseline, baseline_run = harness._engine_run, harness.Sides.load_baseline, BaselineWorker.run
    monkeypatch.setattr(harness, "_engine_run", lambda *a: events.append("engine") or engine_run(*a))
    monkeypatch.setattr(harness.Sides, "load_baseline", lambda self: events.append("baseline load") or load_baseline(self))
    monkeypatch.setattr(BaselineWorker, "run", lambda self, *a: events.append("baseline") or baseline_run(self, *a))
    monkeypatch.setattr(harness, "_ceiling_probe", lambda model, cfg, device: ScriptedProbe(events))
    cfg = harness.BenchConfig(model="tiny-wan", engine_dir=str(t2v_engine_dir("tiny-wan")), backend="onnxruntime",
                              height=32, width=32, num_frames=5, steps=2, runs=2, warmup=1)
    result = harness.run_bench(cfg, progress=False)
    assert events == ["engine", "baseline load", "baseline", "probe", "engine", "probe", "baseline", "probe",
                      "engine", "probe", "baseline", "probe"]
    # probes 1..5 read 1..5 TFLOP/s: each run is put against the mean of the two around it
    r = result["roofline"]
    assert r["ceiling_probes_tflops"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    for side, flops, ceilings in (("engine", r["unet_tflop_per_step"], (1.5, 3.5)),
                                  ("baseline", r["diffusers_unet_tflop_per_step"], (2.5, 4.5))):
        steps = result[side]["stages_ms"]["transformer_step"]["samples"]  # 2 a run, in order
        rates = [flops / (statistics.median(steps[2 * i:2 * i + 2]) / 1000) for i in range(2)]
        paired = r[f"{side}_fraction_of_ceiling_paired"]["samples"]
        assert paired == pytest.approx([rate / c for rate, c in zip(rates, ceilings)])
    assert len(result["engine"]["warmup_s"]) == 1 and len(result["baseline"]["warmup_s"]) == 1
    assert result["parity"]["max_abs_err"] <= 2e-3  # tests/test_wan.py's bar against diffusers' WanPipeline
    assert result["peak_memory_both_mb"] >= result["baseline"]["peak_memory_mb"]  # the baseline sampled too


@pytest.mark.parametrize("name", ["tiny-ltx", "tiny-wan"])
def test_denoiser_flops_at_the_requests_text_length(vidrt_cache, name):
    """The roofline counts the denoiser call diffusers' own pipeline makes for run-bench's
    request: counted here inside diffusers' transformer forwards (torch's counter), LTX-Video
    at its pipeline's 128 prompt tokens, not the 512 its engines take."""
    from torch.utils.flop_counter import FlopCounterMode

    from vidrt.benchmarks import harness
    from vidrt.benchmarks.roofline import CPU_ATTENTION_FLOPS
    from vidrt.sources import load_torch_components, resolve_model

    model = resolve_model(name, progress=False)
    cfg = harness.BenchConfig(model=name, height=32, width=32, steps=2)  # LTX: diffusers fails one step
    ref = load_torch_components(model)
    ref.set_progress_bar_config(disable=True)
    counted, forward = [], ref.transformer.forward

    def counting_forward(*args, **kwargs):
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
            out = forward(*args, **kwargs)
        counted.append(counter.get_total_flops())
        return out

    ref.transformer.forward = counting_forward
    with torch.no_grad():
        ref(**cfg.inputs(model), **cfg.request(model), generator=torch.Generator().manual_seed(0), output_type="latent")
    flops, diffusers_flops = harness.denoiser_flops(model, cfg, cfg.frames(model))
    # per step: LTX-Video's one batched call for both guidance halves, Wan's two calls
    assert sum(counted) == cfg.steps * diffusers_flops > 0
    assert 0 < flops <= diffusers_flops  # export only drops dead work


@pytest.mark.parametrize("name, pipeline", [("tiny-wan", "WanPipeline"), ("tiny-ltx", "LTXPipeline"),
                                            ("tiny-ltx-i2v", "LTXImageToVideoPipeline")])
def test_default_text_length_is_the_diffusers_pipelines(vidrt_cache, name, pipeline):
    """The text length the roofline and profile_ops count and profile at by default is the
    one diffusers' pipeline runs a request at: its __call__'s max_sequence_length default."""
    import inspect

    import diffusers

    from vidrt.sources import resolve_model

    call = inspect.signature(getattr(diffusers, pipeline).__call__)
    assert resolve_model(name, progress=False).default_text_length == call.parameters["max_sequence_length"].default
