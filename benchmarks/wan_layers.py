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

import argparse


def build_pipeline(layers: int, seed: int = 0):
    """The diffusers WanPipeline described above, seeded."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vidrt.families.wan.presets import _TINY_VAE, PRESETS, WAN_SCHEDULER, train_tokenizer

    real = PRESETS["wan2.1-t2v-1.3b"]
    tokenizer = train_tokenizer()
    text = UMT5Config(vocab_size=len(tokenizer), d_model=real["text_encoder"]["d_model"], d_kv=8, d_ff=64,
                      num_layers=1, num_heads=2, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                      dropout_rate=0.0, pad_token_id=0, eos_token_id=1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return WanPipeline(tokenizer=tokenizer, text_encoder=UMT5EncoderModel(text).eval(),
                           vae=AutoencoderKLWan(**_TINY_VAE).eval(),
                           transformer=WanTransformer3DModel(**{**real["transformer"], "num_layers": layers}).eval(),
                           scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidrt.benchmarks.wan_layers", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=3, help="transformer blocks, 1..30")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="folder to write (save_pretrained)")
    args = p.parse_args(argv)
    if not 1 <= args.layers <= 30:
        p.error(f"--layers {args.layers}: Wan2.1-T2V-1.3B has 30 blocks; choose 1..30")
    build_pipeline(args.layers, args.seed).save_pretrained(args.output)
    print(f"wrote {args.output}: Wan2.1-T2V-1.3B transformer, first {args.layers} of 30 layers (RANDOM weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
