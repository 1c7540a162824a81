"""vidrt serve --ray: the job API as a Ray Serve application on a real local Ray cluster
(127.0.0.1, tiny-svd, 2 replicas), a replica killed mid-job, the ingress killed mid-job,
SIGTERM."""

import base64
import concurrent.futures
import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import PIL.Image
import pytest

pytest.importorskip("ray.serve", reason="vidrt serve --ray needs the ray extra: pip install -e '.[ray]'")
httpx = pytest.importorskip("httpx")

from conftest import free_port  # noqa: E402

REQUEST = {"height": 32, "width": 32, "num_frames": 2}


def png_b64() -> str:
    buf = io.BytesIO()
    PIL.Image.new("RGB", (40, 40), (10, 120, 200)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def replica_processes(deployment="VidrtReplica"):
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        text = " ".join(p.info["cmdline"] or [])
        if deployment in text:
            found.append(p)
    return found


def view_when_back(url, job, timeout=180):
    """The job's view once the API answers again (the proxy fails requests while Serve
    restarts the ingress)."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            r = httpx.get(f"{url}/v1/videos/{job}", timeout=10)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the API did not come back within {timeout} s")


def final(url, job, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        view = httpx.get(f"{url}/v1/videos/{job}").json()
        if view["status"] in ("completed", "failed", "cancelled", "expired"):
            return view
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not end: {view}")


@contextlib.contextmanager
def serving(engine_dir, tmp_path, *flags):
    """`vidrt serve --ray` on tiny-svd with ``flags``, once healthy: (url, process, log path)."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "vidrt.cli", "serve", "--ray", *flags, "--model", "tiny-svd",
           "--engine-dir", str(engine_dir), "--backend", "onnxruntime", "--port", str(port), "--grace", "2",
           "--height", "32", "--width", "32", "--num-frames", "2", "--steps", "2"]
    env = os.environ | {"PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.time() + 300
        while time.time() < end:
            if proc.poll() is not None:
                pytest.skip(f"Ray could not start here (vidrt serve --ray exited {proc.returncode}): "
                            f"{log_path.read_text()[-500:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"not healthy within 300 s: {log_path.read_text()[-2000:]}")
        yield url, proc, log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def ray_server(tiny_engine_dir, tmp_path):
    with serving(tiny_engine_dir, tmp_path, "--replicas", "2") as server:
        yield server


def test_ray_serve_runs_jobs_survives_dead_replicas_and_ingress_and_stops_on_sigterm(ray_server):
    url, proc, log_path = ray_server
    # Jobs through Serve's proxy, spread over both replicas.
    jobs = [httpx.post(f"{url}/v1/videos", json={"image": png_b64(), "seed": s, **REQUEST}).json()["id"] for s in range(4)]
    views = [final(url, j) for j in jobs]
    assert [v["status"] for v in views] == ["completed"] * 4, views
    content = httpx.get(f"{url}/v1/videos/{jobs[0]}/content")
    assert content.status_code == 200 and content.content[4:8] == b"ftyp"
    bad = httpx.post(f"{url}/v1/videos", json={"image": png_b64(), "num_frames": 0})
    assert bad.status_code == 400 and "num_frames=0" in bad.json()["error"]

    # Two long jobs, one per replica; kill one replica mid-job.
    long = [httpx.post(f"{url}/v1/videos", json={"image": png_b64(), "num_inference_steps": 400, **REQUEST}).json()["id"]
            for _ in range(2)]
    end = time.time() + 120
    while time.time() < end and not all(httpx.get(f"{url}/v1/videos/{j}").json()["progress"]["step"] >= 1 for j in long):
        time.sleep(0.2)
    victims = replica_processes()
    assert len(victims) == 2, [p.info["cmdline"] for p in victims]
    victims[0].kill()
    views = [final(url, j) for j in long]
    assert sorted(v["status"] for v in views) == ["completed", "failed"], views
    failed = next(v for v in views if v["status"] == "failed")
    assert "replica running this job stopped" in failed["error"]

    # Serve replaces the dead replica; new jobs run.
    again = httpx.post(f"{url}/v1/videos", json={"image": png_b64(), **REQUEST}).json()["id"]
    assert final(url, again)["status"] == "completed"

    # The ingress itself dies mid-job: Serve starts a new one, which still answers for every
    # job (from the ledger actor): ended ones as they were, the running one failed with why.
    # Long enough not to end before the kill (the orphaned request ends on its replica later).
    running = httpx.post(f"{url}/v1/videos", json={"image": png_b64(), "num_inference_steps": 3000, **REQUEST}).json()["id"]
    while httpx.get(f"{url}/v1/videos/{running}").json()["status"] != "in_progress":
        time.sleep(0.2)
    ingress = replica_processes("VidrtIngress")
    assert len(ingress) == 1, [p.info["cmdline"] for p in ingress]
    ingress[0].kill()
    view = view_when_back(url, running)
    assert view["status"] == "failed" and view["error"] == (
        "the server restarted while the job was running; submit it again"), view
    assert view_when_back(url, jobs[0])["status"] == "completed"
    assert httpx.get(f"{url}/v1/videos/{jobs[0]}/content").content == content.content
    assert view_when_back(url, failed["id"])["error"] == failed["error"]
    after = httpx.post(f"{url}/v1/videos", json={"image": png_b64(), **REQUEST}).json()["id"]
    assert final(url, after)["status"] == "completed"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log_path.read_text()[-2000:]


def test_ray_serve_scales_replicas_up_with_the_jobs_waiting(tiny_engine_dir, tmp_path):
    # --min-replicas 1 --replicas 2: Serve's autoscaler (target one ongoing request per
    # replica) starts a second replica when two jobs are in flight, and both run at once.
    with serving(tiny_engine_dir, tmp_path, "--replicas", "2", "--min-replicas", "1") as (url, proc, log_path):
        assert len(replica_processes()) == 1
        # Far more steps than the test waits for: neither job ends on its own, so the second
        # can only start on a second replica. Posted together, as the ingress's two workers
        # then reach the replica handle at once (how CI once saw it never scale).
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            long = list(pool.map(lambda _: httpx.post(f"{url}/v1/videos", json={
                "image": png_b64(), "num_inference_steps": 200000, **REQUEST}).json()["id"], range(2)))
        end = time.time() + 300
        while time.time() < end and not all(
                (v := httpx.get(f"{url}/v1/videos/{j}").json())["status"] == "in_progress" and v["progress"]["step"] >= 1
                for j in long):
            time.sleep(0.5)
        assert len(replica_processes()) == 2, log_path.read_text()[-2000:]
        views = [httpx.get(f"{url}/v1/videos/{j}").json() for j in long]
        assert all(v["status"] == "in_progress" and 1 <= v["progress"]["step"] < 200000 for v in views), views
        for job in long:
            assert httpx.delete(f"{url}/v1/videos/{job}").status_code == 200
            assert final(url, job)["status"] == "cancelled"


def test_the_ingress_routes_every_job_through_one_handle_router():
    # Serve's DeploymentHandle makes its router on the first .options() call, with no lock:
    # two ingress workers starting jobs at once made two routers under one handle id, whose
    # load reports replace each other at the controller (the autoscaler then saw one job in
    # flight, never two). The fake's .options() is as slow and unlocked as Serve's.
    from vidrt.ray_serve import RemotePipeline

    routers = []

    class Handle:
        def options(self, stream=False):
            assert stream
            time.sleep(0.2)
            routers.append(object())
            return self

        class run:  # noqa: N801 - a deployment method as the handle exposes it
            @staticmethod
            def remote(payload):
                return iter([("done", ([payload["seed"]], {}))])

    pipe = RemotePipeline(model=None, handle_factory=lambda: Handle())
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda s: pipe.generate(seed=s), range(2)))
    assert len(routers) == 1 and [o.frames for o in outs] == [[0], [1]]


def test_a_cluster_that_cannot_be_joined_is_one_line(tiny_engine_dir, monkeypatch, capsys):
    # What Ray raises for a wrong address or a token-authenticated cluster joined without
    # RAY_AUTH_MODE=token (seen with `ray start --head` on Ray 2.60).
    import ray

    from vidrt import cli

    def refuse(*args, **kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6390")

    monkeypatch.setattr(ray, "init", refuse)
    assert cli.main(["serve", "--ray", "--address", "127.0.0.1:6390", "--model", "tiny-svd", "--engine-dir",
                     str(tiny_engine_dir), "--backend", "onnxruntime"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "vidrt: error:" in line or "Traceback" in line]
    assert len(err) == 1 and err[0].startswith("vidrt: error: cannot join the Ray cluster at 127.0.0.1:6390 "), err
    assert "RAY_AUTH_MODE=token" in err[0]  # the build's progress bars above it are stderr too
