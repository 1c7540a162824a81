"""One side of the LTX-Video peer benchmark (benchmarks/peers.py), in its own process.

Run as a script by the interpreter of the side's environment: vidrt and the diffusers
reference in vidrt's, optimum-intel's OVLTXPipeline and OpenVINO GenAI's
Text2VideoPipeline in the peers' (their pins conflict with vidrt's diffusers). It imports
only the standard library until told which side to load, reads one JSON request per line
on stdin and answers one JSON line on stdout; frames go to the .npy file a request names
(float32 [B, F, H, W, 3] in [0, 1]).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class _StageClock:
    """Wraps objects' ``forward`` (optimum-intel's pipeline parts call it from ``__call__``)
    to add each call's seconds to its stage."""

    def __init__(self, parts: dict):
        self.seconds = {stage: 0.0 for stage in parts}
        for stage, part in parts.items():
            part.forward = self._timed(stage, part.forward)

    def _timed(self, stage, forward):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return forward(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        return timed

    def take(self) -> dict:
        out, self.seconds = self.seconds, {k: 0.0 for k in self.seconds}
        return out


def load(side: str, cfg: dict):
    """The side's pipeline (and, for optimum-intel, its stage clock)."""
    hint = {"fp32": "f32", "bf16": "bf16"}[cfg["precision"]]
    if side == "vidrt":
        from vidrt import VideoPipeline

        return VideoPipeline.from_pretrained(cfg["model"], engine_dir=cfg.get("engine_dir"), backend="openvino",
                                             precision=cfg["precision"], progress=False), None
    if side == "diffusers":
        import diffusers
        import torch

        pipe = diffusers.LTXPipeline.from_pretrained(cfg["model"], torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe, None
    if side == "optimum":
        from optimum.intel import OVLTXPipeline

        pipe = OVLTXPipeline.from_pretrained(cfg["export_dir"], ov_config={"INFERENCE_PRECISION_HINT": hint})
        pipe.set_progress_bar_config(disable=True)
        clock = _StageClock({"text_encoder": pipe.text_encoder, "transformer": pipe.transformer,
                             "vae_decoder": pipe.vae_decoder})
        return pipe, clock
    if side == "genai":
        import openvino_genai

        return openvino_genai.Text2VideoPipeline(cfg["export_dir"], "CPU", INFERENCE_PRECISION_HINT=hint), None
    raise ValueError(f"unknown side {side}")


def run(side: str, pipe, clock, request: dict) -> dict:
    """One generation; returns seconds per stage and end to end, and saves the frames."""
    import numpy as np

    kw = dict(request["kwargs"])
    seed = request["seed"]
    start = time.perf_counter()
    if side == "genai":
        import openvino_genai

        result = pipe.generate(kw.pop("prompt"), generator=openvino_genai.TorchGenerator(seed), **kw)
        total = time.perf_counter() - start
        frames = np.asarray(result.video.data, dtype=np.float32) / 255.0
        m = result.perf_metrics  # milliseconds; the transformer's raw per-call durations in microseconds
        stages = {"text_encoder": sum(m.get_text_encoder_infer_duration().values()) / 1e3,
                  "transformer": sum(m.raw_metrics.transformer_inference_durations) / 1e6,
                  "vae_decoder": m.get_vae_decoder_infer_duration() / 1e3}
    else:
        import torch

        out = pipe(**kw, generator=torch.Generator().manual_seed(seed), output_type="np")
        total = time.perf_counter() - start
        frames = np.asarray(out.frames, dtype=np.float32)
        if side == "vidrt":
            t = out.timings
            stages = {"text_encoder": t.text_encoder, "transformer": t.unet, "vae_decoder": t.vae_decoder}
        else:
            stages = clock.take() if clock is not None else {}
    np.save(request["frames_path"], frames)
    return {"end_to_end": total, "stages": stages, "peak_rss_mb": _peak_rss_mb(), "shape": list(frames.shape)}


def main() -> None:
    side, cfg = sys.argv[1], json.loads(sys.argv[2])
    out = sys.stdout
    sys.stdout = sys.stderr  # libraries' prints must not reach the protocol
    try:
        start = time.perf_counter()
        pipe, clock = load(side, cfg)
        out.write(json.dumps({"ready": True, "load_s": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}) + "\n")
    except Exception as e:  # noqa: BLE001 - reported to the parent, which says why the side cannot run
        out.write(json.dumps({"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                              "trace": traceback.format_exc()}) + "\n")
        out.flush()
        return
    out.flush()
    for line in sys.stdin:
        try:
            answer = run(side, pipe, clock, json.loads(line))
        except Exception as e:  # noqa: BLE001
            answer = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                      "trace": traceback.format_exc()}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
