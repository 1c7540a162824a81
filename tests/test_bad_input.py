"""Hostile inputs: each was once accepted silently, destroyed data or ended in a
traceback. Each now gets a one-line error (exit 2) or the right result."""

import math
import os
import stat

import numpy as np
import PIL.Image
import pytest
import torch

from vidrt.cli import main
from vidrt.errors import VidrtError
from vidrt.video_io import MAX_IMAGE_PIXELS, load_image, write_video

from conftest import make_image


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def common(engine_dir):
    return ["--model", "tiny-svd", "--engine-dir", str(engine_dir), "--backend", "onnxruntime"]


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "in.png"
    make_image(48, 64).save(path)
    return path


FRAMES = [PIL.Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(3)]


def test_png_output_never_replaces_a_folder_of_user_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(VidrtError, match="holds other files"):
        write_video(FRAMES, folder, 7, "png")
    assert (folder / "thesis.tex").read_text() == "years of work"
    # A folder of vidrt's own frames is replaced as a whole.
    frames = tmp_path / "frames"
    write_video(FRAMES, frames, 7, "png")
    write_video(FRAMES[:2], frames, 7, "png")
    assert sorted(p.name for p in frames.iterdir()) == ["frame_0000.png", "frame_0001.png"]


def test_a_failed_encode_is_an_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    good = tmp_path / "clip.mp4"
    write_video(FRAMES, good, 7)
    before = good.read_bytes()
    assert len(before) > 0
    with pytest.raises(VidrtError, match="fps"):
        write_video(FRAMES, good, -3)
    # ffmpeg itself failing (as on a full disk): an error, the old file intact, no temp left.
    import imageio_ffmpeg

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: "false")
    with pytest.raises(VidrtError, match="ffmpeg could not encode"):
        write_video(FRAMES, good, 7)
    assert good.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_a_full_disk_is_a_one_line_error(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PIL.Image.Image, "save", full)
    for name, fmt in (("a.gif", "gif"), ("frames", "png")):
        with pytest.raises(VidrtError, match="No space left on device"):
            write_video(FRAMES, tmp_path / name, 7, fmt)
    assert not list(tmp_path.iterdir())


def test_a_disk_filling_up_during_a_build_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    """An export that runs out of disk (the real Wan transformer's Q/DQ graph once did, 5 min
    into its calibration) ends in one line saying where and what to do, and leaves no
    half-written export behind; other OS errors are not dressed up as a full disk."""
    import errno

    from vidrt.export import onnx_export

    monkeypatch.setenv("VIDRT_CACHE", str(tmp_path / "cache"))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_export, "export_component", full)
    code, _, err = run(capsys, "build-engines", "--model", "tiny-svd", "--backend", "onnxruntime")
    assert code == 2
    last = err.strip().splitlines()[-1]  # after the preset's and export's progress bars
    assert "Traceback" not in err and last.startswith(f"vidrt: error: no space left on the disk of {tmp_path / 'cache'}")
    assert "vidrt prune" in last and "VIDRT_CACHE" in last
    engines = tmp_path / "cache" / "engines"
    assert not [p for p in engines.rglob("*") if p.name.endswith(".tmp")]
    assert not list(engines.rglob("model.onnx"))

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(onnx_export, "export_component", denied)
    with pytest.raises(PermissionError):
        main(["build-engines", "--model", "tiny-svd", "--backend", "onnxruntime"])


@pytest.mark.parametrize("name", ["a.mp4", "a.gif"])
def test_video_files_follow_the_umask(tmp_path, name):
    old = os.umask(0o022)
    try:
        path = write_video(FRAMES, tmp_path / name, 7)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    side = int(math.isqrt(MAX_IMAGE_PIXELS)) + 8
    path = tmp_path / "bomb.png"
    PIL.Image.new("L", (side, side)).save(path, optimize=True)  # a few hundred KB, gigabytes decoded
    assert path.stat().st_size < 2**22
    with pytest.raises(VidrtError, match="more than vidrt decodes"):
        load_image(path)


