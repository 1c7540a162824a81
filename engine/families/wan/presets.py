"""Offline Wan presets: seeded random weights and a T5-style tokenizer trained here.

``tiny-wan`` (Wan 2.1), ``tiny-wan22`` (Wan 2.2, two experts switched at
``boundary_ratio``) and ``tiny-wan22-ti2v`` (Wan 2.2 TI2V-5B's layout: one expert on 48
latent channels, ``expand_timesteps``, the Wan 2.2 VAE with its residual blocks and 2x2
pixel patches, spatial factor 16) have diffusers' WanPipeline fast-test sizes, with a tiny
UMT5 text encoder; ``tiny-wan22-ti2v-i2v`` is the last one's components as a
WanImageToVideoPipeline folder (TI2V-5B's image to video). ``tiny-wan21-i2v`` (Wan 2.1
I2V's layout: the image condition's 20 channels after the latents', a CLIP vision
encoder whose states every block attends) and ``tiny-wan22-i2v`` (Wan 2.2 I2V-A14B's: two
experts on the same 36 input channels, no image encoder) are WanImageToVideoPipeline
folders with diffusers' Wan image-to-video fast-test sizes. ``wan2.1-t2v-1.3b`` is the
real Wan2.1-T2V-1.3B architecture (transformer dim 1536, 30 layers; the Wan 2.1 VAE;
UMT5-XXL's 5.7B-parameter encoder). Its text encoder is created and saved in bf16, as Wan
itself ships it: at fp32 it would take 22.7 GB of this 24 GB machine; vidrt exports it in
parts (model.text_encoder_blocks).

Without the hub there is no UMT5 vocabulary: each preset trains a small
SentencePiece-style Unigram tokenizer with the ``tokenizers`` library on a built-in
corpus, in T5's format (``</s>`` appended, ``<pad>`` = 0), while the real preset's
embedding keeps UMT5's 256384 rows; real models bring their own tokenizer.
"""

from __future__ import annotations

# As Wan2.1-T2V-1.3B-Diffusers ships it: UniPC on flow sigmas, shift 3.
WAN_SCHEDULER = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0,
                 "num_train_timesteps": 1000, "solver_order": 2}

_TINY_TRANSFORMER = {
    "patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 16, "out_channels": 16,
    "text_dim": 32, "freq_dim": 256, "ffn_dim": 32, "num_layers": 2, "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 32,
}
_TINY_VAE = {"base_dim": 3, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1,
             "temperal_downsample": [False, True, True]}
# Wan 2.2's VAE as diffusers' Wan 2.2 5B fast tests size it, its latents_mean/latents_std
# varied (deterministically) so the denormalisation is exercised.
_TINY_VAE_22 = {"base_dim": 3, "z_dim": 48, "in_channels": 12, "out_channels": 12, "is_residual": True,
                "patch_size": 2, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1, "scale_factor_spatial": 16,
                "scale_factor_temporal": 4, "temperal_downsample": [False, True, True],
                "latents_mean": [round(0.1 * ((7 * i) % 11 - 5), 2) for i in range(48)],
                "latents_std": [round(0.5 + (5 * i) % 9 / 10, 2) for i in range(48)]}
# As Wan2.2-TI2V-5B-Diffusers ships it: UniPC on flow sigmas, shift 5.
WAN22_TI2V_SCHEDULER = dict(WAN_SCHEDULER, flow_shift=5.0)
# Wan's image-to-video shift, 5 (Wan 2.2 I2V-A14B's config samples at shift 5 and switches
# experts at boundary 0.9).
WAN_I2V_SCHEDULER = dict(WAN_SCHEDULER, flow_shift=5.0)
_TINY_I2V_TRANSFORMER = dict(_TINY_TRANSFORMER, in_channels=36)
# A CLIP vision encoder of 65 states (8x8 patches and a class token); its processor resizes
# and crops to 32x32 as Wan's does to 224x224.
_TINY_CLIP = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 4, "projection_dim": 16}
_TINY_UMT5 = {"d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4,
              "relative_attention_num_buckets": 8, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0}

