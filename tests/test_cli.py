"""The three commands end to end on tiny-svd, and every bad input's one-line error."""

import json
import os
import subprocess

import imageio.v3 as iio
import pytest

from vidrt.cli import main

from conftest import make_image


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "in.png"
    make_image(48, 64).save(path)
    return path


def common(engine_dir):
    return ["--model", "tiny-svd", "--engine-dir", str(engine_dir), "--backend", "onnxruntime"]


def test_build_engines_reuses_a_built_dir(capsys, tiny_engine_dir):
    code, out, err = run(capsys, "build-engines", *common(tiny_engine_dir))
    assert code == 0, err
    assert "RANDOM WEIGHTS" in out
    assert out.count("reused") == 4


def test_generate_writes_mp4_gif_and_png_frames(capsys, tiny_engine_dir, image_file, tmp_path):
    req = ["--height", "32", "--width", "48", "--num-frames", "3", "--steps", "2"]
    mp4 = tmp_path / "out.mp4"
    code, out, err = run(capsys, "generate", *common(tiny_engine_dir), *req, "--image", str(image_file), "--output", str(mp4))
    assert code == 0, err
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    assert meta["size"] == (48, 32) and meta["codec"] == "h264"
    assert len(list(reader)) == 3
    gif = tmp_path / "out.gif"
    assert run(capsys, "generate", *common(tiny_engine_dir), *req, "--image", str(image_file), "--output", str(gif))[0] == 0
    assert iio.imread(gif).shape[:3] == (3, 32, 48)
    folder = tmp_path / "frames"
    assert run(capsys, "generate", *common(tiny_engine_dir), *req, "--image", str(image_file), "--output", str(folder))[0] == 0
    assert sorted(p.name for p in folder.iterdir()) == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_run_bench_writes_the_documented_json(capsys, tiny_engine_dir, tmp_path):
    out_json, history = tmp_path / "bench.json", tmp_path / "history"
    code, out, err = run(capsys, "run-bench", *common(tiny_engine_dir), "--height", "32", "--width", "32",
                         "--num-frames", "2", "--steps", "2", "--runs", "2", "--warmup", "1", "--output", str(out_json),
                         "--history", str(history), "--plot", str(tmp_path / "stages.png"))
    assert code == 0, err
    png = iio.imread(tmp_path / "stages.png")
    assert png.ndim == 3 and png.shape[1] > 400 and png[..., :3].std() > 10  # drawn, not blank
    assert "speedup" in out and "RANDOM WEIGHTS" in out
    r = json.loads(out_json.read_text())
    assert r["schema"] == 2
    assert {"git_sha", "git", "versions", "cpu", "gpu"} <= set(r["environment"])
    assert {"openvino", "tensorrt", "torch"} <= set(r["environment"]["versions"])
    assert r["case"] == {"model": "tiny-svd", "family": "image-to-video", "backend": "onnxruntime", "precision": "fp32",
                         "component_precisions": None, "batch": 1, "frames": 2, "height": 32, "width": 32, "steps": 2,
                         "sampler": "euler", "guidance": "1.0..3.0", "baseline_precision": "fp32"}
    assert {"cpu", "flags", "cores", "ram_gib", "gpu", "gpu_driver", "id"} == set(r["machine"])
    for side in ("engine", "baseline"):
        s = r[side]
        assert {"backend", "precision", "build_s", "stages_ms", "end_to_end_s", "peak_memory_mb",
                "videos_per_min", "frames_per_s"} <= set(s)
        assert set(s["stages_ms"]) >= {"image_encoder", "vae_encoder", "unet", "unet_step", "vae_decoder"}
        assert set(s["end_to_end_s"]) == {"median", "min", "max", "samples"}
        # Every timed run's value is kept: two runs end to end and per stage, four steps.
        assert len(s["end_to_end_s"]["samples"]) == 2 and len(s["stages_ms"]["unet"]["samples"]) == 2
        assert len(s["stages_ms"]["unet_step"]["samples"]) == 4 and len(s["peak_rss_mb_per_run"]) == 2
        assert s["end_to_end_s"]["median"] == pytest.approx(sum(s["end_to_end_s"]["samples"]) / 2)
    # The same result was recorded in the history, in the machine's file.
    assert [p.name for p in history.glob("*.jsonl")] == [f"{r['machine']['id']}.jsonl"]
    code, out, err = run(capsys, "history", str(history))
    assert code == 0 and "tiny-svd onnxruntime fp32" in out and len(out.splitlines()) == 2
    # A result against itself: no change, exit 0.
    code, out, err = run(capsys, "compare", str(out_json), str(out_json))
    assert code == 0, err
    assert "REGRESSION" not in out and " ~" in out
    assert r["speedup"] == pytest.approx(r["baseline"]["end_to_end_s"]["median"] / r["engine"]["end_to_end_s"]["median"])
    assert r["parity"]["max_abs_err"] <= 2e-3 and r["parity"]["psnr_db"] > 40
    # diffusers ran in its own worker process: the two processes' RSS summed at once is
    # at least the worker's own peak.
    assert r["peak_memory_both_mb"] >= r["baseline"]["peak_memory_mb"] > 0
    # Each side's figure is its whole process's peak, so together they cover the summed
    # peak (5% for the samplers' different instants); a growth-only figure would not.
    engine, baseline = r["engine"]["peak_memory_mb"], r["baseline"]["peak_memory_mb"]
    assert engine + baseline >= 0.95 * r["peak_memory_both_mb"]


