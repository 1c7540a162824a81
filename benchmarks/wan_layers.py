"""A WanPipeline folder whose transformer is the real Wan2.1-T2V-1.3B one cut to its
first N layers (dim 1536, 12 heads of 128, FFN 8960, text dim 4096; random weights),
with a tiny Wan VAE and a one-block UMT5 of the real width (d_model 4096). Per layer it
does the real model's work, without the 17 GB preset and its UMT5-XXL: what the
transformer's rate against diffusers and the matmul ceiling needs.

    python -m vidrt.benchmarks.wan_layers --layers 3 --output /tmp/wan3
    vidrt run-bench --model /tmp/wan3 --precision fp32 --baseline-precision fp32 \\
        --height 256 --width 256 --num-frames 17 --steps 4 --runs 3
"""

from __future__ import annotations

from . import layer_folders


def build_pipeline(layers: int, seed: int = 0):
    """The diffusers WanPipeline described above, seeded."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vidrt.families.wan.presets import _TINY_VAE, PRESETS, WAN_SCHEDULER, train_tokenizer

    real = PRESETS["wan2.1-t2v-1.3b"]
    tokenizer = train_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text = layer_folders.one_block_encoder(UMT5EncoderModel, UMT5Config, real["text_encoder"]["d_model"], len(tokenizer))
        return WanPipeline(tokenizer=tokenizer, text_encoder=text,
                           vae=AutoencoderKLWan(**_TINY_VAE).eval(),
                           transformer=WanTransformer3DModel(**{**real["transformer"], "num_layers": layers}).eval(),
                           scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER))


def main(argv: list[str] | None = None) -> int:
    return layer_folders.main(argv, "wan_layers", __doc__, build_pipeline, 30, 3,
                              "Wan2.1-T2V-1.3B transformer, first {layers} of {real} layers")


if __name__ == "__main__":
    raise SystemExit(main())
