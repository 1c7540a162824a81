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

import argparse

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
    text = T5Config(vocab_size=len(tokenizer), d_model=real["text_encoder"]["d_model"], d_kv=8, d_ff=64, num_layers=1,
                    num_heads=2, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                    pad_token_id=0, eos_token_id=1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LTXPipeline(tokenizer=tokenizer, text_encoder=T5EncoderModel(text).eval(),
                           vae=AutoencoderKLLTXVideo(**real["vae"]).eval(),
                           transformer=LTXVideoTransformer3DModel(**{**real["transformer"], "num_layers": layers}).eval(),
                           scheduler=FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidrt.benchmarks.ltx_layers", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=LAYERS, help=f"transformer blocks, 1..{LAYERS}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="folder to write (save_pretrained)")
    args = p.parse_args(argv)
    if not 1 <= args.layers <= LAYERS:
        p.error(f"--layers {args.layers}: LTX-Video 2B has {LAYERS} blocks; choose 1..{LAYERS}")
    build_pipeline(args.layers, args.seed).save_pretrained(args.output)
    print(f"wrote {args.output}: LTX-Video 2B transformer, {args.layers} of {LAYERS} layers, 0.9.0 VAE, "
          "one-block T5 (RANDOM weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
