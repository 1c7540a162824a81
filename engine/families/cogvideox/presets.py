"""Offline CogVideoX presets: seeded random weights and a T5-format tokenizer trained here.

``tiny-cogvideox`` (text to video, CogVideoX-2b's layout: 3D sin-cos positions, the
CogVideoX DDIM schedule) and ``tiny-cogvideox-i2v`` (image to video, CogVideoX-5b-I2V's
layout: rotary positions plus a learned position table, so one size and frame count, and
the CogVideoX DPM schedule) have the sizes of diffusers' CogVideoX fast tests (a 1-layer
transformer of 4x8 heads, an 8-channel VAE with 4 latent channels), larger sample grids
so the graphs see non-square latents. ``tiny-cogvideox1.5`` and ``tiny-cogvideox1.5-i2v``
have CogVideoX 1.5's layout at those sizes: latent frames patched in pairs, rotary
positions sliced out of the sample grid (which bounds the size: 64x96 here), no bias on
the patch embedding; the image-to-video one adds the "ofs" embedding and a VAE whose
latents are divided by its scaling factor, as CogVideoX1.5-5B-I2V's.
``cogvideox-2b`` is the real CogVideoX-2b
architecture (transformer 30 layers of 1920, the CogVideoX VAE, T5-XXL's 4.76 B-parameter
encoder made and saved in bf16, exported in parts as LTX-Video's).
"""

from __future__ import annotations

# As THUDM/CogVideoX-2b and CogVideoX-5b(-I2V) ship them (scheduler/scheduler_config.json).
COGVIDEOX_2B_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                          "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
                          "rescale_betas_zero_snr": True, "set_alpha_to_one": True, "snr_shift_scale": 3.0,
                          "steps_offset": 0, "timestep_spacing": "trailing"}
COGVIDEOX_5B_SCHEDULER = dict(COGVIDEOX_2B_SCHEDULER, snr_shift_scale=1.0)

_TINY_TRANSFORMER = {"num_attention_heads": 4, "attention_head_dim": 8, "in_channels": 4, "out_channels": 4,
                     "time_embed_dim": 2, "text_embed_dim": 32, "num_layers": 1, "sample_width": 6, "sample_height": 4,
                     "sample_frames": 9, "patch_size": 2, "temporal_compression_ratio": 4, "max_text_seq_length": 16}
# CogVideoX 1.5's transformer layout (THUDM/CogVideoX1.5-5B: patch_size_t 2, rotary positions
# only, patch_bias off, 224 text tokens) at the fast tests' widths; rotary: 16 = 4 + 6 + 6.
_TINY_1_5 = dict(_TINY_TRANSFORMER, attention_head_dim=16, time_embed_dim=8, patch_size_t=2, patch_bias=False,
                 use_rotary_positional_embeddings=True, sample_height=8, sample_width=12, max_text_seq_length=14)
_TINY_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ("CogVideoXDownBlock3D",) * 4,
             "up_block_types": ("CogVideoXUpBlock3D",) * 4, "block_out_channels": (8, 8, 8, 8), "latent_channels": 4,
             "layers_per_block": 1, "norm_num_groups": 2, "temporal_compression_ratio": 4}