PRESETS = {
    "tiny-wan": {"transformer": _TINY_TRANSFORMER, "vae": _TINY_VAE, "text_encoder": _TINY_UMT5,
                 "scheduler": WAN_SCHEDULER},
    "tiny-wan22": {"transformer": _TINY_TRANSFORMER, "transformer_2": _TINY_TRANSFORMER, "boundary_ratio": 0.875,
                   "vae": _TINY_VAE, "text_encoder": _TINY_UMT5, "scheduler": WAN_SCHEDULER},
    "tiny-wan22-ti2v": {"transformer": dict(_TINY_TRANSFORMER, in_channels=48, out_channels=48), "vae": _TINY_VAE_22,
                        "text_encoder": _TINY_UMT5, "scheduler": WAN22_TI2V_SCHEDULER, "expand_timesteps": True},
    "tiny-wan22-ti2v-i2v": {"transformer": dict(_TINY_TRANSFORMER, in_channels=48, out_channels=48),
                            "vae": _TINY_VAE_22, "text_encoder": _TINY_UMT5, "scheduler": WAN22_TI2V_SCHEDULER,
                            "expand_timesteps": True, "image_to_video": True},
    "tiny-wan21-i2v": {"transformer": dict(_TINY_I2V_TRANSFORMER, image_dim=16, added_kv_proj_dim=24), "image_encoder": _TINY_CLIP,
                       "vae": _TINY_VAE, "text_encoder": _TINY_UMT5, "scheduler": WAN_I2V_SCHEDULER,
                       "image_to_video": True},
    "tiny-wan22-i2v": {"transformer": _TINY_I2V_TRANSFORMER, "transformer_2": _TINY_I2V_TRANSFORMER,
                       "boundary_ratio": 0.9, "vae": _TINY_VAE, "text_encoder": _TINY_UMT5,
                       "scheduler": WAN_I2V_SCHEDULER, "image_to_video": True},
    "wan2.1-t2v-1.3b": {
        "transformer": {"patch_size": [1, 2, 2], "num_attention_heads": 12, "attention_head_dim": 128,
                        "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960,
                        "num_layers": 30, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
                        "rope_max_seq_len": 1024},
        "vae": {},  # AutoencoderKLWan's defaults are the Wan 2.1 VAE
        # google/umt5-xxl's encoder, as Wan ships it (bf16 weights)
        "text_encoder": {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
                         "num_heads": 64, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                         "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0, "tie_word_embeddings": False},
        "text_encoder_dtype": "bfloat16",
        "differs": "text encoder bf16 as Wan ships it; a 400-token tokenizer trained offline",
        "scheduler": WAN_SCHEDULER,
    },
}

# Wan2.2-TI2V-5B-Diffusers' transformer and VAE configs (its VAE's latents_mean/latents_std
# left at 0 and 1: with random weights they only shift and scale). No preset: the
# transformer alone is 20 GB at fp32; benchmarks/wan_layers --version 2.2-ti2v cuts it.
WAN22_TI2V_5B = {
    "transformer": {"patch_size": [1, 2, 2], "num_attention_heads": 24, "attention_head_dim": 128,
                    "in_channels": 48, "out_channels": 48, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 14336,
                    "num_layers": 30, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
                    "rope_max_seq_len": 1024},
    "vae": {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "in_channels": 12, "out_channels": 12,
            "is_residual": True, "patch_size": 2, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
            "scale_factor_spatial": 16, "scale_factor_temporal": 4, "temperal_downsample": [False, True, True],
            "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48},
    "scheduler": WAN22_TI2V_SCHEDULER,
}


# Wan2.1-I2V-14B's transformer (40 layers of 5120, 40 heads of 128, FFN 13824; the image
# condition's 20 channels after the latents' 16; CLIP states of 1280 attended through added
# key and value projections) and its image encoder, open-clip's XLM-RoBERTa-large ViT-H/14
# vision tower as a CLIPVisionModel (32 layers of 1280, 16 heads, 224x224 in 14x14 patches).
# No preset: the transformer alone is 66 GB at fp32; benchmarks/wan_layers --version
# 2.1-i2v cuts it.
WAN21_I2V_14B = {
    "transformer": {"patch_size": [1, 2, 2], "num_attention_heads": 40, "attention_head_dim": 128,
                    "in_channels": 36, "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824,
                    "num_layers": 40, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
                    "image_dim": 1280, "added_kv_proj_dim": 5120, "rope_max_seq_len": 1024},
    "image_encoder": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                      "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "projection_dim": 1024,
                      "hidden_act": "gelu", "layer_norm_eps": 1e-5},
    "vae": {},  # the Wan 2.1 VAE
    "scheduler": WAN_I2V_SCHEDULER,
}


def train_tokenizer(vocab_size: int = 400, max_length: int = 512):
    """A T5-format Unigram tokenizer trained on the built-in corpus: ``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2, SentencePiece's word-start marker, ``</s>`` after every text; printable
    ASCII is in the alphabet, so English prompts need no unknown tokens."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    from ..t2v.presets import PROMPT_CORPUS

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", initial_alphabet=list(string.printable.strip()),
                                      show_progress=False)
    tok.train_from_iterator(PROMPT_CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=max_length)


def build_random_pipeline(name: str, seed: int):
    """Builds a diffusers WanPipeline (or WanImageToVideoPipeline) with seeded random weights."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = PRESETS[name]
    tokenizer = train_tokenizer()
    text_config = {"vocab_size": max(len(tokenizer), 128), **cfg["text_encoder"]}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = _text_encoder(UMT5EncoderModel, UMT5Config(**text_config, pad_token_id=0, eos_token_id=1),
                                     getattr(torch, cfg.get("text_encoder_dtype", "float32")))
        vae = AutoencoderKLWan(**cfg["vae"]).eval()
        transformer = WanTransformer3DModel(**cfg["transformer"]).eval()
        transformer_2 = WanTransformer3DModel(**cfg["transformer_2"]).eval() if "transformer_2" in cfg else None
        image = image_encoder(cfg["image_encoder"]) if "image_encoder" in cfg else {}
    cls = WanImageToVideoPipeline if cfg.get("image_to_video") else WanPipeline
    return cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
               transformer_2=transformer_2, scheduler=UniPCMultistepScheduler(**cfg["scheduler"]),
               boundary_ratio=cfg.get("boundary_ratio"), expand_timesteps=cfg.get("expand_timesteps", False),
               **image)


def image_encoder(config: dict) -> dict:
    """Wan 2.1 I2V's image encoder and processor at ``config``'s size: a CLIPVisionModel
    (Wan's is open-clip's ViT-H/14, 1280 wide, 224x224) and a CLIPImageProcessor that
    resizes and centre-crops to its image size, as Wan's does."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    size = config["image_size"]
    return {"image_encoder": CLIPVisionModel(CLIPVisionConfig(**config)).eval(),
            "image_processor": CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})}


def _text_encoder(cls, config, dtype):
    """The encoder made directly in ``dtype`` (UMT5-XXL is 22.7 GB at fp32, 11.4 GB in bf16)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return cls(config).eval()
    finally:
        torch.set_default_dtype(previous)
