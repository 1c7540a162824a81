"""An LTXPipeline folder with the real LTX-Video 2B transformer (or its first N of 28
layers: dim 2048, 32 heads of 64, caption dim 4096; random weights) and the real 0.9.0
VAE, with a one-block T5 of the real width (d_model 4096) instead of T5-XXL's 4.76 B
parameters: the transformer's and VAE's real work without the 19 GB encoder, whose
exports would not fit this machine's disk beside the rest (benchmarks/RESULTS.md).

    python -m vidrt.benchmarks.ltx_layers --layers 28 --output /tmp/ltx28
    vidrt run-bench --model /tmp/ltx28 --precision fp32 --baseline-precision fp32 \\
        --height 256 --width 256 --num-frames 25 --steps 4 --runs 3
"""

from __future__ import annotations

from . import layer_folders

LAYERS = 28


def build_pipeline(layers: int, seed: int = 0):
    """The diffusers LTXPipeline described above, seeded."""
    import torch
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from vidrt.families.ltx.presets import LTX_SCHEDULER, PRESETS
    from vidrt.families.wan.presets import train_tokenizer

    real = PRESETS["ltx-video-2b"]
    tokenizer = train_tokenizer(max_length=128)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text = layer_folders.one_block_encoder(T5EncoderModel, T5Config, real["text_encoder"]["d_model"], len(tokenizer))
        return LTXPipeline(tokenizer=tokenizer, text_encoder=text,
                           vae=AutoencoderKLLTXVideo(**real["vae"]).eval(),
                           transformer=LTXVideoTransformer3DModel(**{**real["transformer"], "num_layers": layers}).eval(),
                           scheduler=FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER))


def main(argv: list[str] | None = None) -> int:
    return layer_folders.main(argv, "ltx_layers", __doc__, build_pipeline, LAYERS, LAYERS,
                              "LTX-Video 2B transformer, {layers} of {real} layers, 0.9.0 VAE, one-block T5")


if __name__ == "__main__":
    raise SystemExit(main())