_TINY_T5 = {"d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4, "relative_attention_num_buckets": 8,
            "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0}

PRESETS = {
    "tiny-cogvideox": {"transformer": _TINY_TRANSFORMER, "vae": _TINY_VAE, "text_encoder": _TINY_T5,
                       "scheduler": ("CogVideoXDDIMScheduler", COGVIDEOX_2B_SCHEDULER)},
    "tiny-cogvideox-i2v": {
        # 8 input channels: the latents and the image's; the learned position table fixes one
        # size (32x48) and frame count (9), as CogVideoX-5b-I2V's fixes 480x720 and 49.
        "transformer": dict(_TINY_TRANSFORMER, in_channels=8, attention_head_dim=16,  # rotary: 16 = 4 + 6 + 6
                            use_rotary_positional_embeddings=True,
                            use_learned_positional_embeddings=True),
        "vae": _TINY_VAE, "text_encoder": _TINY_T5,
        "scheduler": ("CogVideoXDPMScheduler", COGVIDEOX_5B_SCHEDULER), "image_to_video": True},
    "tiny-cogvideox1.5": {
        "transformer": dict(_TINY_1_5, in_channels=4), "vae": _TINY_VAE, "text_encoder": _TINY_T5,
        "scheduler": ("CogVideoXDDIMScheduler", COGVIDEOX_5B_SCHEDULER)},
    "tiny-cogvideox1.5-i2v": {
        "transformer": dict(_TINY_1_5, in_channels=8, ofs_embed_dim=_TINY_1_5["time_embed_dim"]),
        "vae": dict(_TINY_VAE, invert_scale_latents=True, scaling_factor=0.7), "text_encoder": _TINY_T5,
        "scheduler": ("CogVideoXDPMScheduler", COGVIDEOX_5B_SCHEDULER), "image_to_video": True},
    "cogvideox-2b": {
        "transformer": {},  # CogVideoXTransformer3DModel's defaults are CogVideoX-2b's (30 layers, 30x64 heads)
        "vae": {"scaling_factor": 1.15258426},  # AutoencoderKLCogVideoX's defaults are CogVideoX's VAE
        # google/t5-v1_1-xxl's encoder, as CogVideoX uses it
        "text_encoder": {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
                         "num_heads": 64, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                         "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0, "tie_word_embeddings": False},
        "text_encoder_dtype": "bfloat16",
        "differs": "text encoder bf16; a 400-token tokenizer trained offline",
        "scheduler": ("CogVideoXDDIMScheduler", COGVIDEOX_2B_SCHEDULER),
    },
}


# THUDM/CogVideoX1.5-5B's transformer (42 layers of 48 heads of 64, 5.6 B parameters) and VAE
# (CogVideoX's, latents scaled by 0.7 and divided by it for the image): the layout
# benchmarks/cogvideox_layers --version 1.5 builds, cut to N layers; no preset (its transformer
# alone is 22 GB at fp32).
COGVIDEOX_1_5_5B = {
    "transformer": {"num_attention_heads": 48, "attention_head_dim": 64, "in_channels": 16, "out_channels": 16,
                    "time_embed_dim": 512, "text_embed_dim": 4096, "num_layers": 42, "sample_width": 300,
                    "sample_height": 300, "sample_frames": 81, "patch_size": 2, "patch_size_t": 2, "patch_bias": False,
                    "max_text_seq_length": 224, "use_rotary_positional_embeddings": True,
                    "use_learned_positional_embeddings": False},
    "vae": {"scaling_factor": 0.7, "invert_scale_latents": True},
    "scheduler": ("CogVideoXDPMScheduler", COGVIDEOX_5B_SCHEDULER),
}


def build_random_pipeline(name: str, seed: int):
    """Builds a diffusers CogVideoXPipeline (or CogVideoXImageToVideoPipeline) with seeded
    random weights."""
    import diffusers
    import torch
    from transformers import T5Config, T5EncoderModel

    from ..wan.presets import _text_encoder, train_tokenizer

    cfg = PRESETS[name]
    tokenizer = train_tokenizer(max_length=226)
    scheduler_cls, scheduler_config = cfg["scheduler"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_config = {"vocab_size": max(len(tokenizer), 128), **cfg["text_encoder"]}
        text_encoder = _text_encoder(T5EncoderModel, T5Config(**text_config, pad_token_id=0, eos_token_id=1),
                                     getattr(torch, cfg.get("text_encoder_dtype", "float32")))
        vae = diffusers.AutoencoderKLCogVideoX(**cfg["vae"]).eval()
        transformer = diffusers.CogVideoXTransformer3DModel(**cfg["transformer"]).eval()
    cls = diffusers.CogVideoXImageToVideoPipeline if cfg.get("image_to_video") else diffusers.CogVideoXPipeline
    return cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
               scheduler=getattr(diffusers, scheduler_cls)(**scheduler_config))
