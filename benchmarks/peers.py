"""vidrt against its CPU peers on LTX-Video: optimum-intel's OVLTXPipeline and OpenVINO
GenAI's Text2VideoPipeline, on one model folder and one request, each in its own process.

    python -m vidrt.benchmarks.peers --model DIR --height 256 --width 256 --num-frames 25 \
        --steps 4 --runs 3 --output peers.json

The peers need versions of transformers, huggingface_hub and diffusers that vidrt's own
install cannot have at once (optimum-intel 2.2 pins transformers < 5.6 and hub < 1.22;
diffusers 0.42 needs hub >= 1.32), so they run in an environment of their own: a venv
under $VIDRT_CACHE/peers that sees this install's torch and OpenVINO and pins the rest
(PEERS_REQUIREMENTS), made on first use, or the interpreter ``--peers-python`` names. The
folder is exported once by optimum-intel's own exporter (``optimum-cli export openvino
--task text-to-video``); both peers load that export. diffusers fp32 makes the reference
frames once per run; then warm-ups, and timed runs interleaved (vidrt, optimum, genai, in
turn) unless ``--sequential`` loads one side at a time to bound memory. Frames are
compared after rounding to 8 bits (GenAI returns uint8 frames; vidrt, optimum and
diffusers floats). Caching is off on every side (GenAI's TaylorSeer is not configured).
A peer that cannot export, load or run is reported with its reason.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from vidrt.errors import VidrtError

PEERS = ("optimum", "genai")
PEERS_REQUIREMENTS = ("optimum-intel[openvino]==2.2.0", "openvino-genai==2026.4.1.0", "transformers==5.5.4",
                      "huggingface_hub<1.22", "diffusers==0.39.0", "torch==2.13.0")
STAGES = ("text_encoder", "transformer", "vae_decoder")
WORKER = Path(__file__).with_name("peer_worker.py")


class SideProcess:
    """One side's worker (benchmarks/peer_worker.py) under ``python``; ``error`` says why
    it could not load."""

    def __init__(self, side: str, python: str, cfg: dict):
        self.side = side
        self.proc = subprocess.Popen([python, str(WORKER), side, json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ready = self._answer()
        self.error = ready.get("error")
        self.load_s = ready.get("load_s")

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"the {self.side} worker exited (code {self.proc.wait()})"}
        return json.loads(line)

    def run(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=120)


def peers_python(cache: Path, progress: bool = True) -> str:
    """The peers' interpreter: a venv under ``cache`` made once (locked; a marker says it
    is complete) that sees this install's packages and pins PEERS_REQUIREMENTS.

    Raises:
        VidrtError: the venv could not be made (pip's last line says why).
    """
    from vidrt.fsutil import folder_lock

    venv = cache / "peers" / "venv"
    python, marker = venv / "bin" / "python", venv / "vidrt-peers.json"
    if marker.exists():
        return str(python)
    with folder_lock(venv, "the peers' environment", progress):
        if marker.exists():
            return str(python)
        if progress:
            print(f"vidrt: making the peers' environment in {venv} ({', '.join(PEERS_REQUIREMENTS)})", flush=True)
        _run([sys.executable, "-m", "venv", "--clear", "--system-site-packages", str(venv)], "python -m venv")
        _run([str(python), "-m", "pip", "install", "-q", *PEERS_REQUIREMENTS], "pip install")
        # optimum-intel requires torchvision, but PyPI's builds target CUDA torch and break
        # transformers' import under this CPU torch; LTX-Video needs none of it.
        _run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], "pip uninstall torchvision")
        marker.write_text(json.dumps({"requirements": PEERS_REQUIREMENTS}) + "\n")
    return str(python)


def _run(cmd: list[str], what: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip() and "WARNING" not in line]
        raise VidrtError(f"{what} failed for the peers' environment: {lines[-1] if lines else done.returncode}")
    return done.stdout


def export_for_peers(python: str, folder: Path, cache: Path, progress: bool = True) -> Path:
    """optimum-intel's OpenVINO export of ``folder`` (fp32 weights), made once per folder.

    Raises:
        VidrtError: the exporter failed (its last line says why).
    """
    from vidrt.fsutil import atomic_dir, folder_lock, sha256_json

    configs = {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.glob("*/*config.json"))}
    out = cache / "peers" / "exports" / f"{folder.name}-{sha256_json([str(folder.resolve()), configs])[:12]}"
    if (out / "model_index.json").exists():
        return out
    with folder_lock(out, "the peers' export", progress):
        if (out / "model_index.json").exists():
            return out
        if progress:
            print(f"vidrt: exporting {folder} with optimum-intel's exporter to {out}", flush=True)
        with atomic_dir(out) as tmp:
            _run([python, "-m", "optimum.commands.optimum_cli", "export", "openvino", "-m", str(folder), "--task",
                  "text-to-video", "--weight-format", "fp32", str(tmp)], "optimum-cli export openvino")
    return out


def compare_frames(got, want) -> dict:
    """Frames against the reference after rounding both to 8 bits: max and mean absolute
    error on [0, 1], PSNR in dB."""
    import numpy as np

    if got.shape != want.shape:
        return {"error": f"frames of shape {list(got.shape)}, the reference's are {list(want.shape)}"}
    a, b = (np.round(np.clip(x, 0, 1) * 255) / 255 for x in (got, want))
    diff = np.abs(a - b)
    mse = float((diff**2).mean())
    return {"max_abs_err": float(diff.max()), "mean_abs_err": float(diff.mean()),
            "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))}


def run_peers(args, progress: bool = True) -> dict:
    """The whole benchmark (see the module's docstring); returns the result JSON.

    Raises:
        VidrtError: the model is not an LTX-Video text-to-video folder, or the reference failed.
    """
    import numpy as np

    from vidrt import settings
    from vidrt.sources import resolve_model

    from .environment import git_revision, machine
    from .harness import summary

    model = resolve_model(args.model, progress=progress)
    if model.kind != "ltx":
        raise VidrtError(f"--model {args.model}: the peers serve LTX-Video text to video (an LTXPipeline folder); "
                         f"this is a {model.pipeline_class}")
    model.check_ranges(1, args.guidance_scale > 1, args.num_frames, args.height, args.width)
    cache = settings.cache_dir()
    kwargs = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                  num_frames=args.num_frames, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                  max_sequence_length=args.max_sequence_length)
    reasons, pythons = {}, {"vidrt": sys.executable}
    export = None
    try:
        python = args.peers_python or peers_python(cache, progress)
        export = export_for_peers(python, model.folder, cache, progress)
        pythons |= {p: python for p in PEERS}
    except VidrtError as e:
        reasons |= {p: str(e) for p in PEERS}
    work = Path(tempfile.mkdtemp(prefix="vidrt-peers-"))
    cfg = {"model": str(model.folder), "export_dir": str(export), "precision": args.precision}

    reference = SideProcess("diffusers", sys.executable, cfg | {"precision": "fp32"})
    if reference.error:
        raise VidrtError(f"the diffusers reference could not load: {reference.error}")
    answer = reference.run({"kwargs": kwargs, "seed": args.seed, "frames_path": str(work / "reference.npy")})
    reference.close()
    if "error" in answer:
        raise VidrtError(f"the diffusers reference failed: {answer['error']}")
    want = np.load(work / "reference.npy")

    sides = [s for s in ("vidrt", *PEERS) if s in pythons]
    results = {s: {"runs": [], "error": reasons.get(s)} for s in ("vidrt", *PEERS)}
    for group in ([[s] for s in sides] if args.sequential else [sides]):
        _measure(group, pythons, cfg, kwargs, args, work, results)
    for side, r in results.items():
        if r["runs"]:
            r["frames_vs_diffusers_fp32"] = compare_frames(np.load(work / f"{side}.npy"), want)
            r["end_to_end"] = summary([run["end_to_end"] for run in r["runs"]])
            r["stages"] = {st: summary([run["stages"][st] for run in r["runs"]]) for st in STAGES
                           if all(st in run["stages"] for run in r["runs"])}
            r["peak_rss_mb"] = max(run["peak_rss_mb"] for run in r["runs"])
    base = results["vidrt"].get("end_to_end")
    speedups = {p: results[p]["end_to_end"]["median"] / base["median"] for p in PEERS
                if base and results[p].get("end_to_end")}
    # Interleaved, the n-th runs of all sides came within one round: their ratio cancels the
    # machine's drift between rounds, which the medians' ratio carries (15-25% in minutes here).
    per_round = {p: summary([r["end_to_end"] / v["end_to_end"] for r, v in zip(results[p]["runs"], results["vidrt"]["runs"])])
                 for p in speedups if not args.sequential and len(results[p]["runs"]) == len(results["vidrt"]["runs"])}
    return {"kind": "vidrt-peers", "model": {"label": model.label, "folder": str(model.folder)},
            "request": kwargs | {"seed": args.seed, "precision": args.precision, "runs": args.runs,
                                 "warmup": args.warmup, "interleaved": not args.sequential},
            "machine": machine(), "git": git_revision(), "peers_requirements": list(PEERS_REQUIREMENTS),
            "sides": results, "vidrt_speedup_over": speedups, "vidrt_speedup_over_per_round": per_round}


def _measure(group, pythons, cfg, kwargs, args, work, results) -> None:
    """Loads ``group``'s sides, warms them up, then runs them in turn ``args.runs`` times."""
    procs = {}
    try:
        for side in group:
            proc = SideProcess(side, pythons[side], cfg)
            if proc.error:
                results[side]["error"] = f"could not load: {proc.error}"
                proc.close()
            else:
                procs[side] = proc
                results[side]["load_s"] = proc.load_s
        for i in range(args.warmup + args.runs):
            for side, proc in list(procs.items()):
                answer = proc.run({"kwargs": kwargs, "seed": args.seed, "frames_path": str(work / f"{side}.npy")})
                if "error" in answer:
                    results[side]["error"] = f"failed: {answer['error']}"
                    results[side]["runs"] = []
                    procs.pop(side).close()
                elif i >= args.warmup:
                    results[side]["runs"].append(answer)
    finally:
        for proc in procs.values():
            proc.close()


def format_table(result: dict) -> str:
    """The result as a plain-text table: seconds per stage (median [min-max]), peak RSS,
    frames against diffusers fp32, or why a side did not run."""
    lines = [f"model: {result['model']['label']}",
             "request: {height}x{width}, {num_frames} frames, {num_inference_steps} steps, guidance {guidance_scale}, "
             "{precision}; {runs} runs after {warmup} warm-up{s}".format(**result["request"],
                                                                        s="" if result["request"]["warmup"] == 1 else "s"),
             f"machine: {result['machine'].get('cpu')} ({result['machine'].get('cores')} cpus), git "
             f"{(result['git'].get('sha') or 'none')[:12]}{'-dirty' if result['git'].get('dirty') else ''}", ""]
    names = {"vidrt": "vidrt (OpenVINO)", "optimum": "optimum-intel OVLTXPipeline", "genai": "OpenVINO GenAI"}
    lines.append(f"{'side':30}{'end to end s':>22}" + "".join(f"{s + ' s':>22}" for s in STAGES)
                 + f"{'peak RSS MB':>13}{'max abs':>10}{'PSNR dB':>9}")
    for side, r in result["sides"].items():
        if not r.get("end_to_end"):
            lines.append(f"{names[side]:30}did not run: {r.get('error')}")
            continue

        def cell(s):
            return f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]" if s else "-"

        f = r["frames_vs_diffusers_fp32"]
        lines.append(f"{names[side]:30}{cell(r['end_to_end']):>22}" + "".join(f"{cell(r['stages'].get(s)):>22}" for s in STAGES)
                     + f"{r['peak_rss_mb']:>13.0f}{f.get('max_abs_err', float('nan')):>10.4f}{f.get('psnr_db', float('nan')):>9.1f}")
    for peer, ratio in result["vidrt_speedup_over"].items():
        lines.append(f"vidrt speedup over {names[peer]} (end-to-end medians): {ratio:.2f}x")
        rounds = result.get("vidrt_speedup_over_per_round", {}).get(peer)
        if rounds:
            lines.append(f"  per round (the sides' n-th runs, in turn): median {rounds['median']:.2f}x "
                         f"[{rounds['min']:.2f}-{rounds['max']:.2f}x]")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m vidrt.benchmarks.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an LTXPipeline folder or preset (LTX-Video 0.9.0 layout: "
                        "optimum-intel's exporter fails on timestep-conditioned decoders)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--num-frames", type=int, default=25)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--max-sequence-length", type=int, default=128)
    parser.add_argument("--prompt", default="a red fox running through snow in a forest, cinematic")
    parser.add_argument("--negative-prompt", default="blurry, low quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--sequential", action="store_true", help="one side loaded at a time (not interleaved): "
                        "for models whose three copies do not fit in memory together")
    parser.add_argument("--peers-python", help="the peers' interpreter (default: a venv made under $VIDRT_CACHE/peers)")
    parser.add_argument("--output", help="write the result JSON here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run_peers(args)
    except VidrtError as e:
        print(f"vidrt: error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.output:
        from vidrt.fsutil import atomic_write_json

        atomic_write_json(args.output, result)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
