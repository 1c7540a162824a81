"""Model sources: presets, local folders, hub ids, replacement UNet weights; image prep."""

import json

import pytest
import torch
from safetensors.torch import save_file

from vidrt.errors import VidrtError
from vidrt.imageops import resize_antialiased
from vidrt.sources import load_torch_component, load_unet_weights, resolve_model


def test_preset_is_a_real_diffusers_folder_marked_random(tiny_model):
    assert (tiny_model.folder / "model_index.json").is_file()
    assert json.loads((tiny_model.folder / "vidrt_preset.json").read_text())["random_weights"] is True
    assert "RANDOM WEIGHTS" in tiny_model.label
    # Loading goes through diffusers' from_pretrained, as for a downloaded model.
    unet = load_torch_component(tiny_model, "unet")
    assert unet.config.num_frames == 14


def test_same_seed_same_weights_other_seed_other_weights(tiny_model):
    again = resolve_model("tiny-svd", seed=0, progress=False)
    assert again.folder == tiny_model.folder
    other = resolve_model("tiny-svd", seed=1, progress=False)
    a = load_torch_component(tiny_model, "unet").conv_in.weight
    b = load_torch_component(other, "unet").conv_in.weight
    assert not torch.equal(a, b)


def test_local_folder_loads(tiny_model):
    assert resolve_model(str(tiny_model.folder)).unet == tiny_model.unet


def test_offline_hub_id_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VidrtError, match="stabilityai/stable-video-diffusion-img2vid-xt: HF_HUB_OFFLINE is set.*tiny-svd"):
        resolve_model("stabilityai/stable-video-diffusion-img2vid-xt")


def test_offline_hub_id_uses_a_complete_local_cache(monkeypatch, tmp_path, tiny_model):
    import shutil

    import huggingface_hub.constants

    # The hub cache layout: models--owner--name/{refs/main, snapshots/<revision>/...}.
    repo = tmp_path / "models--someone--tiny-svd"
    shutil.copytree(tiny_model.folder, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = resolve_model("someone/tiny-svd", progress=False)
    assert model.folder == repo / "snapshots" / "0123abcd" and model.unet == tiny_model.unet


def test_unreachable_hub_fails_clearly(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(VidrtError, match="could not download from the Hugging Face hub"):
        resolve_model("someone/some-svd")


def test_replacement_unet_weights(tiny_model, tmp_path):
    unet = load_torch_component(tiny_model, "unet")
    state = {k: torch.full_like(v, 0.5) for k, v in unet.state_dict().items()}
    path = tmp_path / "unet.safetensors"
    save_file(state, str(path))
    loaded = load_torch_component(tiny_model, "unet", unet_weights=path)
    assert torch.all(loaded.conv_in.weight == 0.5)


def test_mismatched_unet_weights_are_refused(tiny_model, tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"not.a.unet.key": torch.zeros(2)}, str(path))
    with pytest.raises(VidrtError, match=r"does not match: \d+ missing keys"):
        load_unet_weights(load_torch_component(tiny_model, "unet"), path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    with pytest.raises(VidrtError, match="not a readable safetensors file"):
        load_unet_weights(load_torch_component(tiny_model, "unet"), bad)


@pytest.mark.parametrize("size", [(576, 1024), (64, 48), (224, 224), (100, 333)])
def test_clip_resize_matches_diffusers(size):
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # Same float32 ops in the same order: equal to float32 rounding.
    torch.testing.assert_close(resize_antialiased(x, (224, 224)), _resize_with_antialiasing(x, (224, 224)))
