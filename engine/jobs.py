"""Generation jobs: a bounded queue in front of one pipeline, a worker thread that runs
them in turn, and the bookkeeping a job API needs (states, progress, deadlines,
cancellation, idempotency, result retention, metrics).

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

    def __post_init__(self):
        if self.max_queue < 1:
            raise VidrtError(f"--max-queue {self.max_queue}: take a whole number >= 1")
        for name in ("job_timeout_s", "keep_s", "keep_mb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                flag = {"job_timeout_s": "--job-timeout", "keep_s": "--keep-results", "keep_mb": "--keep-results-mb"}[name]
                raise VidrtError(f"{flag} {value}: give a number of seconds (or MB) > 0")


@dataclasses.dataclass
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
    step_started: float | None = None  # perf_counter at the last denoising step's start (step metrics)
    cancel: CancelToken = dataclasses.field(default_factory=CancelToken)

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


class JobManager:
    """Runs jobs on ``pipe`` one after another on a worker thread (start() / shutdown())."""

    def __init__(self, pipe, limits: JobLimits = JobLimits(), metrics=None, clock=time.time):
        self.pipe, self.limits, self.metrics, self.clock = pipe, limits, metrics, clock
        self.jobs: dict[str, Job] = {}
        self.by_key: dict[str, str] = {}
        self.queue: collections.deque[Job] = collections.deque()
        self.changed = threading.Condition()
        self.accepting = True
        self.running: Job | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # -- submitting and reading -------------------------------------------------------

    def submit(self, kwargs: dict, fmt: str = "mp4", fps: int = 7, idempotency_key: str | None = None,
               timeout_s: float | None = None) -> Job:
        """Queues a job (or returns the one already made for ``idempotency_key``).

        Raises:
            QueueFull: ``max_queue`` jobs are waiting.
            NotAccepting: the manager is shutting down.
        """
        with self.changed:
            if idempotency_key is not None and idempotency_key in self.by_key:
                known = self.jobs.get(self.by_key[idempotency_key])
                if known is not None:
                    return known
            if not self.accepting:
                raise NotAccepting("the server is shutting down and takes no new jobs; retry on another replica")
            if len(self.queue) >= self.limits.max_queue:
                raise QueueFull(f"the queue is full ({self.limits.max_queue} jobs waiting); retry later",
                                retry_after=self._retry_after())
            now = self.clock()
            timeout = timeout_s if timeout_s is not None else self.limits.job_timeout_s
            job = Job(id=uuid.uuid4().hex, kwargs=kwargs, fmt=fmt, fps=fps, created=now,
                      deadline=now + timeout if timeout else None, idempotency_key=idempotency_key)
            self.jobs[job.id] = job
            if idempotency_key is not None:
                self.by_key[idempotency_key] = job.id
            self.queue.append(job)
            self._changed(job)
            return job

    def get(self, job_id: str) -> Job | None:
        with self.changed:
            return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Cancels a queued job at once and a running one before its next step; a finished
        job stays as it is. Returns the job (None for an unknown id)."""
        with self.changed:
            job = self.jobs.get(job_id)
            if job is None or job.status in FINAL:
                return job
            if job.status == QUEUED:
                self.queue.remove(job)
                self._finish(job, CANCELLED, "cancelled before it started")
            else:
                job.cancel.cancel("cancelled")
            return job

    def wait(self, job: Job, version: int, timeout: float) -> int:
        """Blocks until ``job`` changes past ``version`` (or ``timeout`` seconds); returns its version."""
        with self.changed:
            self.changed.wait_for(lambda: job.version > version or self._stop.is_set(), timeout)
            return job.version

    def counts(self) -> dict[str, int]:
        """Jobs known by state."""
        with self.changed:
            out = dict.fromkeys(STATES, 0)
            for job in self.jobs.values():
                out[job.status] += 1
            return out

    # -- running ------------------------------------------------------------------------

    def start(self) -> None:
        for target, name in ((self._work, "vidrt-worker"), (self._tend, "vidrt-janitor")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self, grace_s: float = 30.0) -> None:
        """Stops taking jobs, cancels the queued ones, gives the running one ``grace_s``
        seconds to finish, then cancels it and waits for the worker to stop."""
        with self.changed:
            self.accepting = False
            while self.queue:
                self._finish(self.queue.popleft(), CANCELLED, "the server shut down before the job started")
            self.changed.wait_for(lambda: self.running is None, grace_s)
            if self.running is not None:
                self.running.cancel.cancel("cancelled: the server shut down")
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
                job.status, job.started, self.running = IN_PROGRESS, self.clock(), job
                self._changed(job)
            self._run(job)

    def _run(self, job: Job) -> None:
        status, error, content, timings = COMPLETED, None, [], None
        try:
            out = self.pipe.generate(**job.kwargs, on_progress=lambda p: self._progress(job, p), cancel=job.cancel)
            timings = _timings(out.timings)
            content = [encode(frames, job.fmt, job.fps) for frames in out.frames]
        except Cancelled:
            expired = job.cancel.reason == "expired"
            status = EXPIRED if expired else CANCELLED
            error = "the job's deadline passed while it ran" if expired else job.cancel.reason
        except VidrtError as e:
            status, error = FAILED, str(e)
        except Exception as e:  # noqa: BLE001 - a job must end with a reason, never vanish
            log.exception("job %s failed", job.id)
            status, error = FAILED, f"internal error: {type(e).__name__}: {e}"
        with self.changed:
            job.content, job.timings = content, timings
            self.running = None
            self._finish(job, status, error)

    def _progress(self, job: Job, progress: Progress) -> None:
        with self.changed:
            if progress.stage == "denoise":
                now = time.perf_counter()
                if progress.step > 0 and job.step_started is not None and self.metrics is not None:
                    self.metrics.step_seconds.observe(now - job.step_started)
                job.step_started = now
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
                running = self.running
                if running is not None and running.deadline is not None and now >= running.deadline:
                    running.cancel.cancel("expired")
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

    # -- bookkeeping (callers hold self.changed) ---------------------------------------

    def _finish(self, job: Job, status: str, error: str | None) -> None:
        job.status, job.error, job.finished = status, error, self.clock()
        if status == COMPLETED:
            job.progress = Progress("done", job.progress.steps, job.progress.steps)
        if self.metrics is not None:
            self.metrics.finished.labels(status).inc()
            if status == COMPLETED:
                self.metrics.request_seconds.observe(job.finished - job.created)
        self._changed(job)

    def _changed(self, job: Job) -> None:
        job.version += 1
        self.changed.notify_all()

    def _retry_after(self) -> int:
        """Seconds until a queue slot is likely free: the last finished job's duration, else 10."""
        ends = [j.finished - j.started for j in self.jobs.values() if j.status == COMPLETED and j.started]
        return max(1, round(ends[-1])) if ends else 10


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
