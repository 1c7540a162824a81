"""Command line for performance tracking: ``compare``, ``history`` and ``bench-ab``
(run-bench records into the history with ``--history``)."""

from __future__ import annotations

import argparse
import dataclasses
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

    from vidrt.benchmarks.suites import GATE_THRESHOLD

    su = sub.add_parser("bench-suite", help="run a named benchmark suite into the history, or gate on it",
                        description="Runs every case of a suite from benchmarks/suites.toml (ci: tiny models, seconds; "
                        "cpu: scenarios a/b/c and text to video; gpu: TensorRT) through run-bench and records each result "
                        "in the history. With --gate, runs each case as bench-ab between --base (default: the parent "
                        "commit) and the working tree, or, in a checkout without that commit, against the newest recorded "
                        f"run of the case on this machine; exit code 1 on a significant slowdown of at least --threshold "
                        f"(default {GATE_THRESHOLD:g}%% with --gate), 0 otherwise, 2 on bad input.")
    su.add_argument("suite", nargs="?", help="suite name (see --list)")
    su.add_argument("--list", action="store_true", help="list the suites and their cases")
    su.add_argument("--file", help="suites file (default: benchmarks/suites.toml)")
    su.add_argument("--runs", type=int, help="timed runs per case (default: each case's own)")
    su.add_argument("--history", metavar="DIR", help="history folder (default: $VIDRT_CACHE/history or ~/.cache/vidrt/history)")
    su.add_argument("--output-dir", help="also write each case's result JSON here")
    su.add_argument("--gate", action="store_true", help="A/B each case against --base; fail on a large slowdown")
    su.add_argument("--base", default="HEAD~1", help="with --gate: the revision to compare with (default: HEAD~1)")
    su.add_argument("--head-env", help="with --gate: NAME=VALUE,... for the working tree's side only (test hook)")
    su.add_argument("--threshold", type=float, help=f"with --gate: slowdown in %% that fails (default: {GATE_THRESHOLD:g})")

    r = sub.add_parser("report", help="the performance history as one self-contained HTML page",
                       description="Per case and machine: each stage's median over the recorded runs with its 95%% "
                       "interval, change points (an L1 step fit confirmed by a rank test), speedup against diffusers and "
                       "memory over time, and the latest run against the previous one. Plots are embedded; no network.")
    r.add_argument("dir", nargs="?", help="history folder (default: $VIDRT_CACHE/history or ~/.cache/vidrt/history)")
    r.add_argument("--output", default="report.html", help="the HTML file to write (default: report.html)")
    r.add_argument("--machine", help="only this machine's records (its id, or a prefix of it)")
    r.add_argument("--model", help="only this model's records")


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


def _output_dir(path: str) -> Path:
    """--output-dir, created if missing."""
    from .errors import VidrtError

    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VidrtError(f"--output-dir {path}: cannot create it ({e.strerror}); choose another folder") from None
    return Path(path)


def cmd_bench_ab(args: argparse.Namespace) -> int:
    from vidrt.benchmarks.ab import ABConfig, check_options, run_ab
    from vidrt.benchmarks.compare import compare, format_comparison

    from .cli import _check_request_early, _config
    from .request import check_values
    from .errors import VidrtError
    from .fsutil import atomic_write_json, check_writable

    cfg = _config(ABConfig, args)
    check_values(cfg)
    if not cfg.threshold >= 0:
        raise VidrtError(f"--threshold {cfg.threshold}: give a percentage >= 0, e.g. 5")
    if cfg.output_dir:
        check_writable(_output_dir(cfg.output_dir) / "base.json")
    check_options(cfg)
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


def cmd_bench_suite(args: argparse.Namespace) -> int:
    from vidrt.benchmarks.harness import BenchConfig
    from vidrt.benchmarks.suites import describe, suite_configs, suites

    from .errors import VidrtError

    if args.list:
        for name, suite in suites(args.file).items():
            print(f"{name}: {suite.get('description', '')}")
            for cfg in suite_configs(name, BenchConfig, args.file):
                print(f"  {describe(cfg)}")
        return 0
    if not args.suite:
        raise VidrtError("bench-suite needs a suite name, e.g. vidrt bench-suite ci (vidrt bench-suite --list shows them)")
    if args.runs is not None and args.runs < 1:
        raise VidrtError(f"--runs {args.runs}: need at least 1 timed run")
    if not args.gate and (args.head_env or args.threshold is not None or args.base != "HEAD~1"):
        raise VidrtError("--base, --head-env and --threshold are --gate options; add --gate or drop them")
    configs = suite_configs(args.suite, BenchConfig, args.file, runs=args.runs)
    if args.output_dir:
        _output_dir(args.output_dir)
    return (_gate if args.gate else _record)(args, configs)


