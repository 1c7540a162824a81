"""Command line for performance tracking: ``compare`` and ``history`` (run-bench records
into the history with ``--history``)."""

from __future__ import annotations

import argparse


def add_commands(sub) -> None:
    """Adds the tracking subcommands to ``vidrt``'s subparsers."""
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


COMMANDS = {"compare": cmd_compare, "history": cmd_history}
