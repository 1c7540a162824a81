"""Command line for performance tracking: ``compare``, ``history`` and ``bench-ab``
(run-bench records into the history with ``--history``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(sub, model_flags, request_flags) -> None:
    """Adds the tracking subcommands to ``vidrt``'s subparsers; ``model_flags`` and
    ``request_flags`` add run-bench's flag groups to a parser."""
    from vidrt.benchmarks.ab import ABConfig
    from vidrt.benchmarks.compare import THRESHOLD

    c = sub.add_parser("compare", help="compare two run-bench results: what got slower or faster beyond noise",
                       description="Per stage and end to end: the ratio of medians (NEW/BASE) with a 95%% bootstrap "
                       "interval and a Mann-Whitney U test over the timed runs, and the speedup over diffusers. "
                       "Exit code 1 when the engine got significantly slower beyond --threshold, 0 otherwise, "
                       "2 on bad input.")
    c.add_argument("base", help="BASE.json (run-bench --output)")
    c.add_argument("new", help="NEW.json")
    c.add_argument("--threshold", type=float, default=100 * THRESHOLD,
                   help=f"slowdown in %% that fails, when significant (default: {100 * THRESHOLD:g})")
    c.add_argument("--force", action="store_true", help="compare results of different cases or machines anyway")

    h = sub.add_parser("history", help="list the run-bench results recorded with --history",
                       description="Lists recorded results, oldest first, one line each.")
    h.add_argument("dir", nargs="?", help="history folder (default: $VIDRT_CACHE/history or ~/.cache/vidrt/history)")
    h.add_argument("--machine", help="only this machine's records (its id, or a prefix of it)")
    h.add_argument("--model", help="only this model's records")
    h.add_argument("--last", type=int, help="only the last N records")

    ab = ABConfig()
    a = sub.add_parser("bench-ab", help="did a change regress? two revisions' engines, runs interleaved, compared",
                       description="Checks out --base (and --head, default: the working tree) as git worktrees, builds "
                       "each one's engines, warms both up and alternates their timed runs on the same inputs, then prints "
                       "the vidrt compare table. Exit code 1 on a significant slowdown beyond --threshold, 0 otherwise, "
                       "2 on bad input. Run it inside your vidrt clone; both revisions run on the installed packages.")
    a.add_argument("--base", default=ab.base, help=f"base revision: sha, branch or tag (default: {ab.base})")
    a.add_argument("--head", help="head revision (default: the working tree, uncommitted changes included)")
    a.add_argument("--base-env", help="NAME=VALUE,... set for the base side's process only")
    a.add_argument("--head-env", help="NAME=VALUE,... set for the head side's process only "
                   "(VIDRT_DEBUG_SLOWDOWN=unet=1.5 slows head's UNet: a positive control)")
    a.add_argument("--threshold", type=float, default=ab.threshold,
                   help=f"slowdown in %% that fails, when significant (default: {ab.threshold:g})")
    a.add_argument("--output-dir", help="also write base.json and head.json (run-bench's schema) here")
    model_flags(a)
    request_flags(a, ab, "14, or below it the nearest count the model takes")
    a.add_argument("--runs", type=int, default=ab.runs, help=f"timed runs per side (default: {ab.runs})")
    a.add_argument("--warmup", type=int, default=ab.warmup, help=f"untimed warm-up runs per side (default: {ab.warmup})")
    a.add_argument("--image", help="image to video: conditioning image (default: a built-in synthetic image)")


def cmd_compare(args: argparse.Namespace) -> int:
    from vidrt.benchmarks.compare import compare, format_comparison
    from vidrt.benchmarks.results import load_result

    base, new = load_result(args.base), load_result(args.new)
    rows = compare(base, new, threshold=args.threshold / 100, force=args.force)
    print(format_comparison(base, new, rows, args.threshold / 100))
    return 1 if any(r.regression for r in rows) else 0


def cmd_history(args: argparse.Namespace) -> int:
    from vidrt.benchmarks.history import format_history, records

    from .errors import VidrtError

    if args.last is not None and args.last < 1:
        raise VidrtError(f"--last {args.last}: give a count >= 1")
    entries = [r for r in records(args.dir, args.machine) if args.model in (None, r["case"]["model"])]
    print(format_history(entries[-args.last:] if args.last else entries))
    return 0


def cmd_bench_ab(args: argparse.Namespace) -> int:
    from vidrt.benchmarks.ab import ABConfig, run_ab
    from vidrt.benchmarks.compare import compare, format_comparison

    from .cli import _check_request_early, _check_values, _config
    from .errors import VidrtError
    from .fsutil import atomic_write_json, check_writable

    cfg = _config(ABConfig, args)
    _check_values(cfg)
    if not cfg.threshold >= 0:
        raise VidrtError(f"--threshold {cfg.threshold}: give a percentage >= 0, e.g. 5")
    if cfg.output_dir:
        try:
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VidrtError(f"--output-dir {cfg.output_dir}: cannot create it ({e.strerror}); choose another folder") from None
        check_writable(Path(cfg.output_dir) / "base.json")
    _check_request_early(cfg)
    base, head = run_ab(cfg)
    rows = compare(base, head, threshold=cfg.threshold / 100)
    print(format_comparison(base, head, rows, cfg.threshold / 100))
    print(f"parity, head against base: max abs err {head['parity']['max_abs_err']:.3g}")
    if cfg.output_dir:
        for name, result in (("base", base), ("head", head)):
            atomic_write_json(Path(cfg.output_dir) / f"{name}.json", result)
        print(f"wrote {cfg.output_dir}/base.json and head.json")
    return 1 if any(r.regression for r in rows) else 0


COMMANDS = {"compare": cmd_compare, "history": cmd_history, "bench-ab": cmd_bench_ab}