def _record(args, configs) -> int:
    from vidrt.benchmarks.harness import run_bench
    from vidrt.benchmarks.history import append, check_folder
    from vidrt.benchmarks.suites import describe

    from .cli import _check_request_early
    from .request import check_values
    from .fsutil import atomic_write_json

    check_folder(args.history)
    for cfg in configs:  # every case checked before the first one runs
        check_values(cfg)
        _check_request_early(cfg)
    for i, cfg in enumerate(configs):
        print(f"[{i + 1}/{len(configs)}] {describe(cfg)}", flush=True)
        result = run_bench(cfg)
        where = append(result, args.history)
        if args.output_dir:
            atomic_write_json(Path(args.output_dir) / f"{args.suite}-{i + 1}.json", result)
        speedup = f", {result['speedup']:.2f}x diffusers" if result["speedup"] else ""
        print(f"  end to end {result['engine']['end_to_end_s']['median']:.3f} s{speedup}; recorded in {where}")
    return 0


def _gate(args, configs) -> int:
    """bench-suite --gate: each case A/B against --base, or against the newest recorded run
    of it on this machine when the checkout lacks --base (a shallow clone, a first commit)."""
    from vidrt.benchmarks import ab
    from vidrt.benchmarks.compare import compare, format_comparison
    from vidrt.benchmarks.harness import run_bench
    from vidrt.benchmarks.history import append, check_folder
    from vidrt.benchmarks.suites import GATE_THRESHOLD, describe, last_recorded

    from .cli import _check_request_early
    from .request import check_values
    from .errors import VidrtError

    threshold = (GATE_THRESHOLD if args.threshold is None else args.threshold) / 100
    if not threshold >= 0:
        raise VidrtError(f"--threshold {args.threshold}: give a percentage >= 0, e.g. 50")
    try:
        ab.resolve_source(ab.repository(), args.base, "base")
        have_base = True
    except VidrtError as e:
        if args.base != "HEAD~1":
            raise
        have_base = False
        check_folder(args.history)  # made here, so a first gate run records what the next one compares with
        print(f"bench-suite --gate: no parent commit to compare with ({e}); "
              "comparing with the newest recorded run of each case on this machine instead")
    failed = []
    for i, cfg in enumerate(configs):
        check_values(cfg)
        _check_request_early(cfg)
        print(f"[{i + 1}/{len(configs)}] {describe(cfg)}", flush=True)
        if have_base:
            fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
            base, new = ab.run_ab(ab.ABConfig(**fields, base=args.base, head_env=args.head_env, threshold=100 * threshold))
        else:
            if args.head_env:
                raise VidrtError("--head-env needs a --base revision to compare with; this checkout has none")
            new = run_bench(cfg)
            base = last_recorded(new["case"], new["machine"]["id"], args.history, new["environment"]["git"]["sha"])
            append(new, args.history)
            if base is None:
                print("  skipped: no recorded run of this case on this machine (recorded this one for next time)")
                continue
        rows = compare(base, new, threshold=threshold)
        print(format_comparison(base, new, rows, threshold))
        if any(r.regression for r in rows):
            failed.append(describe(cfg))
    if failed:
        print(f"performance gate FAILED: significant slowdown of {100 * threshold:g}% or more in: {'; '.join(failed)}")
        return 1
    print(f"performance gate passed: no significant slowdown of {100 * threshold:g}% or more")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .errors import VidrtError
    from .fsutil import check_writable

    try:
        import matplotlib  # noqa: F401
        import scipy  # noqa: F401
    except ImportError:
        raise VidrtError("vidrt report needs scipy and matplotlib: pip install 'vidrt[track]'") from None
    from vidrt.benchmarks.html_report import write_report

    check_writable(args.output)
    print(f"wrote {write_report(args.dir, args.output, args.machine, args.model)}")
    return 0


COMMANDS = {"compare": cmd_compare, "report": cmd_report, "history": cmd_history, "bench-ab": cmd_bench_ab, "bench-suite": cmd_bench_suite}
