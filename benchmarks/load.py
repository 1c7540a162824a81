"""Load benchmark of ``vidrt serve`` on loopback: N clients each submit M jobs (some
cancelled, some malformed on purpose), poll them to the end and report throughput,
latency percentiles, how every job ended, HTTP errors and the server's memory.

    python -m vidrt.benchmarks.load --model tiny-svd --clients 8 --jobs 10 --output load.json

starts ``vidrt serve`` itself (its flags after ``--``), or measures a running server with
``--url``. Bounded: at most clients x jobs requests and ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

FINAL = ("completed", "failed", "cancelled", "expired")


def _png() -> str:
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.new("RGB", (64, 64), (120, 60, 200)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Tally:
    """What the clients saw, shared between their threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.jobs: list[dict] = []  # {"status", "latency_s", "cancelled_by_client"}
        self.codes: dict[int, int] = {}
        self.bad_refused = 0

    def code(self, status: int) -> None:
        with self.lock:
            self.codes[status] = self.codes.get(status, 0) + 1


def _client(url: str, body: dict, jobs: int, cancel_every: int, bad_every: int, tally: Tally, deadline: float,
            seed: int) -> None:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60) as http:
        for j in range(jobs):
            if time.time() > deadline:
                return
            if bad_every and j % bad_every == bad_every - 1:
                r = http.post("/v1/videos", json=body | {"num_frames": 0})
                tally.code(r.status_code)
                with tally.lock:
                    tally.bad_refused += r.status_code == 400
                continue
            t0 = time.perf_counter()
            r = http.post("/v1/videos", json=body | {"seed": rng.randrange(2**31)})
            tally.code(r.status_code)
            if r.status_code == 429:
                time.sleep(float(r.headers.get("retry-after", 1)))
                continue
            if r.status_code != 202:
                continue
            job = r.json()["id"]
            cancel = cancel_every and j % cancel_every == cancel_every - 1
            if cancel:
                tally.code(http.delete(f"/v1/videos/{job}").status_code)
            while time.time() < deadline:
                v = http.get(f"/v1/videos/{job}")
                tally.code(v.status_code)
                if v.status_code == 200 and v.json()["status"] in FINAL:
                    break
                time.sleep(0.1)
            status = v.json()["status"] if v.status_code == 200 else f"http {v.status_code}"
            if status == "completed":
                tally.code(http.get(f"/v1/videos/{job}/content").status_code)
            with tally.lock:
                tally.jobs.append({"status": status, "latency_s": time.perf_counter() - t0, "cancelled_by_client": bool(cancel)})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(serve_args: list[str], port: int, timeout: float):
    import httpx

    cmd = [sys.executable, "-m", "vidrt.cli", "serve", "--port", str(port), *serve_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"vidrt serve exited with {proc.returncode}: run `vidrt serve {' '.join(serve_args)}` to see why")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"vidrt serve was not healthy within {timeout:.0f}s")


class RssSampler:
    """The server process's RSS, sampled every 0.2 s with how many jobs had ended by then.

    ``stop()`` gives first, last and peak (MB), the RSS when each quarter of the jobs had
    ended, and the trend over the second half of the run (MB per 100 ended jobs, with its
    95% interval), the part after warm-up effects where a leak shows as a slope.
    """

    def __init__(self, pid: int | None, ended=lambda: 0):
        self.samples: list[float] = []
        self.ended: list[int] = []
        self._count = ended
        self._stop = threading.Event()
        self._proc = None
        if pid is not None:
            import psutil

            self._proc = psutil.Process(pid)
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop.wait(0.2):
            try:
                rss = self._proc.memory_info().rss / 2**20
            except Exception:  # noqa: BLE001 - the server ended
                return
            self.ended.append(self._count())
            self.samples.append(rss)

    def stop(self) -> dict:
        self._stop.set()
        s, n = self.samples, self.ended
        if not s:
            return {}
        out = {"first_mb": s[0], "last_mb": s[-1], "peak_mb": max(s)}
        total = n[-1]
        if total >= 4:
            out["by_quarter_mb"] = [s[next(i for i, e in enumerate(n) if e >= total * q / 4)] for q in (1, 2, 3, 4)]
        half = [i for i, e in enumerate(n) if e >= total / 2]
        if total >= 8 and len({n[i] for i in half}) >= 3:
            from scipy import stats

            fit = stats.linregress([n[i] for i in half], [s[i] for i in half])
            t = stats.t.ppf(0.975, len(half) - 2)
            out["second_half_mb_per_100_jobs"] = [100 * (fit.slope - t * fit.stderr), 100 * fit.slope,
                                                  100 * (fit.slope + t * fit.stderr)]
        return out


def run(args) -> dict:
    body = json.loads(args.request)
    if args.image:
        body["image"] = _png()
    proc = None
    url = args.url
    if url is None:
        port = _free_port()
        proc = _start_server(["--model", args.model, *args.serve_args], port, args.start_timeout)
        url = f"http://127.0.0.1:{port}"
    tally, t0 = Tally(), time.time()
    rss = RssSampler(proc.pid if proc else None, lambda: len(tally.jobs))
    deadline = t0 + args.timeout
    threads = [threading.Thread(target=_client, args=(url, body, args.jobs, args.cancel_every, args.bad_every, tally,
                                                      deadline, i)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    memory = rss.stop()
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=120)
    done = [j["latency_s"] for j in tally.jobs if j["status"] == "completed"]
    statuses: dict[str, int] = {}
    for j in tally.jobs:
        statuses[j["status"]] = statuses.get(j["status"], 0) + 1
    q = statistics.quantiles(done, n=20) if len(done) >= 2 else done * 19
    return {
        "url": url, "clients": args.clients, "jobs_per_client": args.jobs, "request": {k: v for k, v in body.items() if k != "image"},
        "wall_s": wall, "videos_per_min": len(done) / wall * 60, "p50_s": q[9] if q else None, "p95_s": q[18] if q else None,
        "accepted": len(tally.jobs), "ended": statuses, "bad_refused_400": tally.bad_refused,
        "http_codes": {str(k): v for k, v in sorted(tally.codes.items())},
        "http_5xx": sum(v for k, v in tally.codes.items() if k >= 500), "server_rss": memory,
        "server_exit": None if proc is None else proc.returncode,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-svd", help="model for the server this starts (default: tiny-svd)")
    p.add_argument("--url", help="measure a running server instead of starting one")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--jobs", type=int, default=10, help="jobs per client")
    p.add_argument("--cancel-every", type=int, default=5, help="every k-th job is cancelled right after submission (0: none)")
    p.add_argument("--bad-every", type=int, default=7, help="every k-th request is malformed on purpose (0: none)")
    p.add_argument("--request", default='{"height": 64, "width": 64, "num_frames": 4, "num_inference_steps": 4}',
                   help="JSON request fields of every job")
    p.add_argument("--no-image", dest="image", action="store_false", help="text-to-video models: send no image")
    p.add_argument("--timeout", type=float, default=900, help="stop submitting and polling after this many seconds")
    p.add_argument("--start-timeout", type=float, default=900)
    p.add_argument("--output", help="write the result as JSON here")
    p.add_argument("serve_args", nargs="*", help="flags for vidrt serve, after --")
    args = p.parse_args(argv)
    if args.clients < 1 or args.jobs < 1:
        p.error("--clients and --jobs take whole numbers >= 1")
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
