"""A WanPipeline folder whose transformer is the real Wan2.1-T2V-1.3B one cut to its
first N layers (dim 1536, 12 heads of 128, FFN 8960, text dim 4096; random weights),
with a tiny Wan VAE and a one-block UMT5 of the real width (d_model 4096). Per layer it
does the real model's work, without the 17 GB preset and its UMT5-XXL: what the
transformer's rate against diffusers and the matmul ceiling needs.

    python -m vidrt.benchmarks.wan_layers --layers 3 --output /tmp/wan3
    vidrt run-bench --model /tmp/wan3 --precision fp32 --baseline-precision fp32 \\
        --height 256 --width 256 --num-frames 17 --steps 4 --runs 3

``--version 2.2-ti2v`` writes Wan2.2-TI2V-5B's layout instead (30 layers of 3072, 48 latent
channels, ``expand_timesteps``) with its real Wan 2.2 VAE (residual blocks, 2x2 patches,
16x spatial; 0/1 latent statistics) and UniPC at shift 5. ``--version 2.1-i2v`` writes a
WanImageToVideoPipeline folder of Wan2.1-I2V-14B's layout (40 layers of 5120, the image
condition's channels, CLIP states through added key/value projections) with its real-size
CLIP ViT-H/14 image encoder and the real Wan 2.1 VAE, UniPC at shift 5.
"""

from __future__ import annotations

from . import layer_folders


def build_pipeline(layers: int, seed: int = 0, version: str = "2.1"):
    """The diffusers pipeline described above (Wan2.1-T2V-1.3B's WanPipeline, Wan2.2-TI2V-5B's,
    or Wan2.1-I2V-14B's WanImageToVideoPipeline), seeded."""
    import torch
    from diffusers import (AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline,
                           WanTransformer3DModel)
    from transformers import UMT5Config, UMT5EncoderModel

    from vidrt.families.wan.presets import (_TINY_VAE, PRESETS, WAN21_I2V_14B, WAN22_TI2V_5B, WAN_SCHEDULER,
                                            image_encoder, train_tokenizer)

    real = {"2.2-ti2v": WAN22_TI2V_5B, "2.1-i2v": WAN21_I2V_14B}.get(version) or {
        **PRESETS["wan2.1-t2v-1.3b"], "vae": _TINY_VAE, "scheduler": WAN_SCHEDULER}
    tokenizer = train_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text = layer_folders.one_block_encoder(UMT5EncoderModel, UMT5Config, 4096, len(tokenizer))  # UMT5-XXL's width
        parts = dict(tokenizer=tokenizer, text_encoder=text, vae=AutoencoderKLWan(**real["vae"]).eval(),
                     transformer=WanTransformer3DModel(**{**real["transformer"], "num_layers": layers}).eval(),
                     scheduler=UniPCMultistepScheduler(**real["scheduler"]))
        if version == "2.1-i2v":
            return WanImageToVideoPipeline(**parts, **image_encoder(real["image_encoder"]))
        return WanPipeline(**parts, expand_timesteps=version == "2.2-ti2v")


def main(argv: list[str] | None = None) -> int:
    ti2v = (lambda layers, seed: build_pipeline(layers, seed, "2.2-ti2v"), 30,
            "Wan2.2-TI2V-5B transformer, first {layers} of {real} layers, Wan 2.2 VAE, one-block UMT5")
    i2v = (lambda layers, seed: build_pipeline(layers, seed, "2.1-i2v"), 40,
           "Wan2.1-I2V-14B transformer, first {layers} of {real} layers, CLIP ViT-H/14, Wan 2.1 VAE, one-block UMT5")
    return layer_folders.main(argv, "wan_layers", __doc__, build_pipeline, 30, 3,
                              "Wan2.1-T2V-1.3B transformer, first {layers} of {real} layers",
                              versions={"2.2-ti2v": ti2v, "2.1-i2v": i2v})


if __name__ == "__main__":
    raise SystemExit(main())
