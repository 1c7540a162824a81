"""diffusers' own step-cache hooks on the baseline pipeline, with their decisions logged:
what ``run-bench --cache`` and the parity tests put vidrt's step cache against.

The hooks are diffusers' (``ModelMixin.enable_cache`` with FirstBlockCacheConfig or
MagCacheConfig); the log reads each call's decision from the hook's own state after the
first block has run (``should_compute``), so nothing here re-decides anything.
"""

from __future__ import annotations

HEAD_HOOKS = {"first-block": "fbc_leader_block_hook", "mag": "mag_cache_leader_block_hook"}


def diffusers_config(cache, steps: int):
    """diffusers' config for a vidrt.CacheConfig (MagCache's ``num_inference_steps``: the request's)."""
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig

    if cache.method == "first-block":
        return FirstBlockCacheConfig(threshold=cache.threshold)
    calibrate = cache.mag_ratios == "calibrate"
    return MagCacheConfig(threshold=cache.threshold, max_skip_steps=cache.max_skip_steps,
                          retention_ratio=cache.retention_ratio, num_inference_steps=steps,
                          mag_ratios=None if calibrate else list(cache.mag_ratios), calibrate=calibrate)


class DecisionLog:
    """Each denoiser's decisions, step by step, by cache context: the same shape as
    vidrt's ``timings.cache[name]["decisions"]``."""

    def __init__(self):
        self.calls: dict[str, list[tuple[str, bool]]] = {}
        self.handles: list = []  # the forward hooks that fill it

    def reset(self) -> None:
        self.calls = {}

    def by_step(self, name: str) -> list[dict[str, bool]]:
        steps: list[dict[str, bool]] = []
        for context, ran in self.calls.get(name, []):
            if not steps or context in steps[-1]:
                steps.append({})
            steps[-1][context] = ran
        return steps

    def summary(self) -> dict:
        out = {}
        for name in self.calls:
            flat = [ran for _, ran in self.calls[name]]
            out[name] = {"full": sum(flat), "skipped": len(flat) - sum(flat), "decisions": self.by_step(name)}
        return out


def enable(pipe, cache, steps: int, denoisers=("transformer", "transformer_2")) -> DecisionLog:
    """Turns diffusers' hook for ``cache`` on in each of ``pipe``'s transformers; returns
    the log their calls fill."""
    log = DecisionLog()
    for name in denoisers:
        model = getattr(pipe, name, None)
        if model is None:
            continue
        model.enable_cache(diffusers_config(cache, steps))
        first = (getattr(model, "blocks", None) or model.transformer_blocks)[0]
        hook = first._diffusers_hook.get_hook(HEAD_HOOKS[cache.method])

        def record(module, args, output, name=name, hook=hook):
            manager = hook.state_manager
            log.calls.setdefault(name, []).append((manager.context.name, bool(manager.get_state().should_compute)))

        log.handles.append(first.register_forward_hook(record))
    return log


def disable(pipe, log: DecisionLog, denoisers=("transformer", "transformer_2")) -> None:
    """Undoes ``enable``: diffusers' hooks and the log's."""
    for handle in log.handles:
        handle.remove()
    for name in denoisers:
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).disable_cache()
