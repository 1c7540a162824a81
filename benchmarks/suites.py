"""Named benchmark suites (benchmarks/suites.toml) and the performance gate CI runs.

``vidrt bench-suite NAME`` runs each case of a suite through run-bench and records it in
the history. ``vidrt bench-suite ci --gate`` instead runs each case as an A/B between the
parent commit and the working tree (vidrt bench-ab); where the checkout has no parent
commit (a shallow clone), against the newest recorded run of the same case on this
machine. The gate fails only on a significant slowdown of at least GATE_THRESHOLD: CI
machines are shared, and a gate that cries wolf is switched off.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from vidrt.errors import VidrtError

SUITES = Path(__file__).with_name("suites.toml")
GATE_THRESHOLD = 50.0  # percent: fail on >= 1.5x


def _toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise VidrtError(f"{path}: no such suites file") from None
    except tomllib.TOMLDecodeError as e:
        raise VidrtError(f"{path}: not valid TOML ({e})") from None


def suites(path: str | Path | None = None) -> dict[str, dict]:
    """Every suite of the file: name -> {"description", "cases": [dict, ...]}."""
    return _toml(Path(path) if path else SUITES)


def suite_configs(name: str, cls, path: str | Path | None = None, **overrides) -> list:
    """The cases of suite ``name`` as ``cls`` configs (BenchConfig or ABConfig), each a
    scenario expanded and ``overrides`` (flags given on the command line) applied.

    Raises:
        VidrtError: no such suite, or a case with a key run-bench has no flag for.
    """
    from .scenarios import scenario

    every = suites(path)
    if name not in every:
        raise VidrtError(f"no benchmark suite {name!r}; choose one of {', '.join(every)} (vidrt bench-suite --list)")
    fields = {f.name for f in dataclasses.fields(cls)}
    out = []
    for i, case in enumerate(every[name].get("cases", [])):
        case = dict(case)
        if "scenario" in case:
            case = scenario(case["scenario"]) | case
        unknown = sorted(set(case) - fields)
        if unknown:
            raise VidrtError(f"suite {name!r}, case {i + 1}: {', '.join(unknown)} is no run-bench option; "
                             f"fix {path or SUITES}")
        out.append(cls(**(case | {k: v for k, v in overrides.items() if v is not None})))
    return out


def describe(cfg) -> str:
    """One line naming a case."""
    what = (f"scenario {cfg.scenario}: " if cfg.scenario else "") + f"{cfg.model} {cfg.height}x{cfg.width}"
    return f"{what}, {cfg.num_frames or 'default'} frames, {cfg.steps} steps, {cfg.backend} {cfg.precision}"


def last_recorded(result_case: dict, machine_id: str, directory, exclude_sha: str | None) -> dict | None:
    """The newest history record of this case on this machine, not of ``exclude_sha``."""
    from .history import records
    from .results import git_of

    for record in reversed(records(directory, machine_id)):
        if record["case"] == result_case and git_of(record)["sha"] != exclude_sha:
            return record
    return None
