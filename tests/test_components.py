import pytest

from vidrt.components import ComponentSpec, DimRange, TensorSpec
from vidrt.errors import VidrtError


def spec():
    return ComponentSpec(
        name="vae_encoder",
        inputs=(TensorSpec("image", ("B", 3, "H", "W")),),
        outputs=(TensorSpec("latent", ("B", 4, "H//8", "W//8")),),
        ranges={"B": DimRange(1, 4), "H": DimRange(64, 512, 64), "W": DimRange(64, 512, 64)},
        opt={"B": 1, "H": 256, "W": 256},
    )


def test_bind_and_output_shapes():
    s = spec()
    dims = s.bind({"image": (2, 3, 128, 192)})
    assert dims == {"B": 2, "H": 128, "W": 192}
    s.check(dims)
    assert s.output_shapes(dims) == {"latent": (2, 4, 16, 24)}


def test_dynamic_axes_cover_every_symbolic_dim():
    assert spec().dynamic_axes() == {
        "image": {0: "B", 2: "H", 3: "W"},
        "latent": {0: "B", 2: "H//8", 3: "W//8"},
    }


def test_fixed_dim_mismatch_is_named():
    with pytest.raises(VidrtError, match="axis 1 is 4, this engine needs 3"):
        spec().bind({"image": (1, 4, 64, 64)})


def test_out_of_range_names_dim_and_range():
    with pytest.raises(VidrtError, match=r"height=96 is outside this engine's range 64..512 and a multiple of 64"):
        spec().check({"B": 1, "H": 96, "W": 64})
    with pytest.raises(VidrtError, match=r"batch=5 is outside"):
        spec().check({"B": 5, "H": 64, "W": 64})


def test_corners():
    s = spec()
    assert s.corner("min") == {"B": 1, "H": 64, "W": 64}
    assert s.corner("max") == {"B": 4, "H": 512, "W": 512}
    assert s.corner("opt") == {"B": 1, "H": 256, "W": 256}


def test_svd_specs_follow_the_model_config(tiny_model):
    specs = tiny_model.specs()
    assert set(specs) == {"image_encoder", "vae_encoder", "unet", "vae_decoder"}
    # tiny-svd: VAE downsamples by 2, the UNet once more by 2.
    assert tiny_model.vae_scale_factor == 2 and tiny_model.pixel_multiple == 4
    unet = specs["unet"]
    dims = unet.bind({
        "sample": (2, 3, 8, 8, 12), "timestep": (1,), "encoder_hidden_states": (2, 1, 32), "added_time_ids": (2, 3)
    })
    assert unet.output_shapes(dims) == {"noise_pred": (2, 3, 4, 8, 12)}
    with pytest.raises(VidrtError, match="latent width=7"):
        unet.check(dims | {"w": 7})
