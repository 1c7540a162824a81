"""Generation jobs: a bounded queue in front of one pipeline, a worker thread that runs
them in turn (queued jobs of the same shape, steps and settings together as one batch,
each video with its own generator), and the bookkeeping a job API needs (states,
progress, deadlines, cancellation, idempotency, result retention, metrics).

Every accepted job ends in exactly one of completed, failed (with the reason),
cancelled or expired; results are kept ``keep_s`` seconds and at most ``keep_mb`` in
all, oldest first out, then the job is forgotten. Nothing here knows about HTTP
(vidrt.server does).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

from .control import Cancelled, CancelToken, Progress
from .errors import VidrtError

log = logging.getLogger("vidrt.jobs")

QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, EXPIRED = (
    "queued", "in_progress", "completed", "failed", "cancelled", "expired")
STATES = (QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, EXPIRED)
FINAL = (COMPLETED, FAILED, CANCELLED, EXPIRED)
CONTENT_TYPES = {"mp4": "video/mp4", "gif": "image/gif", "png": "application/zip"}


class QueueFull(VidrtError):
    """The queue holds ``max_queue`` jobs; ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class NotAccepting(VidrtError):
    """The manager is shutting down."""


@dataclasses.dataclass(frozen=True)
class JobLimits:
    """How many jobs wait, how long each may take and how long results are kept."""

    max_queue: int = 16
    job_timeout_s: float | None = None  # per job, from submission; None: no deadline
    keep_s: float = 3600.0
    keep_mb: float = 1024.0
    max_batch: int = 1  # jobs run together in one denoiser batch, at most
    batch_wait_ms: float = 0.0  # how long the first job of a batch waits for others

    def __post_init__(self):
        if self.max_queue < 1:
            raise VidrtError(f"--max-queue {self.max_queue}: take a whole number >= 1")
        if self.max_batch < 1 or not self.batch_wait_ms >= 0:
            raise VidrtError(f"--max-batch {self.max_batch} / --batch-wait-ms {self.batch_wait_ms}: "
                             "take a whole number >= 1 and a number of milliseconds >= 0")
        for name in ("job_timeout_s", "keep_s", "keep_mb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                flag = {"job_timeout_s": "--job-timeout", "keep_s": "--keep-results", "keep_mb": "--keep-results-mb"}[name]
                raise VidrtError(f"{flag} {value}: give a number of seconds (or MB) > 0")


@dataclasses.dataclass(eq=False)  # a job is itself: compared by identity
class Job:
    """One request and what became of it."""

    id: str
    kwargs: dict  # the pipeline call's keywords
    fmt: str
    fps: int
    created: float
    deadline: float | None = None  # time.time() past which the job expires
    idempotency_key: str | None = None
    status: str = QUEUED
    progress: Progress = Progress("queued", 0, 0)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    timings: dict | None = None
    content: list = dataclasses.field(default_factory=list)  # one encoded video per output
    version: int = 0  # bumped on every change, so a watcher can wait for the next one
    config: object = None  # the request's vidrt.request.GenerateConfig, where batching may need it

    @property
    def content_bytes(self) -> int:
        return sum(len(c) for c in self.content)

    def view(self) -> dict:
        """The job as the API shows it."""
        return {
            "id": self.id, "status": self.status, "progress": self.progress.as_dict(), "created_at": self.created,
            "started_at": self.started, "finished_at": self.finished, "error": self.error, "timings": self.timings,
            "format": self.fmt, "videos": len(self.content),
        }


@dataclasses.dataclass
class Batch:
    """Jobs running together in one pipeline call, and that call's cancel token."""

    jobs: list
    token: CancelToken = dataclasses.field(default_factory=CancelToken)
    step_started: float | None = None  # perf_counter at the last denoising step's start (step metrics)


class JobLedger:
    """A copy of every job record outside the process that serves them, so a server that
    dies and is started again (Ray Serve restarts a dead ingress) still answers for them.

    Holds each job as last recorded (without its request), keyed by id. Under Ray it runs
    as an actor (vidrt.ray_serve) and the manager reaches it through an adapter with the
    same three methods.
    """

    def __init__(self):
        self._jobs: dict[str, Job] = {}

    def put(self, job: Job) -> None:
        self._jobs[job.id] = job

    def drop(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def all(self) -> list[Job]:
        return list(self._jobs.values())


class JobManager:
    """Runs jobs on ``pipe`` from ``workers`` threads (start() / shutdown()), each one batch
    at a time: one worker for a local pipeline (its calls take turns anyway), one per
    replica for a pipeline that dispatches to several (vidrt.ray_serve)."""

    def __init__(self, pipe, limits: JobLimits = JobLimits(), metrics=None, clock=time.time, workers: int = 1,
                 ledger=None):
        self.pipe, self.limits, self.metrics, self.clock, self.workers = pipe, limits, metrics, clock, workers
        self.ledger = ledger  # a JobLedger (or its remote adapter), or None: records live here only
        self.jobs: dict[str, Job] = {}
        self.by_key: dict[str, str] = {}
        self.queue: collections.deque[Job] = collections.deque()
        self.changed = threading.Condition()
        self.accepting = True
        self.running: list[Batch] = []  # the batches on the pipeline now
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # -- submitting and reading -------------------------------------------------------

    def submit(self, kwargs: dict, fmt: str = "mp4", fps: int = 7, idempotency_key: str | None = None,
               timeout_s: float | None = None, config=None) -> tuple[Job, str]:
        """Queues a job (or returns the one already made for ``idempotency_key``).

        Args:
            kwargs: the pipeline call's keywords.
            fmt, fps: how its videos are encoded.
            idempotency_key: a client's key; the same key returns the same job.
            timeout_s: seconds from now the job may take (default: the limits').
            config: the request's GenerateConfig; jobs with one may be batched.

        Returns:
            The job and its status as of this call ("queued" for a new job; a worker may
            have taken it by the time the caller looks).

        Raises:
            QueueFull: ``max_queue`` jobs are waiting.
            NotAccepting: the manager is shutting down.
        """
        with self.changed:
            if idempotency_key is not None and idempotency_key in self.by_key:
                known = self.jobs.get(self.by_key[idempotency_key])
                if known is not None:
                    return known, known.status
            if not self.accepting:
                raise NotAccepting("the server is shutting down and takes no new jobs; retry on another replica")
            if len(self.queue) >= self.limits.max_queue:
                raise QueueFull(f"the queue is full ({self.limits.max_queue} jobs waiting); retry later",
                                retry_after=self._retry_after())
            now = self.clock()
            timeout = timeout_s if timeout_s is not None else self.limits.job_timeout_s
            job = Job(id=uuid.uuid4().hex, kwargs=kwargs, fmt=fmt, fps=fps, created=now,
                      deadline=now + timeout if timeout else None, idempotency_key=idempotency_key, config=config)
            self.jobs[job.id] = job
            if idempotency_key is not None:
                self.by_key[idempotency_key] = job.id
            self.queue.append(job)
            self._record(job)
            self._changed(job)
            return job, job.status

    def get(self, job_id: str) -> Job | None:
        with self.changed:
            return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Cancels a queued job at once and a running one before its next step (one in a
        batch with others ends at once; they go on); a finished job stays as it is.
        Returns the job (None for an unknown id)."""
        with self.changed:
            job = self.jobs.get(job_id)
            if job is None or job.status in FINAL:
                return job
            if job.status == QUEUED:
                self.queue.remove(job)
                self._finish(job, CANCELLED, "cancelled before it started")
            else:
                self._stop_running(job, CANCELLED, "cancelled")
            return job

    def counts(self) -> dict[str, int]:
        """Jobs known by state."""
        with self.changed:
            out = dict.fromkeys(STATES, 0)
            for job in self.jobs.values():
                out[job.status] += 1
            return out

    # -- running ------------------------------------------------------------------------

    def start(self) -> None:
        self._restore()
        workers = [(self._work, f"vidrt-worker-{i}") for i in range(self.workers)]
        for target, name in (*workers, (self._tend, "vidrt-janitor")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self, grace_s: float = 30.0) -> None:
        """Stops taking jobs, cancels the queued ones, gives the running ones ``grace_s``
        seconds to finish, then cancels them and waits for the worker to stop."""
        with self.changed:
            self.accepting = False
            while self.queue:
                self._finish(self.queue.popleft(), CANCELLED, "the server shut down before the job started")
            self.changed.wait_for(lambda: not self.running, grace_s)
            for batch in self.running:
                batch.token.cancel("shutdown")
            self._stop.set()
            self.changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=grace_s + 60)

    def _work(self) -> None:
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.queue or self._stop.is_set())
                if self._stop.is_set():
                    return
                job = self.queue.popleft()
                if job.deadline is not None and self.clock() >= job.deadline:
                    self._finish(job, EXPIRED, "the job's deadline passed before it started")
                    continue
                batch = Batch([])
                self.running.append(batch)
                self._start(batch, job)
                self._gather(batch)
            self._run(batch)

    def _start(self, batch: Batch, job: Job) -> None:
        batch.jobs.append(job)
        job.status, job.started = IN_PROGRESS, self.clock()
        self._record(job)
        self._changed(job)

    def _gather(self, batch: Batch) -> None:
        """Adds to ``batch`` (running, holding its first job) the queued jobs that can share
        it, waiting up to ``batch_wait_ms`` for more. The caller holds self.changed; while
        it waits, the batch's jobs are in progress (a cancel or deadline ends them as such)."""
        first = batch.jobs[0]
        key = batch_key(first)
        if self.limits.max_batch == 1 or key is None:
            return
        end = time.monotonic() + self.limits.batch_wait_ms / 1000
        while True:
            for job in list(self.queue):
                if len(batch.jobs) == self.limits.max_batch:
                    return
                if batch_key(job) == key and self._fits(first, len(batch.jobs) + 1):
                    self.queue.remove(job)
                    self._start(batch, job)
            left = end - time.monotonic()
            if len(batch.jobs) == self.limits.max_batch or left <= 0 or self._stop.is_set():
                return
            self.changed.wait(left)

    def _fits(self, job: Job, videos: int) -> bool:
        """Whether the engines take ``videos`` of ``job``'s request in one batch."""
        from .request import check_on_model

        try:
            check_on_model(dataclasses.replace(job.config, batch_size=videos), self.pipe.model)
            return True
        except VidrtError:
            return False

    def _run(self, batch: Batch) -> None:
        results, status, error, timings = None, COMPLETED, None, None
        jobs = list(batch.jobs)
        kwargs = jobs[0].kwargs if len(jobs) == 1 else merge_requests([j.kwargs for j in jobs])
        try:
            out = self.pipe.generate(**kwargs, on_progress=lambda p: self._progress(batch, p), cancel=batch.token)
            timings = _timings(out.timings)
            per_job = [out.frames] if len(jobs) == 1 else [[video] for video in out.frames]
            results = [[encode(frames, job.fmt, job.fps) for frames in videos] for job, videos in zip(jobs, per_job)]
        except Cancelled:
            status, error = {"expired": (EXPIRED, "the job's deadline passed while it ran"),
                             "shutdown": (CANCELLED, "cancelled: the server shut down")}.get(
                batch.token.reason, (CANCELLED, "cancelled"))
        except VidrtError as e:
            status, error = FAILED, str(e)
        except Exception as e:  # noqa: BLE001 - a job must end with a reason, never vanish
            log.exception("jobs %s failed", [j.id for j in jobs])
            status, error = FAILED, f"internal error: {type(e).__name__}: {e}"
        with self.changed:
            self.running.remove(batch)
            for i, job in enumerate(jobs):
                if job.status in FINAL:  # cancelled or expired alone while its batch ran on
                    continue
                job.content, job.timings = (results[i] if results else []), timings
                self._finish(job, status, error)

    def _stop_running(self, job: Job, status: str, reason: str) -> None:
        """Ends a running job: alone in its batch, by stopping the batch before its next
        step; beside others, at once, while they go on (the caller holds self.changed)."""
        batch = next(b for b in self.running if job in b.jobs)
        if any(other is not job and other.status not in FINAL for other in batch.jobs):
            self._finish(job, status, reason if status == CANCELLED else "the job's deadline passed while it ran")
        else:
            batch.token.cancel("expired" if status == EXPIRED else reason)

    def _progress(self, batch: Batch, progress: Progress) -> None:
        with self.changed:
            if progress.stage == "denoise":
                now = time.perf_counter()
                if progress.step > 0 and batch.step_started is not None and self.metrics is not None:
                    self.metrics.step_seconds.observe(now - batch.step_started)
                batch.step_started = now
            for job in batch.jobs:
                if job.status not in FINAL:
                    job.progress = progress
                    self._changed(job)

    def _tend(self) -> None:
        """Expires what passed its deadline and forgets results past their keep limits."""
        while not self._stop.wait(0.25):
            with self.changed:
                now = self.clock()
                for job in list(self.queue):
                    if job.deadline is not None and now >= job.deadline:
                        self.queue.remove(job)
                        self._finish(job, EXPIRED, "the job's deadline passed before it started")
                for job in [j for batch in self.running for j in batch.jobs]:
                    if job.status not in FINAL and job.deadline is not None and now >= job.deadline:
                        self._stop_running(job, EXPIRED, "expired")
                self._forget(now)

    def _forget(self, now: float) -> None:
        done = sorted((j for j in self.jobs.values() if j.status in FINAL), key=lambda j: j.finished)
        total = sum(j.content_bytes for j in done)
        for job in done:
            if now - job.finished > self.limits.keep_s or total > self.limits.keep_mb * 2**20:
                total -= job.content_bytes
                del self.jobs[job.id]
                if job.idempotency_key is not None:
                    self.by_key.pop(job.idempotency_key, None)
                if self.ledger is not None:
                    self.ledger.drop(job.id)

    # -- bookkeeping (callers hold self.changed) ---------------------------------------

    def _finish(self, job: Job, status: str, error: str | None) -> None:
        job.status, job.error, job.finished = status, error, self.clock()
        # The request (its decoded image among it) is not needed once the job ended; only the
        # encoded videos count against keep_mb, so a kept record must not hold more than those.
        job.kwargs, job.config = {}, None
        if status == COMPLETED:
            job.progress = Progress("done", job.progress.steps, job.progress.steps)
        self._record(job)
        if self.metrics is not None:
            self.metrics.finished.labels(status).inc()
            if status == COMPLETED:
                self.metrics.request_seconds.observe(job.finished - job.created)
        self._changed(job)

    def _record(self, job: Job) -> None:
        """Copies the job to the ledger: when accepted, started and ended."""
        if self.ledger is not None:
            self.ledger.put(dataclasses.replace(job, kwargs={}, config=None))

    def _restore(self) -> None:
        """Takes back the ledger's records after a restart: ended jobs as they were; jobs
        that were queued or running when the last server died end failed, with why."""
        if self.ledger is None:
            return
        with self.changed:
            for job in self.ledger.all():
                self.jobs[job.id] = job
                if job.idempotency_key is not None:
                    self.by_key[job.idempotency_key] = job.id
                if job.status not in FINAL:
                    where = "waiting in the queue" if job.status == QUEUED else "running"
                    self._finish(job, FAILED, f"the server restarted while the job was {where}; submit it again")

    def _changed(self, job: Job) -> None:
        job.version += 1
        self.changed.notify_all()

    def _retry_after(self) -> int:
        """Seconds until a queue slot is likely free: the last finished job's duration, else 10."""
        ends = [j.finished - j.started for j in self.jobs.values() if j.status == COMPLETED and j.started]
        return max(1, round(ends[-1])) if ends else 10


# Keywords that differ per video in a batch; every other keyword must be equal.
PER_VIDEO = ("image", "prompt", "negative_prompt", "generator")


def batch_key(job: Job):
    """What jobs must share to run as one batch (None: this job runs alone): every
    keyword but the per-video ones, and whether a negative prompt is given. Only
    one-video requests are batched, and only those given as text (an array's repr, which
    the key compares, elides its values)."""
    kwargs = job.kwargs
    if job.config is None or kwargs.get("num_videos_per_prompt", 1) != 1 or any(
            hasattr(v, "shape") for k, v in kwargs.items() if k != "image"):
        return None
    image = kwargs.get("image")
    if isinstance(image, list) and len(image) != 1:
        return None
    shared = sorted((k, repr(v)) for k, v in kwargs.items() if k not in PER_VIDEO)
    return (tuple(shared), kwargs.get("negative_prompt") is None, kwargs.get("generator") is None)


def merge_requests(requests: list[dict]) -> dict:
    """One pipeline call for several one-video requests of the same batch_key: images,
    prompts and negative prompts as lists, one generator per video, so each video draws
    what it would alone."""
    merged = dict(requests[0])
    for name in PER_VIDEO:
        if merged.get(name) is None:
            continue
        values = [r[name] for r in requests]
        merged[name] = [v for value in values for v in (value if isinstance(value, list) else [value])]
    return merged


def _timings(t) -> dict | None:
    if t is None:
        return None
    return {"end_to_end_s": t.end_to_end, "denoise_s": t.unet, "steps_s": list(t.unet_steps),
            "vae_decoder_s": t.vae_decoder}


def encode(frames: list, fmt: str, fps: int) -> bytes:
    """One video's PIL frames as MP4, GIF, or a zip of PNG frames (vidrt.video_io writes them)."""
    from .video_io import write_video

    with tempfile.TemporaryDirectory(prefix="vidrt-job-") as tmp:
        target = Path(tmp) / ("frames" if fmt == "png" else f"video.{fmt}")
        write_video(frames, target, fps, fmt)
        if fmt != "png":
            return target.read_bytes()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for frame in sorted(target.iterdir()):
                archive.write(frame, frame.name)
        return buffer.getvalue()
