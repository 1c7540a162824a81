"""vidrt serve: the HTTP job API (vidrt.server over vidrt.jobs) on tiny-svd, ONNX Runtime.

The routes run in-process through FastAPI's TestClient; one test starts the real
``vidrt serve`` and stops it with SIGTERM."""

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

pytest.importorskip("fastapi", reason="vidrt serve needs the serve extra: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import free_port  # noqa: E402
from vidrt.server import ServeConfig, Service, create_app  # noqa: E402

REQUEST = {"height": 32, "width": 32, "num_frames": 2, "num_inference_steps": 2}


def png_b64(color=(200, 30, 30), size=(40, 40)) -> str:  # noqa: B008
    buf = io.BytesIO()
    PIL.Image.new("RGB", size, color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def server(tiny_pipe):
    """A client of a fresh server over the session's tiny-svd pipeline (config by parameter)."""
    made = []

    def make(**cfg):
        service = Service(tiny_pipe, ServeConfig(model="tiny-svd", height=32, width=32, num_frames=2, steps=2,
                                                    **{"no_warmup": True} | cfg))
        client = TestClient(create_app(service))
        client.__enter__()
        made.append(client)
        return client, service

    yield make
    for client in made:
        client.__exit__(None, None, None)


def wait_final(client, job_id, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        view = client.get(f"/v1/videos/{job_id}").json()
        if view["status"] in ("completed", "failed", "cancelled", "expired"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end: {view}")


def wait_running(service, job_id):
    """Until the job has left the queue (it holds the pipeline, or waits on its lock)."""
    while service.jobs.get(job_id).status != "in_progress":
        time.sleep(0.01)


def submit(client, **fields):
    r = client.post("/v1/videos", json={"image": png_b64(), **REQUEST, **fields})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued" and r.headers["location"] == f"/v1/videos/{r.json()['id']}"
    return r.json()["id"]


def test_a_job_gives_the_frames_of_the_same_request_called_directly(server, tiny_pipe):
    client, _ = server()
    job = submit(client, seed=7, format="png", motion_bucket_id=90)
    view = wait_final(client, job)
    assert view["status"] == "completed", view
    assert view["progress"] == {"stage": "done", "step": 2, "steps": 2}
    assert view["timings"]["end_to_end_s"] > 0 and len(view["timings"]["steps_s"]) == 2
    r = client.get(f"/v1/videos/{job}/content")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        served = [np.asarray(PIL.Image.open(archive.open(n))) for n in sorted(archive.namelist())]
    image = PIL.Image.open(io.BytesIO(base64.b64decode(png_b64())))
    direct = tiny_pipe(image, height=32, width=32, num_frames=2, num_inference_steps=2, motion_bucket_id=90,
                       generator=torch.Generator().manual_seed(7), output_type="pil").frames[0]
    assert len(served) == len(direct) == 2
    for a, b in zip(served, direct):
        assert np.array_equal(a, np.asarray(b))


def test_mp4_gif_and_multipart_upload(server):
    client, _ = server()
    mp4 = submit(client)
    assert wait_final(client, mp4)["status"] == "completed"
    body = client.get(f"/v1/videos/{mp4}/content")
    assert body.headers["content-type"] == "video/mp4" and body.content[4:8] == b"ftyp"
    files = {"image": ("in.png", base64.b64decode(png_b64()), "image/png")}
    r = client.post("/v1/videos", files=files, data={k: str(v) for k, v in (REQUEST | {"format": "gif"}).items()})
    assert r.status_code == 202, r.text
    gif = r.json()["id"]
    assert wait_final(client, gif)["status"] == "completed"
    assert client.get(f"/v1/videos/{gif}/content").content[:6] == b"GIF89a"


@pytest.mark.parametrize("body, message", [
    ({"num_frames": 0}, "num_frames=0: need at least 1 frame"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"height": 33}, "multiples of 8"),
    ({"height": "tall"}, "height: 'tall' is not a whole number"),
    ({"colour": "red"}, "unknown field 'colour'"),
    ({"format": "avi"}, "format 'avi': choose one of mp4, gif, png"),
    ({"image": "not base64!"}, "image: not valid base64"),
    ({"image": base64.b64encode(b"hello").decode()}, "image: not a readable image"),
    ({"image": None}, "image: None is not a string"),
    ({"timeout_s": -1}, "timeout_s -1"),
    ({"seed": -3}, "seed -3"),
])
def test_bad_requests_are_400_with_one_line(server, body, message):
    client, _ = server()
    r = client.post("/v1/videos", json={"image": png_b64(), **REQUEST, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error and "\n" not in error and "--" not in error


def test_extra_fields_are_the_pipelines_other_keywords(server, tiny_pipe):
    """A field the API does not name but the model's pipeline takes (SVD: ``sigmas``) is
    passed to it; the pipeline refuses a bad value when the job runs, as a failed job."""
    client, _ = server()
    job = submit(client, seed=2, format="png", sigmas=[5.0, 1.5, 0.0], num_inference_steps=9)
    view = wait_final(client, job)
    assert view["status"] == "completed" and view["progress"]["steps"] == 2, view
    with zipfile.ZipFile(io.BytesIO(client.get(f"/v1/videos/{job}/content").content)) as archive:
        served = [np.asarray(PIL.Image.open(archive.open(n))) for n in sorted(archive.namelist())]
    image = PIL.Image.open(io.BytesIO(base64.b64decode(png_b64())))
    direct = tiny_pipe(image, height=32, width=32, num_frames=2, sigmas=[5.0, 1.5, 0.0],
                       generator=torch.Generator().manual_seed(2), output_type="pil").frames[0]
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(served, direct))
    files = {"image": ("in.png", base64.b64decode(png_b64()), "image/png")}
    form = {k: str(v) for k, v in REQUEST.items()} | {"seed": "2", "format": "png", "sigmas": "[5.0, 1.5, 0.0]"}
    r = client.post("/v1/videos", files=files, data=form)  # a form field carries the list as JSON text
    assert r.status_code == 202, r.text
    assert wait_final(client, r.json()["id"])["progress"]["steps"] == 2
    r = client.post("/v1/videos", json={"image": png_b64(), **REQUEST, "colour": "red"})
    assert r.status_code == 400 and "this model's other keywords: sigmas" in r.json()["error"]
    bad = wait_final(client, submit(client, sigmas=[5.0, 0.0, 0.0]))
    assert bad["status"] == "failed" and "all above 0 but the last" in bad["error"], bad


def test_bodies_that_are_not_requests(server):
    client, _ = server()
    for content, expect in ((b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object")):
        r = client.post("/v1/videos", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 400 and expect in r.json()["error"]
    r = client.post("/v1/videos", json=REQUEST)
    assert r.status_code == 400 and "image-to-video model: pass an image" in r.json()["error"]


def test_unknown_ids_and_content_before_completion(server, tiny_pipe):
    client, _ = server()
    for method, path in (("get", "/v1/videos/nope"), ("get", "/v1/videos/nope/content"),
                         ("delete", "/v1/videos/nope"), ("get", "/v1/videos/nope/events")):
        r = getattr(client, method)(path)
        assert r.status_code == 404 and "no job 'nope'" in r.json()["error"]
    with tiny_pipe._lock:  # the worker waits on the pipeline: the job stays in progress
        job = submit(client)
        r = client.get(f"/v1/videos/{job}/content")
        assert r.status_code == 409 and "content is ready once the status is completed" in r.json()["error"]
    assert wait_final(client, job)["status"] == "completed"
    assert client.get(f"/v1/videos/{job}/content?index=1").status_code == 404


def test_idempotency_key_returns_the_same_job(server):
    client, _ = server()
    headers = {"Idempotency-Key": "abc"}
    first = client.post("/v1/videos", json={"image": png_b64(), **REQUEST}, headers=headers).json()["id"]
    again = client.post("/v1/videos", json={"image": png_b64(), **REQUEST}, headers=headers).json()["id"]
    other = submit(client)
    assert first == again != other
    assert wait_final(client, first)["status"] == "completed"


def test_a_full_queue_is_429_with_retry_after(server, tiny_pipe):
    client, service = server(max_queue=1)
    with tiny_pipe._lock:
        running = submit(client)
        wait_running(service, running)
        waiting = submit(client)
        r = client.post("/v1/videos", json={"image": png_b64(), **REQUEST})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "queue is full" in r.json()["error"]
    for job in (running, waiting):
        assert wait_final(client, job)["status"] == "completed"


def test_cancel_a_queued_job_and_a_running_one_within_a_step(server, tiny_pipe):
    client, service = server()
    with tiny_pipe._lock:
        running = submit(client, num_inference_steps=40)
        queued = submit(client)
        r = client.delete(f"/v1/videos/{queued}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    while client.get(f"/v1/videos/{running}").json()["progress"]["step"] < 1:
        time.sleep(0.01)
    client.delete(f"/v1/videos/{running}")
    view = wait_final(client, running)
    assert view["status"] == "cancelled" and view["error"] == "cancelled"
    assert view["progress"]["step"] < 40  # stopped within a step of the cancel, not at the end
    assert client.get(f"/v1/videos/{running}/content").status_code == 409
    assert client.delete(f"/v1/videos/{running}").json()["status"] == "cancelled"  # idempotent


def test_deadlines_expire_queued_and_running_jobs(server, tiny_pipe):
    client, _ = server()
    with tiny_pipe._lock:
        late = submit(client, timeout_s=0.2)
        time.sleep(0.6)
    assert wait_final(client, late)["status"] == "expired"
    slow = submit(client, num_inference_steps=200, timeout_s=1.0)
    view = wait_final(client, slow)
    assert view["status"] == "expired" and "deadline" in view["error"] and view["progress"]["step"] < 200


def test_events_stream_progress_until_the_end(server):
    client, _ = server()
    job = submit(client, num_inference_steps=3)
    events = []
    with client.stream("GET", f"/v1/videos/{job}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    # Each event is the job's state when sent (changes between two sends are merged).
    assert events[-1]["status"] == "completed" and events[-1]["progress"] == {"stage": "done", "step": 3, "steps": 3}
    steps = [e["progress"]["step"] for e in events]
    assert steps == sorted(steps) and len(events) >= 2


def test_healthz_waits_for_the_warm_up_and_metrics_count_jobs(server):
    client, service = server(no_warmup=False)
    for _ in range(600):
        if client.get("/healthz").status_code == 200:
            break
        time.sleep(0.05)
    assert client.get("/healthz").json() == {"status": "ok"}
    job = submit(client)
    wait_final(client, job)
    text = client.get("/metrics").text
    assert 'vidrt_jobs_finished_total{status="completed"} 1.0' in text
    assert 'vidrt_jobs{status="completed"} 1.0' in text and "vidrt_queue_depth 0.0" in text
    assert "vidrt_step_seconds_count 2.0" in text


def test_finished_jobs_are_forgotten_after_keep_results(server):
    client, _ = server(keep_results=0.3)
    job = submit(client)
    assert wait_final(client, job)["status"] == "completed"
    time.sleep(1.0)
    assert client.get(f"/v1/videos/{job}").status_code == 404


def test_a_finished_job_keeps_its_videos_not_its_request(server):
    # Only the encoded videos count against --keep-results-mb, so a kept record must not
    # also hold the request's decoded image (a server's memory would grow with every job).
    client, service = server()
    job = submit(client)
    assert wait_final(client, job)["status"] == "completed"
    record = service.jobs.get(job)
    assert record.kwargs == {} and record.config is None and record.content_bytes > 0
    assert client.get(f"/v1/videos/{job}/content").status_code == 200


def test_a_restarted_server_answers_for_the_jobs_of_the_one_that_died(tiny_pipe):
    # What `vidrt serve --ray` does when Serve restarts a dead ingress: a new server over the
    # same ledger (there a Ray actor) takes back every job record; none vanishes.
    from vidrt.jobs import JobLedger

    ledger = JobLedger()

    def start():
        cfg = ServeConfig(model="tiny-svd", height=32, width=32, num_frames=2, steps=2, no_warmup=True)
        client = TestClient(create_app(Service(tiny_pipe, cfg, ledger=ledger)))
        client.__enter__()
        return client

    first = start()
    done = submit(first)
    assert wait_final(first, done)["status"] == "completed"
    running = submit(first, num_inference_steps=500)
    while first.get(f"/v1/videos/{running}").json()["progress"]["step"] < 1:
        time.sleep(0.02)
    queued = submit(first, seed=5)
    video = first.get(f"/v1/videos/{done}/content").content
    done_view = first.get(f"/v1/videos/{done}").json()

    second = start()  # the first one "died" here: the second sees only what the ledger kept
    try:
        assert second.get(f"/v1/videos/{done}").json() == done_view  # status, progress, timings
        assert second.get(f"/v1/videos/{done}/content").content == video
        for job, where in ((running, "running"), (queued, "waiting in the queue")):
            view = second.get(f"/v1/videos/{job}").json()
            assert view["status"] == "failed", view
            assert view["error"] == f"the server restarted while the job was {where}; submit it again"
        first.__exit__(None, None, None)  # stops its job within a step, freeing the pipeline
        assert wait_final(second, submit(second))["status"] == "completed"
    finally:
        second.__exit__(None, None, None)


def test_vidrt_serve_exits_0_on_sigterm_cancelling_the_running_job(tiny_engine_dir, tmp_path):
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "vidrt.cli", "serve", "--model", "tiny-svd", "--engine-dir", str(tiny_engine_dir),
           "--backend", "onnxruntime", "--height", "32", "--width", "32", "--num-frames", "2", "--steps", "2",
           "--port", str(port), "--grace", "1"]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(1200):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError((tmp_path / "serve.log").read_text())
        job = httpx.post(f"{url}/v1/videos", json={"image": png_b64(), "num_inference_steps": 500}).json()["id"]
        while httpx.get(f"{url}/v1/videos/{job}").json()["status"] != "in_progress":
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_vidrt_serve_without_the_extra_says_how_to_install_it(monkeypatch, capsys):
    from vidrt import cli

    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    assert cli.main(["serve", "--model", "tiny-svd"]) == 2
    assert "vidrt serve needs the serve extra (fastapi is missing): pip install -e '.[serve]'" in capsys.readouterr().err


def test_load_benchmark_accounts_for_every_job(tiny_engine_dir, tmp_path):
    from vidrt.benchmarks import load

    out = tmp_path / "load.json"
    assert load.main(["--clients", "2", "--jobs", "3", "--cancel-every", "2", "--bad-every", "3", "--timeout", "300",
                      "--request", json.dumps(REQUEST), "--output", str(out), "--", "--engine-dir", str(tiny_engine_dir),
                      "--backend", "onnxruntime", "--height", "32", "--width", "32", "--num-frames", "2"]) == 0
    result = json.loads(out.read_text())
    assert result["bad_refused_400"] == 2 and result["http_5xx"] == 0 and result["server_exit"] == 0
    assert result["accepted"] == 4 and sum(result["ended"].values()) == 4
    assert set(result["ended"]) <= {"completed", "cancelled"} and result["ended"]["completed"] >= 2
    assert result["videos_per_min"] > 0 and result["server_rss"]["peak_mb"] > 0


def test_load_benchmark_tells_a_plateau_from_a_leak():
    from vidrt.benchmarks.load import RssSampler

    def trend(samples):
        sampler = RssSampler(None)
        sampler.ended, sampler.samples = list(range(len(samples))), list(samples)
        return sampler.stop()

    warm_then_flat = trend([900 + min(i, 20) * 10 for i in range(100)])  # grows while warming, then flat
    assert warm_then_flat["by_quarter_mb"] == [1100, 1100, 1100, 1100]
    low, slope, high = warm_then_flat["second_half_mb_per_100_jobs"]
    assert slope == pytest.approx(0, abs=1e-9)
    leak = trend([900 + 0.5 * i + (i % 3) for i in range(100)])  # 0.5 MB per job, with noise
    low, slope, high = leak["second_half_mb_per_100_jobs"]
    assert low < 50 < high and low > 40


# -- request batching ----------------------------------------------------------------


def solo_and_batched(pipe, requests):
    """Each request alone, and all of them as the one call the server's batcher makes."""
    from vidrt.jobs import merge_requests

    alone = [pipe(**r).frames[0] for r in requests]
    fresh = [{**r, "generator": torch.Generator().manual_seed(s)} for r, s in zip(requests, SEEDS)]
    together = pipe(**merge_requests(fresh)).frames
    return alone, together


SEEDS = (3, 4, 5)


def test_a_batch_gives_each_image_request_what_it_gets_alone(tiny_pipe):
    images = [PIL.Image.new("RGB", (40, 40), c) for c in ((200, 30, 30), (20, 200, 30), (30, 30, 200))]
    requests = [dict(image=[im], height=32, width=32, num_frames=2, num_inference_steps=2, output_type="np",
                     generator=torch.Generator().manual_seed(s)) for im, s in zip(images, SEEDS)]
    alone, together = solo_and_batched(tiny_pipe, requests)
    assert together.shape[0] == 3
    for a, b in zip(alone, together):
        # Same draws from each video's generator; the batch only changes GEMM blocking (fp32 rounding).
        assert np.abs(a - b).max() < 1e-5


def test_a_batch_gives_each_prompt_request_what_it_gets_alone(t2v_engine_dir):
    from vidrt import VideoPipeline

    pipe = VideoPipeline.from_pretrained("tiny-t2v", engine_dir=t2v_engine_dir("tiny-t2v"), backend="onnxruntime",
                                         progress=False)
    prompts = ["a red fox", "a boat at sea", "snow"]
    requests = [dict(prompt=p, negative_prompt="blurry", height=32, width=32, num_frames=2, num_inference_steps=2,
                     output_type="np", generator=torch.Generator().manual_seed(s)) for p, s in zip(prompts, SEEDS)]
    alone, together = solo_and_batched(pipe, requests)
    for a, b in zip(alone, together):
        assert np.abs(a - b).max() < 1e-5


def test_the_server_batches_queued_jobs_of_the_same_shape(server, tiny_pipe):
    client, service = server(max_batch=3)
    calls = []
    real = tiny_pipe.generate
    with tiny_pipe._lock:  # jobs pile up behind a first one held on the pipeline
        held = submit(client, seed=1)
        wait_running(service, held)
        same = [submit(client, seed=s, format="png", image=png_b64(c))
                for s, c in zip(SEEDS, ((200, 30, 30), (20, 200, 30), (30, 30, 200)))]
        other_shape = submit(client, seed=9, height=64)
        tiny_pipe.generate = lambda *a, **k: calls.append(len(k["image"])) or real(*a, **k)
    try:
        views = [wait_final(client, j) for j in [held, *same, other_shape]]
    finally:
        del tiny_pipe.generate
    assert all(v["status"] == "completed" for v in views), views
    assert calls == [3, 1]  # the three 32x32 jobs together, the 64x64 one alone
    assert len({json.dumps(v["timings"]) for v in views[1:4]}) == 1  # one call's timings
    for job, seed, color in zip(same, SEEDS, ((200, 30, 30), (20, 200, 30), (30, 30, 200))):
        with zipfile.ZipFile(io.BytesIO(client.get(f"/v1/videos/{job}/content").content)) as archive:
            served = [np.asarray(PIL.Image.open(archive.open(n))).astype(int) for n in sorted(archive.namelist())]
        alone = tiny_pipe(PIL.Image.new("RGB", (40, 40), color), height=32, width=32, num_frames=2, num_inference_steps=2,
                          generator=torch.Generator().manual_seed(seed), output_type="pil").frames[0]
        for a, b in zip(served, alone):
            assert np.abs(a - np.asarray(b).astype(int)).max() <= 1  # 8-bit rounding of a ~1e-6 difference


def test_text_to_video_jobs(t2v_engine_dir):
    from vidrt import VideoPipeline

    pipe = VideoPipeline.from_pretrained("tiny-t2v", engine_dir=t2v_engine_dir("tiny-t2v"), backend="onnxruntime",
                                         progress=False)
    service = Service(pipe, ServeConfig(model="tiny-t2v", height=32, width=32, num_frames=2, steps=2, no_warmup=True))
    with TestClient(create_app(service)) as client:
        r = client.post("/v1/videos", json={"prompt": "a red fox", "negative_prompt": "blurry", "seed": 3, "format": "png"})
        assert r.status_code == 202, r.text
        assert wait_final(client, r.json()["id"])["status"] == "completed"
        with zipfile.ZipFile(io.BytesIO(client.get(f"/v1/videos/{r.json()['id']}/content").content)) as archive:
            served = [np.asarray(PIL.Image.open(archive.open(n))) for n in sorted(archive.namelist())]
        direct = pipe("a red fox", negative_prompt="blurry", height=32, width=32, num_frames=2, num_inference_steps=2,
                      generator=torch.Generator().manual_seed(3), output_type="pil").frames[0]
        assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(served, direct))
        for body, message in (({"seed": 1}, 'text-to-video model: pass a "prompt"'),
                              ({"prompt": "x", "image": png_b64()}, "image: tiny-t2v is a text-to-video model")):
            r = client.post("/v1/videos", json=body)
            assert r.status_code == 400 and message in r.json()["error"], r.text


def test_cancelling_one_job_of_a_batch_leaves_the_others_running(server, tiny_pipe):
    client, service = server(max_batch=2)
    with tiny_pipe._lock:
        held = submit(client)
        wait_running(service, held)
        a, b = submit(client, num_inference_steps=30, seed=1), submit(client, num_inference_steps=30, seed=2)
    wait_running(service, a)
    assert client.delete(f"/v1/videos/{a}").json()["status"] == "cancelled"  # at once
    assert wait_final(client, b)["status"] == "completed"
    assert client.get(f"/v1/videos/{a}").json()["status"] == "cancelled"


def test_cancelling_a_job_while_it_waits_for_batch_mates(server):
    client, service = server(max_batch=2, batch_wait_ms=3000)
    job = submit(client)
    wait_running(service, job)  # its batch waits for a second job
    assert client.delete(f"/v1/videos/{job}").status_code == 200
    assert wait_final(client, job, timeout=30)["status"] == "cancelled"
    assert wait_final(client, submit(client))["status"] == "completed"
