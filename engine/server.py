"""``vidrt serve``: an HTTP job API over one pipeline (FastAPI; the optional ``serve`` extra).

    POST   /v1/videos               JSON (or multipart with an ``image`` file) -> 202 {"id", "status": "queued"}
    GET    /v1/videos/{id}          status, progress {"step", "steps", "stage"}, timings, error
    GET    /v1/videos/{id}/events   the same as server-sent events, until the job ends
    GET    /v1/videos/{id}/content  the video (MP4, GIF, or a zip of PNG frames); ?index=i for the i-th
    DELETE /v1/videos/{id}          cancel (a running job stops within one step)
    GET    /healthz                 200 once the engines are loaded and warmed up
    GET    /metrics                 Prometheus text

Requests use the pipeline's own argument names and are checked before they are queued
with the CLI's checks (vidrt.request): a bad one is a 400 ``{"error": "..."}``.
"""

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import re
import threading

from .errors import VidrtError
from .jobs import CONTENT_TYPES, FINAL, JobLimits, JobManager, NotAccepting, QueueFull
from .request import (
    GenerateConfig,
    check_inputs,
    check_on_model,
    check_values,
    pipeline_extras,
    pipeline_kwargs,
)

log = logging.getLogger("vidrt.server")

# JSON field -> GenerateConfig field, where the pipeline's name differs from the flag's.
RENAMED = {"num_inference_steps": "steps", "num_videos_per_prompt": "batch_size",
           "min_guidance_scale": "min_guidance", "max_guidance_scale": "max_guidance"}
REQUEST_FIELDS = ("prompt", "negative_prompt", "height", "width", "num_frames", "num_inference_steps",
                  "guidance_scale", "guidance_scale_2", "min_guidance_scale", "max_guidance_scale", "fps",
                  "motion_bucket_id", "noise_aug_strength", "decode_chunk_size", "num_videos_per_prompt", "seed")
JOB_FIELDS = ("image", "format", "timeout_s")
TYPES = {"prompt": str, "negative_prompt": str, "image": str, "format": str, "guidance_scale": float,
         "guidance_scale_2": float, "min_guidance_scale": float, "max_guidance_scale": float,
         "noise_aug_strength": float, "timeout_s": float}
FLAG_NAMES = {f"--{v.replace('_', '-')}": k for k, v in RENAMED.items()} | {"--min-guidance": "min_guidance_scale",
                                                                             "--max-guidance": "max_guidance_scale"}


