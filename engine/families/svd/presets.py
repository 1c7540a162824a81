"""Offline presets: SVD-family architectures with seeded random weights.

``tiny-svd`` has the size of diffusers' own SVD fast-test components, with one
layer per U-Net block instead of two (every block type is still there; a U-Net
half the depth halves what every test exports and runs), and CLIP at its real
224 px input so PIL images work end to end; ``svd`` and ``svd-xt`` are the
real architectures. Weights are random: every printed result says so.
"""

from __future__ import annotations

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

SVD_SCHEDULER = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}

_REAL_UNET = {
    "sample_size": 96,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    ],
    "up_block_types": [
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    ],
    "block_out_channels": [320, 640, 1280, 1280],
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1,
    "num_attention_heads": [5, 10, 20, 20],
}

_REAL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 768,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}

_REAL_CLIP = {  # ViT-H/14, as in stabilityai/stable-video-diffusion-img2vid(-xt)
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 16,
    "num_hidden_layers": 32,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 1024,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}

PRESETS = {
    "tiny-svd": {
        "unet": {
            "sample_size": 32,
            "in_channels": 8,
            "out_channels": 4,
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
            "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
            "cross_attention_dim": 32,
            "num_attention_heads": 8,
            "projection_class_embeddings_input_dim": 96,
            "addition_time_embed_dim": 32,
            "num_frames": 14,
        },
        "vae": {
            "block_out_channels": [32, 64],
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "latent_channels": 4,
        },
        "image_encoder": {
            "hidden_size": 32,
            "projection_dim": 32,
            "num_hidden_layers": 5,
            "num_attention_heads": 4,
            "image_size": 224,
            "intermediate_size": 37,
            "patch_size": 14,
        },
    },
    "svd": {"unet": {**_REAL_UNET, "num_frames": 14}, "vae": _REAL_VAE, "image_encoder": _REAL_CLIP},
    "svd-xt": {"unet": {**_REAL_UNET, "num_frames": 25}, "vae": _REAL_VAE, "image_encoder": _REAL_CLIP},
}


def build_random_pipeline(name: str, seed: int):
    """Builds a diffusers StableVideoDiffusionPipeline with seeded random weights.

    Raises:
        KeyError: unknown preset (callers check names first).
    """
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = PRESETS[name]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNetSpatioTemporalConditionModel(**cfg["unet"])
        vae = AutoencoderKLTemporalDecoder(**cfg["vae"])
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["image_encoder"]))
    size = cfg["image_encoder"]["image_size"]
    feature_extractor = CLIPImageProcessor(
        crop_size={"height": size, "width": size},
        size={"shortest_edge": size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_normalize=True,
        resample=3,
    )
    return StableVideoDiffusionPipeline(
        vae=vae.eval(),
        image_encoder=image_encoder.eval(),
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER),
        feature_extractor=feature_extractor,
    )
