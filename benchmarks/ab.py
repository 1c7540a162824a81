"""``vidrt bench-ab``: two revisions' engines timed in one invocation, runs interleaved.

Each revision is a git checkout (a worktree under the cache for a commit; the working
tree itself for the default head), served by its own worker process
(benchmarks/ab_worker.py) that imports vidrt from that checkout and builds that
checkout's engines into a folder of its own. After each side's warm-ups the timed runs
alternate in pairs (base, head; head, base; ...) on the same inputs and seed, so what the machine
does meanwhile falls on both; the two sides are then compared as ``vidrt compare``
compares two results. Both workers stay loaded, so the case must fit in memory twice.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

from vidrt import settings
from vidrt.errors import VidrtError

from .harness import BenchConfig, _side, parity, stages_of
from .results import case_key

WORKER = Path(__file__).with_name("ab_worker.py")


@dataclasses.dataclass(frozen=True)
class ABConfig(BenchConfig):
    """bench-ab options: run-bench's model and request flags, and the two revisions."""

    runs: int = 10
    base: str = "HEAD"
    head: str | None = None  # None: the working tree, uncommitted changes included
    base_env: str | None = None  # "NAME=VALUE,..." set for the base worker only
    head_env: str | None = None
    threshold: float = 5.0  # percent
    output_dir: str | None = None  # base.json and head.json are written here


@dataclasses.dataclass(frozen=True)
class Source:
    """One revision: where its checkout is, and what it is."""

    label: str  # "base" or "head"
    root: Path
    sha: str
    dirty: bool

    @property
    def name(self) -> str:
        return self.sha[:12] + ("-dirty" if self.dirty else "")


