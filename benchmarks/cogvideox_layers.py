"""A CogVideoXPipeline folder with the real CogVideoX-2b transformer (or its first N of 30
layers: dim 1920, 30 heads of 64, text dim 4096, 3D sin-cos positions; random weights) and
the real CogVideoX VAE, with a one-block T5 of the real width (d_model 4096) instead of
T5-XXL's 4.76 B parameters: the transformer's and VAE's real work without the 19 GB encoder.

    python -m vidrt.benchmarks.cogvideox_layers --layers 30 --output /tmp/cog30
    vidrt run-bench --model /tmp/cog30 --precision fp32 --baseline-precision fp32 \\
        --height 256 --width 256 --num-frames 13 --steps 4 --runs 3

``--version 1.5`` writes CogVideoX1.5-5B's layout instead (42 layers of 3072, latent frames
in pairs, rotary positions; the VAE with its 0.7 scale and the DPM scheduler).
"""

from __future__ import annotations

from . import layer_folders

LAYERS = 30
LAYERS_1_5 = 42


def build_pipeline(layers: int, seed: int = 0, version: str = "1.0"):
    """The diffusers CogVideoXPipeline described above (CogVideoX-2b's, or CogVideoX1.5-5B's), seeded."""
    import diffusers
    import torch
    from transformers import T5Config, T5EncoderModel

    from vidrt.families.cogvideox.presets import COGVIDEOX_1_5_5B, PRESETS
    from vidrt.families.wan.presets import train_tokenizer

    real = COGVIDEOX_1_5_5B if version == "1.5" else PRESETS["cogvideox-2b"]
    tokenizer = train_tokenizer(max_length=226)
    scheduler_cls, scheduler_config = real["scheduler"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text = layer_folders.one_block_encoder(T5EncoderModel, T5Config, 4096, len(tokenizer))  # T5-XXL's width
        return diffusers.CogVideoXPipeline(
            tokenizer=tokenizer, text_encoder=text, vae=diffusers.AutoencoderKLCogVideoX(**real["vae"]).eval(),
            transformer=diffusers.CogVideoXTransformer3DModel(**{**real["transformer"], "num_layers": layers}).eval(),
            scheduler=getattr(diffusers, scheduler_cls)(**scheduler_config))


def main(argv: list[str] | None = None) -> int:
    version_1_5 = (lambda layers, seed: build_pipeline(layers, seed, "1.5"), LAYERS_1_5,
                   "CogVideoX1.5-5B transformer, {layers} of {real} layers, CogVideoX VAE (scale 0.7), one-block T5")
    return layer_folders.main(argv, "cogvideox_layers", __doc__, build_pipeline, LAYERS, LAYERS,
                              "CogVideoX-2b transformer, {layers} of {real} layers, CogVideoX VAE, one-block T5",
                              versions={"1.5": version_1_5})


if __name__ == "__main__":
    raise SystemExit(main())
