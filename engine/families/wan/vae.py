"""The Wan VAE's component descriptions: the decoder one latent frame per call with its
caches as inputs and outputs, as diffusers decodes; the encoder of image to video (the
image alone for TI2V-5B; for Wan 2.1 I2V and Wan 2.2 I2V-A14B the image followed by
zero frames, one chunk per call with its caches, as diffusers encodes that clip).

The cache layouts are written from diffusers' WanEncoder3d/WanDecoder3d constructors;
tests compare them with the caches diffusers' modules really fill.
"""

from __future__ import annotations

from ...components import ComponentSpec, DimRange, TensorSpec
from ...model_folder import MAX_BATCH, MAX_PIXELS


def vae_encoder_spec(m) -> ComponentSpec:
    """TI2V-5B's image to video (expand_timesteps): images [B, 3, H, W] in [-1, 1] -> the
    mean of their one-frame latent [B, C, h, w], normalised with latents_mean/latents_std
    (WanImageToVideoPipeline.prepare_latents: ``sample_mode="argmax"``, no draw)."""
    s = m.vae_scale_factor
    return ComponentSpec(
        name="vae_encoder",
        inputs=(TensorSpec("image", ("B", 3, "H", "W")),),
        outputs=(TensorSpec("latent_mean", ("B", int(m.vae.get("z_dim", 16)), f"H//{s}", f"W//{s}")),),
        ranges={"B": DimRange(1, MAX_BATCH), "H": DimRange(m.pixel_multiple, MAX_PIXELS, m.pixel_multiple),
                "W": DimRange(m.pixel_multiple, MAX_PIXELS, m.pixel_multiple)},
        opt={"B": 1, "H": 704, "W": 1280},  # TI2V-5B's own size
    )


def encoder_caches(vae: dict) -> list[tuple[int, int, int]]:
    """(channels, spatial divisor over the pixels, frames) of each cache of the Wan VAE
    encoder, in the order diffusers' ``feat_idx`` walks them: every causal 3x3x3
    convolution keeps its last two input frames (conv_in; each residual block's two
    convolutions; conv_out), each temporal downsampler its last frame after the spatial
    downsampling. Wan 2.2's 2x2 pixel patches make conv_in run at half the size."""
    base = int(vae.get("base_dim", 96))
    mult = list(vae.get("dim_mult", [1, 2, 4, 4]))
    res_blocks = int(vae.get("num_res_blocks", 2))
    down_time = list(vae.get("temperal_downsample", [False, True, True]))
    dims = [base * u for u in [1] + mult]
    divisor = int(vae.get("patch_size") or 1)
    caches = [(int(vae.get("in_channels", 3)), divisor, 2)]
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(res_blocks):
            caches += [(in_dim, divisor, 2), (out_dim, divisor, 2)]
            in_dim = out_dim
        if i != len(mult) - 1:  # a downsampler: temporal ones keep a frame, every one halves the size
            divisor *= 2
            if down_time[i]:
                caches.append((out_dim, divisor, 1))
    return caches + [(dims[-1], divisor, 2)] * 5  # the middle block's two residual blocks, conv_out


