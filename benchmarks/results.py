"""run-bench results as data: reading a result file (schema 1 or 2), and what identifies
a result (its case: model, engines and request; its machine).

Schema 2 added every timed run's value (``"samples"``), ``"case"`` and ``"machine"``. A
schema 1 file is read with its case rebuilt from its config and a machine known only by
CPU name and core count; its figures carry no samples, so comparisons against it give
ratios without intervals.
"""

from __future__ import annotations

import json
from pathlib import Path

from vidrt.errors import VidrtError

SCHEMAS = (1, 2)


def case_key(config: dict, family: str, backend: str) -> dict:
    """What makes two results comparable: the same model, engines and request. Results
    with different case keys measure different things (``vidrt compare`` refuses them)."""
    precisions = config.get("component_precision") or None
    if isinstance(precisions, str):  # schema 1 kept the flag's text
        precisions = dict(part.split("=", 1) for part in precisions.split(",") if "=" in part) or None
    return {
        "model": config["model"], "family": family, "backend": backend, "precision": config["precision"],
        "component_precisions": precisions, "batch": config["batch_size"],
        "frames": config["num_frames_used"], "height": config["height"], "width": config["width"],
        "steps": config["steps"], "sampler": config["sampler_used"], "guidance": config["guidance_used"],
        "baseline_precision": config["baseline_precision"],
    }


def load_result(path: str | Path) -> dict:
    """A run-bench JSON file as a schema 2 dict.

    Raises:
        VidrtError: the file is missing, not JSON, or not a run-bench result.
    """
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise VidrtError(f"{path}: no such file; pass a JSON file written by run-bench --output") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VidrtError(f"{path}: not readable as JSON ({e.__class__.__name__}); pass a file written by run-bench --output") from None
    return upgrade(result, str(path))


def upgrade(result, where: str) -> dict:
    """A parsed result (schema 1 or 2) as schema 2; ``where`` names it in errors."""
    if not isinstance(result, dict) or result.get("schema") not in SCHEMAS or "engine" not in result:
        raise VidrtError(f"{where}: not a run-bench result (schema {SCHEMAS[0]}..{SCHEMAS[-1]}); "
                         "pass a file written by run-bench --output")
    if result["schema"] == 1:
        env = result.get("environment", {})
        result = result | {
            "case": case_key(result["config"], result["model"]["kind"], result["engine"]["backend"]),
            # Schema 1 did not record the CPU's flags or memory: None is "unknown", which
            # comparisons skip.
            "machine": {"cpu": env.get("cpu"), "flags": None, "cores": env.get("cpu_count"), "ram_gib": None,
                        "gpu": env.get("gpu"), "gpu_driver": None, "id": None},
        }
    return result


def differences(base: dict, new: dict) -> list[str]:
    """How two results' case and machine differ, as "field: base vs new" lines (empty when
    they measure the same thing on the same machine). A field unknown on either side
    (None in a schema 1 file) is not a difference."""
    out = []
    for part in ("case", "machine"):
        a, b = base[part], new[part]
        for field in a.keys() | b.keys():
            if field == "id":
                continue
            x, y = a.get(field), b.get(field)
            if x is not None and y is not None and x != y:
                out.append(f"{part} {field}: {x} vs {y}")
    return sorted(out)


def git_of(result: dict) -> dict:
    """The result's {"sha", "dirty"} (sha None where it was not measured in a checkout)."""
    git = result.get("environment", {}).get("git") or {}
    return {"sha": git.get("sha"), "dirty": bool(git.get("dirty"))}


def describe_case(case: dict) -> str:
    """One line naming a case, e.g. "tiny-svd openvino fp32, 1x2x32x32, 2 euler steps"."""
    extra = f" ({case['component_precisions']})" if case.get("component_precisions") else ""
    return (f"{case['model']} {case['backend']} {case['precision']}{extra}, batch {case['batch']}, "
            f"{case['frames']}x{case['height']}x{case['width']}, {case['steps']} {case['sampler']} steps, "
            f"guidance {case['guidance']}, vs diffusers {case['baseline_precision']}")