def _git(repo: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        raise VidrtError(f"bench-ab needs git: {e}") from None
    if out.returncode:
        raise VidrtError(f"git {' '.join(args)}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'failed'}")
    return out.stdout.strip()


def repository() -> Path:
    """The git checkout bench-ab works in: the one holding the current folder."""
    try:
        return Path(_git(Path.cwd(), "rev-parse", "--show-toplevel"))
    except VidrtError:
        raise VidrtError(f"bench-ab compares revisions of a vidrt git checkout; {Path.cwd()} is not inside one: "
                         "cd into your vidrt clone") from None


def check_options(cfg: ABConfig) -> None:
    """Fails on bad revisions or --base-env/--head-env before any model or engine is touched.

    Raises:
        VidrtError: not in a git checkout, no such commit, or malformed NAME=VALUE pairs.
    """
    parse_env(cfg.base_env, "base-env")
    parse_env(cfg.head_env, "head-env")
    repo = repository()
    for label, rev in (("base", cfg.base), ("head", cfg.head)):
        if rev is not None:
            _commit(repo, rev, label)


def _commit(repo: Path, rev: str, label: str) -> str:
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except VidrtError:
        raise VidrtError(f"--{label} {rev}: no such commit in {repo}; give a sha, branch or tag (git log shows them)") from None


def resolve_source(repo: Path, rev: str | None, label: str) -> Source:
    """The checkout of ``rev`` (None: the working tree itself), made once per commit as a
    git worktree under $VIDRT_CACHE/bench-ab/src and reused after.

    Raises:
        VidrtError: ``rev`` names no commit, or the checkout is not a vidrt source tree.
    """
    from vidrt.fsutil import folder_lock

    if rev is None:
        sha = _git(repo, "rev-parse", "HEAD")
        dirty = bool(_git(repo, "status", "--porcelain", "-uno"))
        return _checked(Source(label, repo, sha, dirty), "the working tree")
    sha = _commit(repo, rev, label)
    root = settings.cache_dir() / "bench-ab" / "src" / sha
    with folder_lock(root.parent, "bench-ab checkouts"):
        if not (root / ".git").exists():
            _git(repo, "worktree", "prune")
            _git(repo, "worktree", "add", "--detach", "--force", str(root), sha)
    return _checked(Source(label, root, sha, False), rev)


def _checked(source: Source, rev: str) -> Source:
    if not (source.root / "pyproject.toml").is_file() or not (source.root / "engine" / "__init__.py").is_file():
        raise VidrtError(f"--{source.label} {rev}: {source.root} is not a vidrt source tree (no pyproject.toml and engine/)")
    return source


def parse_env(text: str | None, flag: str) -> dict[str, str]:
    """--base-env/--head-env "NAME=VALUE,NAME=VALUE" as a dict."""
    out = {}
    for part in filter(None, (text or "").split(",")):
        name, sep, value = part.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise VidrtError(f"--{flag} {text}: write NAME=VALUE pairs separated by commas, e.g. VIDRT_DEBUG_SLOWDOWN=unet=1.5")
        out[name] = value
    return out


class RevisionWorker:
    """A revision's vidrt in its own process (benchmarks/ab_worker.py)."""

    def __init__(self, source: Source, env: dict[str, str]):
        import socket
        from multiprocessing.connection import Connection

        self.source = source
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen([sys.executable, str(WORKER), str(source.root), str(theirs.fileno())],
                                        env=os.environ | env, pass_fds=[theirs.fileno()])
        theirs.close()
        self._conn = Connection(ours.detach())  # EOF as soon as the worker exits, whenever that is

    def call(self, message: str, payload) -> dict:
        try:
            self._conn.send((message, payload))
            status, answer = self._conn.recv()
        except (EOFError, OSError):
            self.process.wait(timeout=30)
            raise VidrtError(f"the {self.source.label} worker ({self.source.name}) died (exit code {self.process.returncode}; "
                             "-9 is usually the out-of-memory killer: both revisions' engines stay loaded)") from None
        if status == "error":
            raise VidrtError(f"{self.source.label} ({self.source.name}): {answer}")
        if status == "crash":
            raise VidrtError(f"{self.source.label} ({self.source.name}) failed: {answer.strip().splitlines()[-1]}")
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self._conn.send(("close", None))
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self._conn.close()


def load_kwargs(cfg: ABConfig, source: Source) -> dict:
    """from_pretrained's keywords for one revision: only those set, so a revision that
    predates an option still loads; engines go to that revision's own folder."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", str(cfg.model))[-60:]
    engine_dir = settings.cache_dir() / "bench-ab" / "engines" / source.name / f"{slug}-seed{cfg.seed}"
    kwargs = dict(model=cfg.model, engine_dir=str(engine_dir), backend=cfg.backend, precision=cfg.precision,
                  sampler=cfg.sampler, unet_weights=cfg.unet_weights, motion_adapter=cfg.motion_adapter, seed=cfg.seed,
                  on_demand=cfg.on_demand_components(), cuda_graphs=not cfg.no_cuda_graphs, **cfg.engine_kwargs())
    return {k: v for k, v in kwargs.items() if v not in (None, ())}


def run_ab(cfg: ABConfig, progress: bool = True) -> tuple[dict, dict]:
    """Loads both revisions, warms each up, then alternates their timed runs; returns the
    (base, head) results, each in run-bench's schema 2 with the engine side only.

    Raises:
        VidrtError: bad revisions or options, or a revision that fails to load or run.
    """
    from tqdm.auto import tqdm

    from vidrt.sources import resolve_model

    envs = parse_env(cfg.base_env, "base-env"), parse_env(cfg.head_env, "head-env")
    repo = repository()
    sources = resolve_source(repo, cfg.base, "base"), resolve_source(repo, cfg.head, "head")
    if sources[0].sha == sources[1].sha and not sources[1].dirty and envs[0] == envs[1]:
        print(f"bench-ab: base and head are the same commit {sources[0].name}: an A/A run (every change reads as noise)")
    model = resolve_model(cfg.model, seed=cfg.seed, motion_adapter=cfg.motion_adapter)
    inputs, kwargs = cfg.inputs(model), cfg.request(model)
    workers = []
    try:
        for source, env in zip(sources, envs):
            print(f"bench-ab: {source.label} {source.name} from {source.root}", flush=True)
            workers.append(RevisionWorker(source, env))
            workers[-1].call("load", load_kwargs(cfg, source))
        request = {"inputs": inputs, "seed": cfg.seed, "kwargs": kwargs}
        for _ in range(cfg.warmup):
            for w in workers:
                w.call("run", request)
        runs = ([], [])
        for i in tqdm(range(cfg.runs), desc="A/B runs", disable=not progress, unit="pair"):
            # base first in even pairs, head first in odd ones: whichever runs second meets what
            # the first leaves (ONNX Runtime's threads spin on after a run), so the order alternates.
            for side, w in list(zip(runs, workers))[::1 if i % 2 == 0 else -1]:
                side.append(w.call("run", request))
    finally:
        for w in workers:
            w.close()
    base, head = (_result(cfg, model, source, side) for source, side in zip(sources, runs))
    head["parity"] = parity(runs[1][-1]["frames"], runs[0][-1]["frames"])  # head's frames against base's
    return base, head


def _result(cfg: ABConfig, model, source: Source, runs: list[dict]) -> dict:
    from vidrt.backends import get_backend
    from vidrt.samplers import make_sampler

    from .environment import environment, machine, sha_label

    backend = get_backend(cfg.backend, precision=cfg.precision).name
    frames = cfg.request(model)["num_frames"] or model.default_num_frames
    engine = _side(runs, cfg.batch_size, frames, max(r["peak_rss_mb"] for r in runs), stages_of(model), model.denoiser)
    config = dataclasses.asdict(cfg) | {"baseline_precision": "none", "num_frames_used": frames,
                                        "sampler_used": make_sampler(cfg.sampler, model.scheduler).name,
                                        "guidance_used": cfg.request(model).get("guidance_scale",
                                                                                f"{cfg.min_guidance}..{cfg.max_guidance}")}
    rev = {"sha": source.sha, "dirty": source.dirty}
    return {
        "schema": 2, "case": case_key(config | {"component_precision": cfg.component_precisions() or None},
                                      model.kind, backend),
        "machine": machine(), "config": config, "model": {"label": model.label, "kind": model.kind},
        "environment": environment() | {"git_sha": sha_label(rev), "git": rev, "source": str(source.root)},
        "engine": engine | {"backend": backend, "precision": cfg.precision}, "baseline": None, "speedup": None,
        "parity": None, "ab": {"side": source.label, "schedule": "interleaved base, head, base, ..."},
    }
