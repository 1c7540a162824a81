"""Offline LTX-Video presets: seeded random weights and a T5-format tokenizer trained here.

``tiny-ltx`` (text to video) and ``tiny-ltx-i2v`` (the same components as an
image-to-video folder) have the sizes of diffusers' LTXPipeline fast tests (a 2-layer
transformer of width 32, an 8-channel VAE), with a timestep-conditioned decoder so the decode timestep
and decode noise are exercised, its latents_mean/latents_std random so the
denormalisation is, and LTX-Video's own scheduler (FlowMatchEuler with dynamic
shifting, as diffusers' conversion script saves it). ``ltx-video-2b`` is the real
LTX-Video 2B 0.9.0 architecture (transformer 28 layers of 2048, the 0.9.0 VAE, T5-XXL's
4.76 B-parameter encoder, made and saved in bf16: 19 GB at fp32; vidrt exports it in
parts, model.TEXT_PART_BYTES). 0.9.1's noise-injecting decoder is tested with a tiny folder
(tests/test_ltx.py).
"""

from __future__ import annotations

# As LTX-Video ships it (diffusers scripts/convert_ltx_to_diffusers.py).
LTX_SCHEDULER = {"use_dynamic_shifting": True, "base_shift": 0.95, "max_shift": 2.05, "base_image_seq_len": 1024,
                 "max_image_seq_len": 4096, "shift_terminal": 0.1}

_TINY_TRANSFORMER = {"in_channels": 8, "out_channels": 8, "patch_size": 1, "patch_size_t": 1, "num_attention_heads": 4,
                     "attention_head_dim": 8, "cross_attention_dim": 32, "num_layers": 2, "caption_channels": 32}
# Spatial ratio 2 x 2**2 = 8 (the pixel-shuffle patch exercised), temporal 4.
_TINY_VAE = {"latent_channels": 8, "block_out_channels": (8, 8, 8, 8), "decoder_block_out_channels": (8, 8, 8, 8),
             "spatio_temporal_scaling": (True, True, False, False),
             "decoder_spatio_temporal_scaling": (True, True, False, False),
             "layers_per_block": (1, 1, 1, 1, 1), "decoder_layers_per_block": (1, 1, 1, 1, 1), "patch_size": 2,
             "patch_size_t": 1, "encoder_causal": True, "decoder_causal": False, "timestep_conditioning": True}
_TINY_T5 = {"d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4, "relative_attention_num_buckets": 8,
            "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0}

PRESETS = {
    "tiny-ltx": {"transformer": _TINY_TRANSFORMER, "vae": _TINY_VAE, "text_encoder": _TINY_T5,
                 "scheduler": LTX_SCHEDULER},
    # the same components as an LTXImageToVideoPipeline folder
    "tiny-ltx-i2v": {"transformer": _TINY_TRANSFORMER, "vae": _TINY_VAE, "text_encoder": _TINY_T5,
                     "scheduler": LTX_SCHEDULER, "image_to_video": True},
    "ltx-video-2b": {
        "transformer": {},  # LTXVideoTransformer3DModel's defaults are LTX-Video 2B's (28 layers, 32x64 heads)
        "vae": {},  # AutoencoderKLLTXVideo's defaults are LTX-Video 0.9.0's VAE
        # google/t5-v1_1-xxl's encoder, as LTX-Video uses it
        "text_encoder": {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
                         "num_heads": 64, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                         "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0, "tie_word_embeddings": False},
        "text_encoder_dtype": "bfloat16",
        "differs": "LTX-Video 0.9.0 (its VAE has no decode timestep); text encoder bf16; a 400-token tokenizer "
                   "trained offline",
        "scheduler": LTX_SCHEDULER,
    },
}


def build_random_pipeline(name: str, seed: int):
    """Builds a diffusers LTXPipeline (or LTXImageToVideoPipeline) with seeded random weights."""
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    from ..wan.presets import _text_encoder, train_tokenizer

    cfg = PRESETS[name]
    tokenizer = train_tokenizer(max_length=128)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_config = {"vocab_size": max(len(tokenizer), 128), **cfg["text_encoder"]}
        text_encoder = _text_encoder(T5EncoderModel, T5Config(**text_config, pad_token_id=0, eos_token_id=1),
                                     getattr(torch, cfg.get("text_encoder_dtype", "float32")))
        vae = AutoencoderKLLTXVideo(**cfg["vae"]).eval()
        channels = vae.latents_mean.shape[0]
        vae.latents_mean.copy_(0.1 * torch.randn(channels))
        vae.latents_std.copy_(0.5 + torch.rand(channels))
        transformer = LTXVideoTransformer3DModel(**cfg["transformer"]).eval()
    cls = LTXImageToVideoPipeline if cfg.get("image_to_video") else LTXPipeline
    return cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]))
