"""``vidrt serve --ray``: the same HTTP job API as a Ray Serve application that scales past
one machine (the optional ``ray`` extra).

Two deployments:
- ``VidrtReplica`` (``--replicas`` of them, CPU/GPU resources each, autoscaling between
  ``--min-replicas`` and ``--replicas`` on ongoing requests): one pipeline each, one job at
  a time; a job streams its progress back and stops when its stream is cancelled.
- ``VidrtIngress`` (one): vidrt.server's FastAPI app behind Serve's HTTP proxy, its job
  manager keeping every job; its "pipeline" (RemotePipeline) sends each batch to a replica.
  A replica that dies mid-job fails that job with the reason (never a vanished job).

The ingress copies every job record to a ledger actor that the driver owns, so when the
ingress itself dies and Serve starts it again, ended jobs are still there (and their
videos) and the ones it had queued or running end failed with the reason.

Requests are checked on the ingress with the model's description alone (no engines).
"""

from __future__ import annotations

import dataclasses
import threading

from .control import Cancelled, Progress
from .errors import VidrtError
from .jobs import JobLedger

APP_NAME = "vidrt"


def _seeds(generator):
    """A request's generators as seeds: torch generators do not pickle, and the server
    only makes freshly seeded ones."""
    if generator is None:
        return None
    if isinstance(generator, (list, tuple)):
        return [g.initial_seed() for g in generator]
    return generator.initial_seed()


def _generators(seeds):
    import torch

    if seeds is None:
        return None
    if isinstance(seeds, list):
        return [torch.Generator().manual_seed(s) for s in seeds]
    return torch.Generator().manual_seed(seeds)


class RemotePipeline:
    """The pipeline as the ingress's job manager sees it: ``model`` (for the checks) and
    ``generate``, which runs the call on a replica and relays its progress."""

    def __init__(self, model, handle_factory):
        self.model = model
        self._handle_factory = handle_factory
        self._handle = None
        self._handle_lock = threading.Lock()

    def _stream_handle(self):
        # The first .options() call creates the handle's router, and Serve's is not thread-safe:
        # two workers doing it at once make two routers under one handle id, whose load
        # reports overwrite each other at the controller, so the autoscaler never sees more
        # than one job in flight (seen: two jobs accepted together never scaled past one replica).
        with self._handle_lock:
            if self._handle is None:
                self._handle = self._handle_factory().options(stream=True)
            return self._handle

    def generate(self, on_progress=None, cancel=None, **kwargs):
        from .pipeline_base import StageTimings, VideoPipelineOutput

        payload = kwargs | {"generator": _seeds(kwargs.get("generator"))}
        stream = self._stream_handle().run.remote(payload)
        try:
            for kind, value in stream:
                if kind == "progress":
                    if on_progress is not None:
                        on_progress(Progress(**value))
                    if cancel is not None and cancel.cancelled:
                        stream.cancel()
                        raise Cancelled(f"request {cancel.reason}")
                elif kind == "error":
                    raise VidrtError(value)
                elif kind == "done":
                    frames, timings = value
                    return VideoPipelineOutput(frames=frames, timings=StageTimings(**timings))
        except (Cancelled, VidrtError):
            raise
        except Exception as e:  # noqa: BLE001 - a dead replica, a lost node: the job fails with why
            raise VidrtError(f"the replica running this job stopped ({type(e).__name__}); submit the job again") from None
        raise VidrtError("the replica ended the job's stream without a result; submit the job again")


class RemoteLedger:
    """vidrt.jobs.JobLedger run as a Ray actor that the serving driver owns, reached with
    the ledger's own methods: the ingress's job records outlive the ingress replica."""

    def __init__(self, actor):
        self.actor = actor

    def put(self, job) -> None:
        import ray

        ray.get(self.actor.put.remote(job))  # recorded before the caller answers for the job

    def drop(self, job_id: str) -> None:
        self.actor.drop.remote(job_id)

    def all(self) -> list:
        import ray

        return ray.get(self.actor.all.remote())


