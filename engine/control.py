"""What an embedding application holds over a running request: its progress and a way to
stop it.

``pipe.generate(..., on_progress=fn, cancel=token)`` (or ``await pipe.agenerate(...)``)
calls ``fn(Progress(stage, step, steps))`` as the request moves (``encode`` once,
``denoise`` after each step, ``decode`` once), on the thread that runs the request. A
token's ``cancel()``, from any thread, stops the request before its next step or stage:
the call raises ``Cancelled``, a running request stops within one step.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable

from .errors import VidrtError

STAGES = ("queued", "encode", "denoise", "decode", "done")


class Cancelled(VidrtError):
    """The request was cancelled through its CancelToken."""


class CancelToken:
    """Set from any thread to stop a request between steps; one token per request."""

    def __init__(self):
        self._event = threading.Event()
        self.reason = "cancelled"

    def cancel(self, reason: str = "cancelled") -> None:
        """Asks the request to stop before its next step (idempotent; the first reason stays)."""
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a request is: ``stage`` one of STAGES, ``step`` of ``steps`` denoising steps done."""

    stage: str
    step: int
    steps: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class RequestControl:
    """One request's progress callback and cancel token, as the pipeline and loop see them."""

    def __init__(self, on_progress: Callable[[Progress], None] | None = None, cancel: CancelToken | None = None):
        if on_progress is not None and not callable(on_progress):
            raise VidrtError(f"on_progress={on_progress!r}: pass a function taking a vidrt.Progress, or None")
        if cancel is not None and not isinstance(cancel, CancelToken):
            raise VidrtError(f"cancel={cancel!r}: pass a vidrt.CancelToken, or None")
        self.on_progress, self.cancel = on_progress, cancel
        self.steps = 0

    def check(self) -> None:
        """Raises Cancelled when the request's token was cancelled."""
        if self.cancel is not None and self.cancel.cancelled:
            raise Cancelled(f"request {self.cancel.reason}")

    def report(self, stage: str, step: int = 0, steps: int | None = None) -> None:
        """Tells the callback where the request is, then raises Cancelled if the token
        was cancelled (by then or by the callback itself)."""
        if steps is not None:
            self.steps = steps
        if self.on_progress is not None:
            self.on_progress(Progress(stage, step, self.steps))
        self.check()


NO_CONTROL = RequestControl()