def test_exif_orientation_is_applied_like_diffusers_load_image(tmp_path):
    from diffusers.utils import load_image as diffusers_load_image

    im = make_image(20, 30)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif, quality=95)
    ours = load_image(path, announce=False)
    theirs = diffusers_load_image(str(path))
    assert ours.size == theirs.size == (20, 30)
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "grey16.png"
    PIL.Image.fromarray(values).save(path)
    rgb = np.asarray(load_image(path, announce=False))
    assert rgb.shape == (64, 64, 3)
    expected = np.rint(values / 65535 * 255).astype(np.uint8)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    assert rgb.min() == 0 and rgb.max() == 255 and (rgb < 128).mean() > 0.4


@pytest.mark.parametrize("argv, message", [
    (["--height", "0"], "height and width must be positive multiples of 8"),
    (["--width", "0"], "height and width must be positive multiples of 8"),
    (["--min-guidance", "nan"], "--min-guidance nan: must be a finite number"),
    (["--max-guidance", "nan"], "--max-guidance nan: must be a finite number"),
    (["--max-guidance", "inf"], "--max-guidance inf: must be a finite number"),
    (["--noise-aug-strength", "nan"], "--noise-aug-strength nan: must be a finite number"),
    (["--fps", "0"], "--fps 0: need at least 1"),
    (["--seed", str(2**64)], "--seed"),
])
def test_generate_refuses_silently_wrong_values(capsys, tmp_path, image_file, argv, message):
    code, out, err = run(capsys, "generate", "--model", "tiny-svd", "--image", str(image_file),
                         "--output", str(tmp_path / "x.gif"), *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.gif").exists()


def test_run_bench_validates_everything_before_any_work(capsys, tmp_path, vidrt_cache):
    presets = vidrt_cache / "presets"
    before = set(presets.iterdir()) if presets.exists() else set()
    code, _, err = run(capsys, "run-bench", "--model", "svd-xt", "--runs", "0")
    assert code == 2 and "--runs must be >= 1" in err
    code, _, err = run(capsys, "run-bench", "--model", "svd-xt", "--output", "/proc/vidrt/bench.json")
    assert code == 2 and "cannot write" in err
    code, _, err = run(capsys, "generate", "--model", "svd-xt", "--image", "x.png", "--output", "/proc/x.mp4")
    assert code == 2 and "cannot write /proc/x.mp4" in err
    assert (set(presets.iterdir()) if presets.exists() else set()) == before  # no svd-xt preset was created


def test_non_utf8_prompt_is_refused(capsys):
    code, _, err = run(capsys, "generate", "--model", "tiny-t2v", "--prompt", "caf\udce9")
    assert code == 2 and "not valid UTF-8" in err


def test_empty_prompt_is_a_prompt(capsys, tmp_path):
    # "" is diffusers' unconditional prompt, not a missing one.
    code, _, err = run(capsys, "generate", "--model", "tiny-t2v", "--prompt", "", "--height", "0")
    assert code == 2 and "positive multiples of 8" in err and "--prompt" not in err


def test_pipeline_refuses_non_finite_guidance_and_zero_size(tiny_pipe):
    image = make_image(32, 32)
    request = dict(height=32, width=32, num_frames=2, num_inference_steps=1, output_type="np")
    for bad in (dict(max_guidance_scale=float("nan")), dict(min_guidance_scale=float("inf")),
                dict(noise_aug_strength=float("nan")), dict(height=0)):
        with pytest.raises(VidrtError, match="finite number|positive multiples of 8"):
            tiny_pipe(image, **(request | bad))


def test_pipeline_takes_numpy_latents_like_tensors(tiny_pipe):
    image = make_image(32, 32)
    request = dict(height=32, width=32, num_frames=2, num_inference_steps=1, output_type="np", max_guidance_scale=1.0)
    latents = torch.randn(1, 2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    a = tiny_pipe(image, latents=latents, generator=torch.Generator().manual_seed(1), **request).frames
    b = tiny_pipe(image, latents=latents.numpy(), generator=torch.Generator().manual_seed(1), **request).frames
    assert np.array_equal(a, b)
    with pytest.raises(VidrtError, match="latents must be a torch.Tensor or a NumPy array"):
        tiny_pipe(image, latents=[[0.0]], **request)


def broken_copy(tiny_model, tmp_path, sub, **changes):
    """A copy of tiny-svd's folder with entries of one config changed."""
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model.folder, folder)
    path = folder / sub
    config = json.loads(path.read_text())
    path.write_text(json.dumps(config | changes) if changes else "[1, 2, 3]")
    return folder


@pytest.mark.parametrize("sub, changes, message", [
    ("model_index.json", {}, "holds a JSON list, not an object"),
    ("unet/config.json", {"num_attention_heads": 0}, "num_attention_heads=0 must be a positive whole number"),
    ("scheduler/scheduler_config.json", {"num_train_timesteps": 0}, "num_train_timesteps=0 must be a positive"),
    ("vae/config.json", {"block_out_channels": [8] * 41}, "41 levels in block_out_channels"),
])
def test_impossible_configs_are_refused_when_read(capsys, tiny_model, tmp_path, sub, changes, message):
    folder = broken_copy(tiny_model, tmp_path, sub, **changes)
    code, _, err = run(capsys, "build-engines", "--model", str(folder), "--engine-dir", str(tmp_path / "e"),
                       "--backend", "onnxruntime")
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "e").exists()  # refused before any export