class Replica:
    """One pipeline on a Serve replica; ``run`` streams ("progress", dict)... then
    ("done", (frames, timings)), or ("error", message)."""

    def __init__(self, cfg):
        self.pipe = cfg.load_pipeline(progress=False)

    async def run(self, payload: dict):
        import asyncio

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        kwargs = payload | {"generator": _generators(payload.get("generator"))}
        task = asyncio.ensure_future(self.pipe.agenerate(
            **kwargs, on_progress=lambda p: loop.call_soon_threadsafe(events.put_nowait, p.as_dict())))
        try:
            while not (task.done() and events.empty()):
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield ("progress", getter.result())
                else:
                    getter.cancel()
        except (asyncio.CancelledError, GeneratorExit):  # the ingress cancelled the stream
            task.cancel()  # agenerate cancels the request and waits for it to stop
            await asyncio.wait([task])
            raise
        try:
            out = task.result()
        except VidrtError as e:
            yield ("error", str(e))
            return
        yield ("done", (out.frames, dataclasses.asdict(out.timings)))


def deploy(cfg, address: str | None, replicas: int, min_replicas: int | None, cpus: float, gpus: float):
    """Starts (or joins) a Ray cluster and runs the app: Serve's proxy on cfg.host:cfg.port.

    Returns:
        Once the application is running (it keeps running in the cluster).
    """
    import ray
    from ray import serve

    from .server import Service, create_app
    from .sources import resolve_model

    try:
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    except (ConnectionError, RuntimeError) as e:
        raise VidrtError(
            f"cannot join the Ray cluster at {address} ({type(e).__name__}: {str(e).splitlines()[0]}): check the "
            "address with `ray status`; for a cluster with token authentication (Ray's default since 2.59) set "
            "RAY_AUTH_MODE=token, with the token in RAY_AUTH_TOKEN or ~/.ray/auth_token") from None
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    model = resolve_model(cfg.model, seed=cfg.seed, motion_adapter=cfg.motion_adapter, progress=False)
    scaling = {"num_replicas": replicas} if min_replicas is None else {"autoscaling_config": {
        "min_replicas": min_replicas, "max_replicas": replicas, "target_ongoing_requests": 1}}
    replica = serve.deployment(Replica, name="VidrtReplica", max_ongoing_requests=1,
                               ray_actor_options={"num_cpus": cpus, "num_gpus": gpus}, **scaling)
    # Owned by this driver (not the ingress), so it lives as long as `vidrt serve --ray` does.
    ledger = ray.remote(JobLedger).options(num_cpus=0, max_restarts=0).remote()

    def build_app():  # runs on the ingress replica, again each time Serve restarts it
        def handle():
            return serve.get_deployment_handle("VidrtReplica", app_name=APP_NAME)

        service = Service(RemotePipeline(model, handle), dataclasses.replace(cfg, no_warmup=True), workers=replicas,
                          ledger=RemoteLedger(ledger))
        return create_app(service)

    class Ingress:
        def __init__(self, replica_app):  # the bound replica deployment: Serve starts it with the app
            pass

    ingress = serve.deployment(serve.ingress(build_app)(Ingress), name="VidrtIngress", num_replicas=1,
                               ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=cfg.grace + 5)
    serve.run(ingress.bind(replica.bind(cfg)), name=APP_NAME, route_prefix="/")


def run_until_signal(cfg) -> int:
    """Deploys, then waits for SIGTERM or SIGINT: the app is deleted (the ingress stops
    taking jobs and gives running ones cfg.grace seconds) and Serve shut down; returns 0."""
    import signal
    import threading

    import ray
    from ray import serve

    stop = threading.Event()
    deploy(cfg, cfg.address, cfg.replicas, cfg.min_replicas, cfg.replica_cpus, cfg.replica_gpus)
    # After ray.init, whose own handler would abort the process on SIGTERM.
    previous = {sig: signal.signal(sig, lambda *a: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"vidrt: serving on http://{cfg.host}:{cfg.port} through Ray Serve ({cfg.replicas} replicas)", flush=True)
        stop.wait()
        serve.delete(APP_NAME)
        serve.shutdown()
        ray.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