def vae_encoder_chunk_specs(m) -> dict[str, ComponentSpec]:
    """Wan 2.1 I2V's and Wan 2.2 I2V-A14B's VAE encoder, one chunk per call as diffusers
    encodes WanImageToVideoPipeline's clip (the image, then zero frames):
    ``vae_encoder_first`` takes the image [B, 3, H, W], ``vae_encoder_chunk`` 4 frames
    [B, 3, 4, H, W] and the caches; each gives that chunk's latent mean [B, C, h, w],
    normalised as diffusers normalises it, and the caches the next chunk reads."""
    s, z = m.vae_scale_factor, int(m.vae.get("z_dim", 16))
    caches = encoder_caches(m.vae)

    def cache(name, i):
        c, d, frames = caches[i]
        return TensorSpec(f"{name}_{i}", ("B", c, frames, "H" if d == 1 else f"H//{d}", "W" if d == 1 else f"W//{d}"))

    latent = TensorSpec("latent_mean", ("B", z, f"H//{s}", f"W//{s}"))
    ranges = {"B": DimRange(1, MAX_BATCH), "H": DimRange(m.pixel_multiple, MAX_PIXELS, m.pixel_multiple),
              "W": DimRange(m.pixel_multiple, MAX_PIXELS, m.pixel_multiple)}
    opt = {"B": 1, "H": 480, "W": 832}  # Wan I2V 480P's own size
    outputs = (latent, *(cache("next_cache", i) for i in range(len(caches))))
    return {
        "vae_encoder_first": ComponentSpec("vae_encoder_first", (TensorSpec("image", ("B", 3, "H", "W")),), outputs,
                                           ranges, opt),
        "vae_encoder_chunk": ComponentSpec(
            "vae_encoder_chunk",
            (TensorSpec("frames", ("B", 3, m.temporal_factor, "H", "W")), *(cache("cache", i) for i in range(len(caches)))),
            outputs, ranges, opt),
    }


def decoder_caches(vae: dict) -> list[tuple[int, int]]:
    """(channels, spatial scale over the latent) of each cache of the Wan VAE decoder, in
    the order diffusers' ``feat_idx`` walks them: every causal 3x3x3 convolution keeps its
    last two input frames (conv_in; each residual block's two convolutions; the temporal
    convolution of each 'upsample3d'; conv_out). The Wan 2.1 decoder's upsamplers halve the
    channels; Wan 2.2's (``is_residual``) keep them. Written from WanDecoder3d's
    constructor; tests compare it with the caches diffusers' decoder really fills."""
    base = int(vae.get("decoder_base_dim") or vae.get("base_dim", 96))
    mult = list(vae.get("dim_mult", [1, 2, 4, 4]))
    res_blocks = int(vae.get("num_res_blocks", 2))
    upsample_time = list(vae.get("temperal_downsample", [False, True, True]))[::-1]
    dims = [base * u for u in [mult[-1]] + mult[::-1]]
    caches, scale = [(int(vae.get("z_dim", 16)), 1)], 1
    caches += [(dims[0], 1)] * 4  # the middle block's two residual blocks
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        in_dim = in_dim // 2 if i > 0 and not vae.get("is_residual") else in_dim
        caches += [(in_dim, scale), (out_dim, scale)] + [(out_dim, scale), (out_dim, scale)] * res_blocks
        if i != len(mult) - 1:  # an upsampler: temporal ones keep a cache, every one doubles the size
            if upsample_time[i]:
                caches.append((out_dim, scale))
            scale *= 2
    caches.append((dims[-1], scale))
    return caches


def vae_decoder_spec(m, first: bool = True) -> ComponentSpec:
    """One latent frame of the Wan VAE decoder, ``latents_mean``/``latents_std`` folded in:
    [B, C, 1, h, w] -> frames in [-1, 1] (1 for latent frame 0, 4 for each later one) and
    the caches [B, c, 2, h*s, w*s] the next latent frame reads (``first``: frame 0, which
    reads none)."""
    s, k = m.vae_scale_factor, m.temporal_factor
    top = MAX_PIXELS // s
    caches = decoder_caches(m.vae)

    def cache(name, i):
        c, scale = caches[i]
        return TensorSpec(f"{name}_{i}", ("B", c, 2, "h" if scale == 1 else f"h*{scale}", "w" if scale == 1 else f"w*{scale}"))

    return ComponentSpec(
        name="vae_decoder" if first else "vae_decoder_chunk",
        inputs=(TensorSpec("latents", ("B", int(m.vae.get("z_dim", 16)), 1, "h", "w")),
                *(() if first else tuple(cache("cache", i) for i in range(len(caches))))),
        outputs=(TensorSpec("frames", ("B", 3, 1 if first else k, f"h*{s}", f"w*{s}")),
                 *(cache("next_cache", i) for i in range(len(caches)))),
        ranges={"B": DimRange(1, MAX_BATCH), "h": DimRange(1, top), "w": DimRange(1, top)},
        opt={"B": 1, "h": 480 // s, "w": 832 // s},
    )
