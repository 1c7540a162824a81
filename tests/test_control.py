"""Embedding: progress callbacks, cancellation and the asyncio form of a pipeline call
(vidrt.control, BasePipeline.generate/agenerate)."""

import asyncio
import threading

import numpy as np
import pytest
import torch

import vidrt
from conftest import make_image

KW = dict(height=32, width=32, num_frames=2, num_inference_steps=3, output_type="np")


def call(pipe, seed=5, **extra):
    return pipe.generate(make_image(32, 32), generator=torch.Generator().manual_seed(seed), **KW, **extra)


def test_progress_reports_every_stage_and_step_and_changes_nothing(tiny_pipe):
    seen = []
    out = call(tiny_pipe, on_progress=seen.append)
    assert [(p.stage, p.step) for p in seen] == [
        ("encode", 0), ("denoise", 0), ("denoise", 1), ("denoise", 2), ("denoise", 3), ("decode", 3)]
    assert all(p.steps == 3 for p in seen[1:])
    alone = tiny_pipe(make_image(32, 32), generator=torch.Generator().manual_seed(5), **KW)
    assert np.array_equal(out.frames, alone.frames)


def test_cancel_stops_within_one_step_and_frees_the_pipeline(tiny_pipe):
    token = vidrt.CancelToken()
    steps = []

    def on_progress(p):
        steps.append((p.stage, p.step))
        if p.stage == "denoise" and p.step == 1:
            token.cancel("stopped by the test")

    with pytest.raises(vidrt.Cancelled, match="stopped by the test"):
        call(tiny_pipe, on_progress=on_progress, cancel=token)
    assert steps[-1] == ("denoise", 1)  # the second step never ran
    assert len(tiny_pipe.timings.unet_steps) == 1
    call(tiny_pipe)  # the lock was released: the next request runs


def test_a_token_cancelled_before_the_start_refuses_at_once(tiny_pipe):
    token = vidrt.CancelToken()
    token.cancel()
    with pytest.raises(vidrt.Cancelled):
        call(tiny_pipe, cancel=token)


def test_bad_controls_are_one_line_errors(tiny_pipe):
    with pytest.raises(vidrt.VidrtError, match="on_progress=3: pass a function"):
        call(tiny_pipe, on_progress=3)
    with pytest.raises(vidrt.VidrtError, match="cancel=.*pass a vidrt.CancelToken"):
        call(tiny_pipe, cancel=threading.Event())


def test_agenerate_keeps_the_event_loop_free_and_matches_the_plain_call(tiny_pipe):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        tick = asyncio.create_task(ticker())
        out = await tiny_pipe.agenerate(make_image(32, 32), generator=torch.Generator().manual_seed(5), **KW)
        tick.cancel()
        return out, ticks

    out, ticks = asyncio.run(main())
    assert ticks > 5  # the loop kept running while the request did
    alone = tiny_pipe(make_image(32, 32), generator=torch.Generator().manual_seed(5), **KW)
    assert np.array_equal(out.frames, alone.frames)


def test_cancelling_the_awaiting_task_cancels_the_request(tiny_pipe):
    async def main():
        started = asyncio.Event()
        loop = asyncio.get_running_loop()
        seen = []

        def on_progress(p):
            seen.append(p)
            if p.stage == "denoise":
                loop.call_soon_threadsafe(started.set)

        task = asyncio.create_task(tiny_pipe.agenerate(
            make_image(32, 32), generator=torch.Generator().manual_seed(5), on_progress=on_progress, **KW))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    seen = asyncio.run(main())
    assert seen[-1].stage == "denoise" and seen[-1].step < 3  # stopped before the loop finished
    assert not tiny_pipe._lock.locked()
