"""What the ``*_layers`` benchmark folders share: a one-block (U)T5 of the real width in
place of the 4.8-5.7 B-parameter encoders (whose exports would not fit this machine's disk
beside the rest), and the command line that writes a folder with the real transformer cut
to its first N layers.
"""

from __future__ import annotations

import argparse


def one_block_encoder(model_cls, config_cls, d_model: int, vocab_size: int):
    """A (U)T5 encoder of one small block at the real model's width (its states have the
    real text dim the transformer projects), eval mode."""
    config = config_cls(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                        pad_token_id=0, eos_token_id=1)
    return model_cls(config).eval()


def main(argv, module: str, doc: str, build, real_layers: int, default_layers: int, what: str,
         versions: dict | None = None) -> int:
    """``python -m vidrt.benchmarks.<module> --layers N --output DIR``: saves ``build(N, seed)``
    (a diffusers pipeline) with save_pretrained and says what it wrote (``what``: the
    transformer's and the other components' description). ``versions``: other layouts of
    the model, chosen by ``--version NAME``, each (build, real_layers, what) with
    --layers defaulting to all of them."""
    p = argparse.ArgumentParser(prog=f"python -m vidrt.benchmarks.{module}", description=doc.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=None, help=f"transformer blocks, 1..{real_layers} (default {default_layers})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="folder to write (save_pretrained)")
    if versions:
        p.add_argument("--version", choices=list(versions), default=None, help="another layout than the default")
    args = p.parse_args(argv)
    if getattr(args, "version", None):
        build, real_layers, what = versions[args.version]
        default_layers = real_layers
    layers = default_layers if args.layers is None else args.layers
    if not 1 <= layers <= real_layers:
        p.error(f"--layers {layers}: the real transformer has {real_layers} blocks; choose 1..{real_layers}")
    build(layers, args.seed).save_pretrained(args.output)
    print(f"wrote {args.output}: {what.format(layers=layers, real=real_layers)} (RANDOM weights)")
    return 0