def test_run_bench_without_baseline_and_with_animatelcm(capsys, tiny_engine_dir, tmp_path):
    code, out, err = run(capsys, "run-bench", *common(tiny_engine_dir), "--height", "32", "--width", "32",
                         "--num-frames", "2", "--steps", "2", "--runs", "1", "--warmup", "0",
                         "--baseline-precision", "none", "--sampler", "animatelcm", "--max-guidance", "1.0")
    assert code == 0, err
    assert "baseline skipped" in out


def test_run_bench_hands_pipeline_args_to_both_sides(capsys, tiny_engine_dir, tmp_path):
    """--pipeline-arg reaches vidrt and diffusers alike: custom sigmas set both sides' steps,
    the frames agree, and the JSON records the argument."""
    out = tmp_path / "b.json"
    code, stdout, err = run(capsys, "run-bench", *common(tiny_engine_dir), "--height", "32", "--width", "32",
                            "--num-frames", "2", "--steps", "9", "--runs", "1", "--warmup", "0",
                            "--pipeline-arg", "sigmas=[5, 1.5, 0]", "--output", str(out))
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["config"]["pipeline_arg"] == ["sigmas=[5, 1.5, 0]"]
    assert len(result["engine"]["stages_ms"]["unet_step"]["samples"]) == 2  # 2 steps, not --steps 9
    assert result["parity"]["max_abs_err"] <= 2e-3


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "/nonexistent/model"], "does not exist"),
        (["--model", "owner/some-svd-model"], "HF_HUB_OFFLINE is set and the model is not in the local hub cache"),
        (["--model", "not-a-thing"], "not a preset"),
        (["--steps", "0"], "need at least 1 step"),
        (["--num-frames", "0"], "need at least 1 frame"),
        (["--height", "30"], "multiples of 8"),
        (["--image", "__missing__.png"], "file not found"),
        (["--image", "__text__"], "not a readable image"),
        (["--output", "/nonexistent-dir/out.mp4"], "folder /nonexistent-dir does not exist"),
        (["--output", "out.avi"], "unknown extension .avi"),
        (["--precision", "fp16"], "engines, not fp16"),
        (["--height", "2056"], "height=2056 is outside this engine's range"),
        (["--backend", "tensorrt"], "TensorRT needs an NVIDIA GPU with CUDA and this machine has none"),
        (["--pipeline-arg", "colour=red"], "image-to-video pipelines take no 'colour'; their extra keywords are sigmas"),
        (["--pipeline-arg", "height=64"], "--pipeline-arg height: not an extra keyword; set it with --height"),
        (["--pipeline-arg", "latents=0"], "only the Python API takes it"),
        (["--pipeline-arg", "sigmas"], "write NAME=VALUE"),
    ],
)
def test_generate_bad_input_is_one_line(capsys, tiny_engine_dir, image_file, tmp_path, monkeypatch, argv, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = tmp_path / "not_image.png"
    text.write_text("hello")
    argv = [str(text) if a == "__text__" else a for a in argv]
    base = {"--model": "tiny-svd", "--engine-dir": str(tiny_engine_dir), "--image": str(image_file),
            "--output": str(tmp_path / "o.mp4"), "--height": "32", "--width": "32", "--num-frames": "2", "--steps": "1"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    flat = [x for kv in base.items() for x in kv]
    code, out, err = run(capsys, "generate", *flat)
    assert code == 2
    assert message in err
    # One line, no traceback, and before any engine work for argument errors.
    assert err.startswith("vidrt: error: ") and err.count("\n") == 1, err


def test_generate_passes_pipeline_args(capsys, tiny_engine_dir, image_file, tmp_path):
    """--pipeline-arg NAME=VALUE reaches the pipeline as its keyword, the value read as JSON."""
    from vidrt.request import GenerateConfig

    cfg = GenerateConfig(pipeline_arg=["sigmas=[5, 1.5, 0]", "note=plain text", "flag=true"])
    assert cfg.pipeline_args() == {"sigmas": [5, 1.5, 0], "note": "plain text", "flag": True}
    out = tmp_path / "s.gif"
    code, stdout, err = run(capsys, "generate", "--model", "tiny-svd", "--engine-dir", str(tiny_engine_dir), "--image",
                            str(image_file), "--height", "32", "--width", "32", "--num-frames", "2", "--steps", "9",
                            "--pipeline-arg", "sigmas=[5, 1.5, 0]", "--output", str(out))
    assert code == 0, err
    assert "over 2 steps" in stdout  # the sigmas set the steps, not --steps
    code, stdout, err = run(capsys, "generate", "--model", "tiny-svd", "--engine-dir", str(tiny_engine_dir), "--image",
                            str(image_file), "--height", "32", "--width", "32", "--num-frames", "2",
                            "--pipeline-arg", "sigmas=[5, 0, 0]", "--output", str(out))
    errors = [line for line in err.splitlines() if line.startswith("vidrt: error:")]  # the pipeline's own check
    assert code == 2 and len(errors) == 1 and "all above 0 but the last" in errors[0] and "Traceback" not in err


def test_malformed_model_folder(capsys, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model_index.json").write_text("{not json")
    code, _, err = run(capsys, "build-engines", "--model", str(folder))
    assert code == 2 and "is not valid JSON" in err
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableVideoDiffusionPipeline"}))
    code, _, err = run(capsys, "build-engines", "--model", str(folder))
    assert code == 2 and "unet/config.json is missing" in err


def test_corrupted_engine_with_refusal_is_a_clear_error(capsys, tiny_engine_dir, tmp_path, image_file):
    import shutil

    from vidrt import VideoPipeline, VidrtError

    broken = tmp_path / "engines"
    shutil.copytree(tiny_engine_dir, broken)
    (broken / "unet" / "onnxruntime-fp32" / "model.opt.onnx").write_bytes(b"garbage")
    with pytest.raises(VidrtError, match="unet engine .* is corrupted"):
        VideoPipeline.from_pretrained("tiny-svd", engine_dir=broken, backend="onnxruntime", build=False, progress=False)


def test_entry_points_and_help(capsys, tmp_path, monkeypatch):
    from importlib.metadata import entry_points

    import vidrt.cli

    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.value.startswith("vidrt.")}
    assert scripts == {"vidrt": "vidrt.cli:main", "build-engines": "vidrt.cli:build_engines_main",
                       "run-bench": "vidrt.cli:run_bench_main", "generate": "vidrt.cli:generate_main"}
    for entry in (vidrt.cli.main, vidrt.cli.build_engines_main, vidrt.cli.run_bench_main, vidrt.cli.generate_main):
        monkeypatch.setattr("sys.argv", ["x", "--help"])
        with pytest.raises(SystemExit) as done:
            entry(["--help"]) if entry is vidrt.cli.main else entry()
        assert done.value.code == 0 and "usage:" in capsys.readouterr().out
    # One real process: the installed script, refusing before the default preset is created.
    proc = subprocess.run(["generate"], capture_output=True, text=True, env=os.environ | {"VIDRT_CACHE": str(tmp_path)})
    assert proc.returncode == 2 and "--image" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_tensorrt_flags_map_onto_build_options():
    from vidrt.cli import BuildConfig, _config, build_parser

    args = build_parser().parse_args([
        "build-engines", "--backend", "tensorrt", "--precision", "fp16", "--min", "batch=1,frames=8,height=256,width=256",
        "--opt", "frames=14", "--max", "batch=2,frames=25,height=576,width=1024", "--workspace", "4096",
        "--opt-level", "5", "--timing-cache", "t.cache", "--component-precision", "vae_decoder=fp32",
    ])
    cfg = _config(BuildConfig, args)
    opts = cfg.trt_options()  # engine_kwargs would stop here: no GPU
    kw = {"component_precision": cfg.component_precisions()}
    assert opts.shapes.min == {"batch": 1, "frames": 8, "height": 256, "width": 256}
    assert opts.shapes.opt == {"frames": 14} and opts.shapes.max["width"] == 1024
    assert (opts.workspace_mb, opts.optimization_level, opts.timing_cache) == (4096, 5, "t.cache")
    assert kw["component_precision"] == {"vae_decoder": "fp32"}


def test_tensorrt_build_without_gpu_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "build-engines", "--model", "tiny-svd", "--backend", "tensorrt",
                       "--engine-dir", str(tmp_path), "--precision", "fp16")
    assert code == 2 and err.count("\n") == 1
    assert "TensorRT needs an NVIDIA GPU" in err and "pip install -e '.[gpu]'" in err


def test_tensorrt_flags_with_another_backend_are_refused(capsys, tmp_path):
    code, _, err = run(capsys, "build-engines", "--model", "tiny-svd", "--backend", "onnxruntime",
                       "--engine-dir", str(tmp_path), "--max", "batch=2")
    assert code == 2 and "are TensorRT build flags; --backend onnxruntime takes none of them" in err
    code, _, err = run(capsys, "build-engines", "--model", "tiny-svd", "--backend", "onnxruntime",
                       "--engine-dir", str(tmp_path), "--component-precision", "vae_decoder")
    assert code == 2 and "write component=precision" in err


def test_text_to_video_generate_and_run_bench(capsys, tmp_path, t2v_engine_dir):
    """generate --prompt writes an MP4; run-bench on AnimateDiff writes the same JSON schema
    with the text-to-video stages, and its frames agree with diffusers'."""
    engines = ["--backend", "onnxruntime", "--engine-dir"]
    req = ["--height", "32", "--width", "32", "--num-frames", "4", "--steps", "2"]
    mp4 = tmp_path / "t2v.mp4"
    code, out, err = run(capsys, "generate", "--model", "tiny-t2v", *engines, str(t2v_engine_dir("tiny-t2v")), *req,
                         "--prompt", "a red car",
                         "--negative-prompt", "blurry", "--output", str(mp4))
    assert code == 0, err
    assert "RANDOM WEIGHTS" in out and mp4.stat().st_size > 0
    out_json = tmp_path / "bench.json"
    code, out, err = run(capsys, "run-bench", "--model", "tiny-animatediff", *engines,
                         str(t2v_engine_dir("tiny-animatediff")), *req, "--sampler", "lcm",
                         "--guidance-scale", "2", "--runs", "1", "--warmup", "0", "--output", str(out_json))
    assert code == 0, err
    r = json.loads(out_json.read_text())
    assert r["model"]["kind"] == "animatediff" and r["baseline"]["backend"].endswith("AnimateDiffPipeline)")
    for side in ("engine", "baseline"):
        assert set(r[side]["stages_ms"]) == {"text_encoder", "unet", "unet_step", "vae_decoder"}
    assert r["parity"]["max_abs_err"] <= 2e-3 and r["roofline"]["unet_tflop_per_step"] > 0


@pytest.mark.parametrize("model, flag, message", [
    ("tiny-t2v", [], "or --prompt \"...\" (text-to-video models)"),
    ("tiny-t2v", ["--image", "x.png"], "text-to-video model: pass --prompt"),
    ("tiny-svd", ["--prompt", "x"], "image-to-video model: pass --image"),
    ("tiny-t2v", ["--prompt", "x", "--sampler", "animatelcm"], "--sampler animatelcm is not for text-to-video"),
    ("tiny-animatediff", ["--prompt", "x", "--num-frames", "40"], "num_frames=40 is outside"),
])
def test_generate_text_to_video_bad_input_is_one_line(capsys, tmp_path, model, flag, message):
    code, out, err = run(capsys, "generate", "--model", model, "--engine-dir", str(tmp_path), *flag,
                         "--output", str(tmp_path / "o.mp4"))
    errors = [line for line in err.splitlines() if line.startswith("vidrt: error:")]  # (preset creation may print first)
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err


def test_component_precision_int8_decoder_takes_the_quantization_flags(capsys, tmp_path, tiny_model):
    from vidrt.cli import BuildConfig, _config, _quant_config, build_parser

    args = build_parser().parse_args([
        "build-engines", "--backend", "openvino", "--precision", "bf16", "--component-precision", "vae_decoder=int8",
        "--calib-steps", "2",
    ])
    quant = _quant_config(_config(BuildConfig, args))
    assert quant.format == "int8" and quant.calib_steps == 2  # a float UNet with a quantized decoder
    code, _, err = run(capsys, "build-engines", "--model", "tiny-svd", "--backend", "onnxruntime", "--engine-dir",
                       str(tmp_path), "--precision", "int8", "--component-precision", "vae_decoder=fp8")
    assert code == 2 and "same format" in err and err.count("\n") == 1
    code, _, err = run(capsys, "build-engines", "--model", "tiny-svd", "--backend", "onnxruntime", "--engine-dir",
                       str(tmp_path), "--component-precision", "vae_encoder=int8")
    assert code == 2 and "quantizes unet, vae_decoder, image_encoder only" in err
