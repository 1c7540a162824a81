"""Concurrency: one pipeline called from several threads at once returns, to each
caller, exactly what that call returns alone (ONNX Runtime, OpenVINO, text to video).
Before the pipeline's lock, ONNX Runtime callers received each other's frames and
OpenVINO raised 'Infer Request is busy'."""

import threading

import numpy as np
import torch

from conftest import make_image

KW = dict(height=32, width=32, num_frames=2, num_inference_steps=2, output_type="np")


def hammer(call, seeds):
    """Runs call(seed) for every seed in its own thread, all released together."""
    barrier = threading.Barrier(len(seeds))
    results, errors = {}, []

    def worker(seed):
        barrier.wait()
        try:
            results[seed] = call(seed)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


def check_each_thread_gets_its_own(pipe, call):
    seeds = [11, 12, 13, 14]
    alone = {s: call(s) for s in seeds}
    assert not np.array_equal(alone[11], alone[12])
    together = hammer(call, seeds)
    for s in seeds:
        assert np.array_equal(together[s], alone[s]), f"seed {s} got another request's frames"


def image_call(pipe):
    def call(seed):
        out = pipe(make_image(32, 32), generator=torch.Generator().manual_seed(seed), **KW)
        assert out.timings.end_to_end > 0
        return out.frames
    return call


def test_onnxruntime_pipeline_serves_threads(tiny_pipe):
    check_each_thread_gets_its_own(tiny_pipe, image_call(tiny_pipe))


def test_openvino_pipeline_serves_threads(ov_engine_dir):
    from vidrt import VideoPipeline

    pipe = VideoPipeline.from_pretrained("tiny-svd", engine_dir=ov_engine_dir, backend="openvino", progress=False)
    check_each_thread_gets_its_own(pipe, image_call(pipe))


def test_text_to_video_pipeline_serves_threads(t2v_engine_dir):
    from vidrt import VideoPipeline

    pipe = VideoPipeline.from_pretrained("tiny-t2v", engine_dir=t2v_engine_dir("tiny-t2v"), backend="onnxruntime",
                                         progress=False)

    def call(seed):
        return pipe(prompt="a red car", generator=torch.Generator().manual_seed(seed), guidance_scale=2.0,
                    num_frames=2, height=32, width=32, num_inference_steps=2, output_type="np").frames

    check_each_thread_gets_its_own(pipe, call)
