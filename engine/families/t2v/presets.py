"""Offline text-to-video presets: seeded random weights and a tokenizer trained here.

``tiny-t2v`` (TextToVideoSDPipeline) and ``tiny-animatediff`` (AnimateDiffPipeline)
have diffusers' fast-test sizes with one layer per U-Net block (as ``tiny-svd``);
``modelscope-t2v`` (text-to-video-ms-1.7b) and ``animatediff`` (Stable Diffusion 1.5
with the v1-5-2 motion adapter) are the real architectures. Without the hub there is
no CLIP vocabulary, so each preset trains a small byte-level BPE tokenizer with the
``tokenizers`` library on a built-in corpus, in CLIP's format, and saves it with the
model; real models bring their own.
"""

from __future__ import annotations

_SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
_TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [32, 64],
    "latent_channels": 4,
    "sample_size": 64,
}
_TINY_TEXT = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 5,
              "projection_dim": 32}

# ModelScope text-to-video-ms-1.7b's scheduler; AnimateDiff's recommended DDIM.
MODELSCOPE_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                        "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
                        "num_train_timesteps": 1000, "prediction_type": "epsilon"}
ANIMATEDIFF_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear", "clip_sample": False,
                         "timestep_spacing": "linspace", "steps_offset": 1, "num_train_timesteps": 1000}

PRESETS = {
    "tiny-t2v": {
        "pipeline": "TextToVideoSDPipeline",
        "unet": {
            "block_out_channels": [32, 64], "layers_per_block": 1, "sample_size": 32, "in_channels": 4,
            "out_channels": 4, "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
            "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"], "cross_attention_dim": 32, "attention_head_dim": 8,
        },
        "vae": _TINY_VAE,
        "text_encoder": _TINY_TEXT,
        "scheduler": MODELSCOPE_SCHEDULER,
    },
    "tiny-animatediff": {
        "pipeline": "AnimateDiffPipeline",
        "unet": {
            "block_out_channels": [32, 64], "layers_per_block": 1, "sample_size": 32, "in_channels": 4,
            "out_channels": 4, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 32, "attention_head_dim": 8,
        },
        "motion_adapter": {"block_out_channels": [32, 64], "motion_layers_per_block": 1, "motion_norm_num_groups": 32,
                           "motion_num_attention_heads": 4, "motion_max_seq_length": 32},
        "vae": _TINY_VAE,
        "text_encoder": _TINY_TEXT,
        "scheduler": ANIMATEDIFF_SCHEDULER,
    },
    "modelscope-t2v": {
        "pipeline": "TextToVideoSDPipeline",
        "unet": {
            "attention_head_dim": 64, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
            "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
            "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
            "in_channels": 4, "out_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 32,
        },
        "vae": {**_SD_VAE, "sample_size": 256},
        # OpenCLIP ViT-H/14 text tower
        "text_encoder": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                         "num_hidden_layers": 23, "projection_dim": 512, "hidden_act": "gelu"},
        "scheduler": MODELSCOPE_SCHEDULER,
    },
    "animatediff": {
        "pipeline": "AnimateDiffPipeline",
        "unet": {  # Stable Diffusion 1.5
            "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "in_channels": 4, "out_channels": 4, "layers_per_block": 2, "sample_size": 64,
        },
        "motion_adapter": {"block_out_channels": [320, 640, 1280, 1280], "motion_layers_per_block": 2,
                           "motion_mid_block_layers_per_block": 1, "motion_num_attention_heads": 8,
                           "motion_norm_num_groups": 32, "motion_max_seq_length": 32, "use_motion_mid_block": True},
        "vae": _SD_VAE,
        # CLIP ViT-L/14 text tower
        "text_encoder": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                         "num_hidden_layers": 12, "projection_dim": 768, "hidden_act": "quick_gelu"},
        "scheduler": ANIMATEDIFF_SCHEDULER,
    },
}

PROMPT_CORPUS = [  # what the offline tokenizers of every family train on
    "a cat playing the piano on a stage", "an astronaut riding a horse on the moon",
    "waves crashing against rocks at sunset", "a timelapse of clouds over a mountain lake",
    "a golden retriever running through snow", "fireworks over a city skyline at night",
    "a panda eating bamboo in a forest", "a red car driving along a coastal road",
    "close-up of a flower blooming, high quality, 4k", "a teddy bear walking down fifth avenue",
    "rain falling on a window, cinematic lighting", "a robot dancing in the street, slow motion",
    "blurry, low quality, distorted, watermark, text", "an oil painting of a ship in a storm",
]


def train_tokenizer(vocab_size: int = 1000, max_length: int = 77):
    """A CLIP-format byte-level BPE tokenizer trained on the built-in corpus.

    Every byte is in the vocabulary both inside a word and word-final (``</w>``),
    as in CLIP's, so any prompt tokenizes without unknown tokens.
    """
    import json

    from tokenizers import pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    base = CLIPTokenizer()  # CLIP's normaliser and pre-tokeniser around an empty BPE
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    base.backend_tokenizer.train_from_iterator(PROMPT_CORPUS, trainer)
    model = json.loads(base.backend_tokenizer.to_str())["model"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += [t for t in sorted(model["vocab"], key=model["vocab"].get) if t not in set(tokens) | set(specials)]
    vocab = {t: i for i, t in enumerate(tokens + specials)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_random_pipeline(name: str, seed: int):
    """Builds a diffusers TextToVideoSDPipeline or AnimateDiffPipeline with seeded random weights."""
    import torch
    from diffusers import (
        AnimateDiffPipeline,
        AutoencoderKL,
        DDIMScheduler,
        MotionAdapter,
        TextToVideoSDPipeline,
        UNet2DConditionModel,
        UNet3DConditionModel,
        UNetMotionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = PRESETS[name]
    tokenizer = train_tokenizer()
    text_config = CLIPTextConfig(
        **cfg["text_encoder"], vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(text_config).eval()
        vae = AutoencoderKL(**cfg["vae"]).eval()
        scheduler = DDIMScheduler(**cfg["scheduler"])
        if cfg["pipeline"] == "TextToVideoSDPipeline":
            unet = UNet3DConditionModel(**cfg["unet"]).eval()
            return TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                         scheduler=scheduler)
        adapter = MotionAdapter(**cfg["motion_adapter"]).eval()
        unet = UNetMotionModel.from_unet2d(UNet2DConditionModel(**cfg["unet"]), adapter).eval()
    return AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               motion_adapter=adapter, scheduler=scheduler)
