"""The LTX-Video peer benchmark (benchmarks/peers.py): vidrt, optimum-intel's OVLTXPipeline
and OpenVINO GenAI's Text2VideoPipeline on one folder, each side's frames against diffusers
fp32. The peers run in their own environment (a venv the benchmark makes with pinned
versions); the end-to-end test makes it as a user's first run does."""

import json

import numpy as np
import pytest

from vidrt.benchmarks import peers


def test_frames_are_compared_after_rounding_to_8_bits():
    want = (np.arange(4 * 6 * 3, dtype=np.float32) * 3 / 255).reshape(1, 1, 4, 6, 3)  # exact 8-bit levels
    assert peers.compare_frames(want + 1e-4, want)["max_abs_err"] == 0.0  # the same bytes on disk
    off = peers.compare_frames(np.clip(want + 0.02, 0, 1), want)
    assert 0.015 < off["max_abs_err"] < 0.025 and 30 < off["psnr_db"] < 40
    assert "shape" in peers.compare_frames(want[:, :, :2], want)["error"]


@pytest.fixture(scope="module")
def ltx_090(tmp_path_factory):
    """A tiny LTXPipeline folder in LTX-Video 0.9.0's layout (a decoder without decode
    timestep, which optimum-intel's exporter needs), saved as a user's folder would be."""
    import copy

    from vidrt.families.ltx import presets

    folder = tmp_path_factory.mktemp("ltx090") / "tiny-ltx-090"
    cfg = copy.deepcopy(presets.PRESETS["tiny-ltx"])
    cfg["vae"] = dict(cfg["vae"], timestep_conditioning=False)
    saved = dict(presets.PRESETS)
    presets.PRESETS["tiny-ltx-090"] = cfg
    try:
        presets.build_random_pipeline("tiny-ltx-090", 0).save_pretrained(folder)
    finally:
        presets.PRESETS.clear()
        presets.PRESETS.update(saved)
    return folder


def test_vidrt_and_both_peers_run_the_same_request_and_match_diffusers(ltx_090, tmp_path, capsys):
    out = tmp_path / "peers.json"
    assert peers.main(["--model", str(ltx_090), "--height", "32", "--width", "64", "--num-frames", "9", "--steps", "2",
                       "--runs", "2", "--warmup", "1", "--output", str(out)]) == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["request"]["interleaved"] and result["machine"]["cpu"]
    for side in ("vidrt", "optimum", "genai"):
        r = result["sides"][side]
        assert r["error"] is None and len(r["runs"]) == 2, (side, r["error"])
        assert set(r["stages"]) == {"text_encoder", "transformer", "vae_decoder"}
        assert r["stages"]["transformer"]["median"] > 0 and r["peak_rss_mb"] > 0
        # each side's seeded frames, rounded to 8 bits, within one step of diffusers fp32's
        assert r["frames_vs_diffusers_fp32"]["max_abs_err"] <= 1 / 255 + 1e-6, side
    assert set(result["vidrt_speedup_over"]) == {"optimum", "genai"}
    # per round: each peer's n-th run over vidrt's n-th run, the two runs of a round
    vidrt_runs = [r["end_to_end"] for r in result["sides"]["vidrt"]["runs"]]
    for peer in ("optimum", "genai"):
        want = [r["end_to_end"] / v for r, v in zip(result["sides"][peer]["runs"], vidrt_runs)]
        assert result["vidrt_speedup_over_per_round"][peer]["samples"] == pytest.approx(want)
    table = capsys.readouterr().out
    assert "OpenVINO GenAI" in table and "vidrt speedup over optimum-intel" in table and "per round" in table


def test_a_peer_that_cannot_run_is_reported_with_its_reason(tmp_path, capsys):
    """tiny-ltx's timestep-conditioned decoder (LTX-Video 0.9.1's layout) fails optimum-intel's
    exporter: both peers are reported as not run, with the exporter's words; vidrt still runs."""
    out = tmp_path / "peers.json"
    assert peers.main(["--model", "tiny-ltx", "--height", "32", "--width", "64", "--num-frames", "9", "--steps", "2",
                       "--runs", "1", "--warmup", "0", "--output", str(out)]) == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["sides"]["vidrt"]["runs"] and not result["vidrt_speedup_over"]
    for peer in ("optimum", "genai"):
        assert "optimum-cli export openvino failed" in result["sides"][peer]["error"]
    assert "did not run: optimum-cli export openvino failed" in capsys.readouterr().out


def test_models_the_peers_do_not_serve_are_refused(capsys):
    assert peers.main(["--model", "tiny-wan", "--num-frames", "5", "--height", "32", "--width", "32"]) == 2
    assert "the peers serve LTX-Video text to video" in capsys.readouterr().err