@dataclasses.dataclass(frozen=True)
class ServeConfig(GenerateConfig):
    """vidrt serve's options: the model and engines, default request values, and the server's."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_queue: int = 16
    job_timeout: float | None = None
    keep_results: float = 3600.0
    keep_results_mb: float = 1024.0
    grace: float = 30.0
    no_warmup: bool = False
    max_batch: int = 1
    batch_wait_ms: float = 0.0
    # Ray Serve (vidrt.ray_serve)
    ray: bool = False
    address: str | None = None
    replicas: int = 2
    min_replicas: int | None = None
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0

    def limits(self) -> JobLimits:
        """The job manager's limits.

        Raises:
            VidrtError: --max-batch above 1 with a step cache (a cache decides over its whole
                batch, so jobs merged into one would change each other's skip decisions).
        """
        if self.max_batch > 1 and self.cache is not None:
            raise VidrtError("--max-batch merges jobs into one denoiser batch, where a step cache would decide for all of "
                             "them together; serve with --cache or with --max-batch, not both")
        return JobLimits(max_queue=self.max_queue, job_timeout_s=self.job_timeout, keep_s=self.keep_results,
                         keep_mb=self.keep_results_mb, max_batch=self.max_batch, batch_wait_ms=self.batch_wait_ms)


class Metrics:
    """The Prometheus series a scrape of /metrics reads (one registry per server)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.finished = Counter("vidrt_jobs_finished", "Jobs that ended, by final state", ["status"], registry=self.registry)
        self.jobs = Gauge("vidrt_jobs", "Jobs the server holds, by state", ["status"], registry=self.registry)
        self.queue_depth = Gauge("vidrt_queue_depth", "Jobs waiting to start", registry=self.registry)
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
        self.step_seconds = Histogram("vidrt_step_seconds", "Seconds per denoising step", registry=self.registry,
                                      buckets=buckets)
        self.request_seconds = Histogram("vidrt_request_seconds", "Seconds from submission to completion",
                                         registry=self.registry, buckets=buckets + (600, 1800))


class Service:
    """What the routes work on: the pipeline, its job manager, default request values and
    readiness (engines warmed up, not draining)."""

    def __init__(self, pipe, cfg: ServeConfig, workers: int = 1, ledger=None):
        self.pipe, self.cfg = pipe, cfg
        self.metrics = Metrics()
        self.jobs = JobManager(pipe, cfg.limits(), self.metrics, workers=workers, ledger=ledger)
        self.ready = threading.Event()

    def start(self) -> None:
        self.jobs.start()
        if self.cfg.no_warmup:
            self.ready.set()
        else:
            threading.Thread(target=self._warm_up, name="vidrt-warmup", daemon=True).start()

    def _warm_up(self) -> None:
        """One step of the default request, so the first job does not pay the engines' first run."""
        try:
            cfg = dataclasses.replace(self.cfg, steps=1, batch_size=1)
            image = _grey_image(*cfg.size(self.pipe.model)) if self.pipe.model.takes_image else None
            cfg = cfg if self.pipe.model.kind == "image-to-video" or cfg.prompt else dataclasses.replace(cfg, prompt="warm-up")
            self.pipe(**pipeline_kwargs(cfg, self.pipe.model, image) | {"progress": False, "output_type": "np"})
            self.ready.set()
        except Exception:  # noqa: BLE001 - /healthz stays 503 and the log says why
            log.exception("warm-up failed; /healthz stays 503")

    def begin_shutdown(self) -> None:
        """SIGTERM: stop taking jobs at once; the running one gets ``grace`` seconds."""
        self.ready.clear()
        threading.Thread(target=self.jobs.shutdown, args=(self.cfg.grace,), name="vidrt-drain", daemon=True).start()

    def job_request(self, fields: dict, image_bytes: bytes | None = None) -> tuple[dict, str, int, float | None, GenerateConfig]:
        """A request's fields, checked -> (pipeline keywords, format, fps, timeout seconds, its config).

        Fields other than REQUEST_FIELDS and JOB_FIELDS are the pipeline's other keywords
        (``frame_rate``, ``sigmas``, ...: vidrt.request.pipeline_extras), passed as given;
        the pipeline checks their values when the job runs.

        Raises:
            VidrtError: an unknown field, a wrong type, or a value the CLI would refuse.
        """
        from .video_io import VIDEO_FORMATS, image_from_bytes

        model = self.pipe.model
        extra = {k: v for k, v in fields.items() if k not in REQUEST_FIELDS and k not in JOB_FIELDS}
        unknown = sorted(k for k in extra if k not in pipeline_extras(model))
        if unknown:
            raise VidrtError(f"unknown field {unknown[0]!r}; the fields are {', '.join(REQUEST_FIELDS + JOB_FIELDS)}, "
                             f"and this model's other keywords: {', '.join(pipeline_extras(model)) or 'none'}")
        for name, value in fields.items():
            if name not in extra:
                _check_type(name, value)
        fmt = fields.get("format", "mp4")
        if fmt not in VIDEO_FORMATS:
            raise VidrtError(f"format {fmt!r}: choose one of {', '.join(VIDEO_FORMATS)}")
        timeout = fields.get("timeout_s")
        if timeout is not None and not timeout > 0:
            raise VidrtError(f"timeout_s {timeout}: give a number of seconds > 0")
        if ("image" in fields or image_bytes is not None) and not self.pipe.model.takes_image:
            raise VidrtError(f"image: {self.cfg.model} is a text-to-video model; drop the image and send a \"prompt\"")
        if "image" in fields:
            if image_bytes is not None:
                raise VidrtError("image: send it once, as a multipart file or as base64 in the JSON, not both")
            image_bytes = _base64(fields["image"])
        values = {RENAMED.get(k, k): v for k, v in fields.items() if k in REQUEST_FIELDS}
        try:
            cfg = dataclasses.replace(self.cfg, **values)
            check_values(cfg)
            check_on_model(cfg, self.pipe.model)
            check_inputs(cfg, self.pipe.model, image_bytes is not None, image_hint="an image (base64 in \"image\", "
                         "or a multipart file named image)", prompt_hint="a \"prompt\"")
            image = image_from_bytes(image_bytes) if image_bytes is not None and self.pipe.model.takes_image else None
            kwargs = pipeline_kwargs(cfg, self.pipe.model, image, extra) | {"progress": False}
        except VidrtError as e:
            raise VidrtError(_field_names(str(e))) from None
        return kwargs, fmt, cfg.fps, timeout, cfg


def _check_type(name: str, value) -> None:
    want = TYPES.get(name, int)
    if value is None and name in ("negative_prompt", "guidance_scale", "guidance_scale_2", "decode_chunk_size",
                                  "height", "width", "num_frames", "timeout_s"):
        return
    ok = isinstance(value, str) if want is str else (
        isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else
        isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        kind = {str: "a string", float: "a number", int: "a whole number"}[want]
        raise VidrtError(f"{name}: {value!r} is not {kind}")


def _field_names(message: str) -> str:
    """The CLI's messages name flags (--num-frames); the API's name JSON fields (num_frames)."""
    def field(match):
        flag = match.group(0)
        return FLAG_NAMES.get(flag, flag[2:].replace("-", "_"))

    return re.sub(r"--[a-z][a-z0-9-]*", field, message)


def _base64(text: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VidrtError("image: not valid base64; send the image file's bytes base64-encoded") from None


def _grey_image(height: int, width: int):
    import PIL.Image

    return PIL.Image.new("RGB", (width, height), (128, 128, 128))


def create_app(service: Service):
    """The FastAPI application over ``service`` (started and stopped with the app's lifespan)."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await asyncio.to_thread(service.start)  # may read a remote ledger back
        yield
        await asyncio.to_thread(service.jobs.shutdown, service.cfg.grace)

    app = FastAPI(title="vidrt", lifespan=lifespan)
    jobs = service.jobs

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return error(400, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def crashed(request, exc):  # a bug of ours: 500 with a one-line reason, the log has the rest
        log.exception("unhandled error on %s", request.url.path)
        return error(500, f"internal error: {type(exc).__name__}")

    @app.post("/v1/videos", status_code=202)
    async def submit(request: Request):
        try:
            fields, image_bytes = await _read_body(request)
            kwargs, fmt, fps, timeout, cfg = await asyncio.to_thread(service.job_request, fields, image_bytes)
            job, accepted = await asyncio.to_thread(  # off the event loop: it may write to a remote ledger
                jobs.submit, kwargs, fmt, fps, request.headers.get("idempotency-key"), timeout, config=cfg)
        except QueueFull as e:
            return error(429, str(e), {"Retry-After": str(e.retry_after)})
        except NotAccepting as e:
            return error(503, str(e), {"Retry-After": "5"})
        except VidrtError as e:
            return error(400, str(e))
        return JSONResponse({"id": job.id, "status": accepted}, status_code=202,
                            headers={"Location": f"/v1/videos/{job.id}"})

    def known(job_id: str):
        job = jobs.get(job_id)
        return job, (None if job else error(404, f"no job {job_id!r} (unknown, or its result was removed)"))

    @app.get("/v1/videos/{job_id}")
    async def status(job_id: str):
        job, missing = known(job_id)
        return missing or job.view()

    @app.delete("/v1/videos/{job_id}")
    async def cancel(job_id: str):
        job = await asyncio.to_thread(jobs.cancel, job_id)
        return job.view() if job else known(job_id)[1]

    @app.get("/v1/videos/{job_id}/content")
    async def content(job_id: str, index: int = 0):
        job, missing = known(job_id)
        if missing:
            return missing
        if job.status != "completed":
            return error(409, f"job {job_id} is {job.status}; its content is ready once the status is completed")
        if not 0 <= index < len(job.content):
            return error(404, f"index {index}: job {job_id} made {len(job.content)} video(s)")
        ext = "zip" if job.fmt == "png" else job.fmt
        return Response(job.content[index], media_type=CONTENT_TYPES[job.fmt],
                        headers={"Content-Disposition": f'attachment; filename="{job_id}_{index}.{ext}"'})

    @app.get("/v1/videos/{job_id}/events")
    async def events(job_id: str):
        job, missing = known(job_id)
        if missing:
            return missing

        async def stream():
            version, idle = -1, 0.0
            while True:
                if job.version != version:
                    version, idle = job.version, 0.0
                    yield f"event: {job.status}\ndata: {json.dumps(job.view())}\n\n"
                    if job.status in FINAL:
                        return
                elif idle >= 15:  # a comment line keeps proxies from closing an idle stream
                    idle = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(0.05)
                idle += 0.05

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz")
    async def healthz():
        if service.ready.is_set():
            return {"status": "ok"}
        return error(503, "warming up" if jobs.accepting else "shutting down")

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        m = service.metrics
        for state, count in jobs.counts().items():
            m.jobs.labels(state).set(count)
        m.queue_depth.set(len(jobs.queue))
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _read_body(request) -> tuple[dict, bytes | None]:
    """JSON, or a multipart form: an ``image`` file and the other fields as values (JSON scalars)."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form()
        fields, image = {}, None
        for name, value in form.multi_items():
            if hasattr(value, "read"):
                if name != "image":
                    raise VidrtError(f"file field {name!r}: the only file a request takes is 'image'")
                image = await value.read()
            else:
                fields[name] = _form_value(name, value)
        return fields, image
    try:
        fields = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VidrtError(f"the body is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); send a JSON object") from None
    if not isinstance(fields, dict):
        raise VidrtError("the body must be a JSON object of the pipeline's arguments")
    return fields, None


def _form_value(name: str, text: str):
    """A form field's text as the JSON body would carry it: text fields as text, the API's
    numeric fields as numbers, the pipeline's other keywords as JSON (lists, true/false)."""
    if TYPES.get(name) is str:
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    if name not in REQUEST_FIELDS and name not in JOB_FIELDS:
        return value
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else text


def serve(cfg: ServeConfig, pipe) -> int:
    """Runs the server until SIGTERM/SIGINT; returns 0 once every job has ended."""
    import signal

    import uvicorn

    service = Service(pipe, cfg)
    config = uvicorn.Config(create_app(service), host=cfg.host, port=cfg.port, log_level="info",
                            timeout_graceful_shutdown=cfg.grace + 5)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            service.begin_shutdown()  # stop taking jobs now, not after open streams close
            super().handle_exit(sig, frame)

    # uvicorn re-raises the signal it caught once it has stopped; the job is done by then.
    previous = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        Server(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