def test_unet_weights_of_another_shape_or_nan_are_one_line_errors(capsys, tiny_model, tmp_path):
    from safetensors.torch import save_file

    from vidrt.sources import load_torch_component

    state = {k: v.clone() for k, v in load_torch_component(tiny_model, "unet").state_dict().items()}
    name = next(k for k, v in state.items() if v.ndim == 4)
    wrong = dict(state, **{name: torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1)})
    save_file(wrong, tmp_path / "wrong.safetensors")
    nan = dict(state, **{name: torch.full_like(state[name], float("nan"))})
    save_file(nan, tmp_path / "nan.safetensors")
    # A shape mismatch is found from the file's header, before any export.
    code, _, err = run(capsys, "build-engines", "--model", "tiny-svd", "--engine-dir", str(tmp_path / "e"),
                       "--backend", "onnxruntime", "--unet-weights", str(tmp_path / "wrong.safetensors"))
    assert code == 2 and "tensors of another shape" in err and err.count("\n") == 1, err
    # NaN values need the data: found when the UNet is loaded for export, still one error line at the end.
    code, _, err = run(capsys, "build-engines", "--model", "tiny-svd", "--engine-dir", str(tmp_path / "e"),
                       "--backend", "onnxruntime", "--unet-weights", str(tmp_path / "nan.safetensors"))
    assert code == 2 and err.strip().splitlines()[-1].startswith("vidrt: error: --unet-weights") and "NaN or Inf" in err
    code, _, err = run(capsys, "build-engines", "--model", "tiny-svd", "--unet-weights", str(tmp_path / "missing.safetensors"))
    assert code == 2 and "--unet-weights" in err and "file not found" in err


def test_a_model_whose_weights_give_nan_is_not_called_a_vidrt_bug(tiny_model, tmp_path):
    from vidrt.export.graphs import component_graph
    from vidrt.export.onnx_export import export_component
    from vidrt.sources import load_torch_component

    vae = load_torch_component(tiny_model, "vae_encoder")
    with torch.no_grad():
        next(vae.parameters()).fill_(float("nan"))
    with pytest.raises(VidrtError, match="PyTorch model itself gives NaN or Inf outputs"):
        export_component(component_graph("vae_encoder", vae), tiny_model.specs()["vae_encoder"], tmp_path)
