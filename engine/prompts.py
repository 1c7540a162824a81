"""A request's text side: prompts to encode or their states given (diffusers'
``prompt_embeds`` and ``negative_prompt_embeds``, with LTX-Video's attention masks), made
into the one [(2)·V, L, D] batch the denoiser takes.

Given states are used as diffusers uses them: as they are, never re-encoded or padded;
only the texts that come without states go through the text encoder, in one call.
diffusers runs both guidance halves in one batch (LTX, CogVideoX, ModelScope, AnimateDiff)
or in turn (Wan); vidrt always batches them, so both halves must have the same length.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .errors import VidrtError


@dataclasses.dataclass
class PromptRequest:
    """One request's prompts. Each half (``negative``, ``positive``) is either texts or
    given states [N, L, D] (with a [N, L] mask where the family masks its text)."""

    positive: list[str] | torch.Tensor
    negative: list[str] | torch.Tensor
    positive_mask: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None

    @classmethod
    def read(cls, prompt, negative_prompt, prompt_embeds=None, negative_prompt_embeds=None, *, text_dim: int,
             prompt_attention_mask=None, negative_prompt_attention_mask=None, masked: bool = False) -> "PromptRequest":
        """Checks a request's text arguments (diffusers' names and rules).

        Args:
            text_dim: the width D of the text states the denoiser takes.
            masked: the family passes a text attention mask to its denoiser (LTX-Video):
                given states then need their mask, as in diffusers.

        Raises:
            VidrtError: both or neither of a prompt and its states, states of the wrong
                shape, a missing or misshapen mask, or counts that differ.
        """
        if prompt_embeds is None:
            positive, positive_mask = as_prompts(prompt, "prompt"), None
        else:
            if prompt is not None:
                raise VidrtError("pass prompt or prompt_embeds, not both")
            positive = _states(prompt_embeds, "prompt_embeds", text_dim)
            positive_mask = _mask(prompt_attention_mask, "prompt_attention_mask", positive, masked)
        count = len(positive)
        if negative_prompt_embeds is None:
            negative, negative_mask = negatives_for(negative_prompt, count), None
        else:
            if negative_prompt is not None:
                raise VidrtError("pass negative_prompt or negative_prompt_embeds, not both")
            negative = _states(negative_prompt_embeds, "negative_prompt_embeds", text_dim)
            if len(negative) != count:
                raise VidrtError(f"negative_prompt_embeds hold {len(negative)} prompts, the request {count}; "
                                 "pass one negative per prompt")
            negative_mask = _mask(negative_prompt_attention_mask, "negative_prompt_attention_mask", negative, masked)
        return cls(positive, negative, positive_mask, negative_mask)

    @property
    def count(self) -> int:
        """How many prompts (each makes ``num_videos_per_prompt`` videos)."""
        return len(self.positive)

    def given_length(self) -> int | None:
        """The token count of the given states (None: every half is text)."""
        given = [h for h in (self.positive, self.negative) if isinstance(h, torch.Tensor)]
        return given[0].shape[1] if given else None

    def states(self, encode, guided: bool, per_prompt: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The denoiser's text states [(2)·V, L, D] and, for a masked family, masks [(2)·V, L]:
        negatives first when ``guided``, each prompt's videos adjacent.

        Args:
            encode: ``encode(texts) -> (states [N, L, D], mask [N, L] or None)``, one text
                encoder call; called only if some half is text.

        Raises:
            VidrtError: the two halves' lengths differ.
        """
        halves = [(self.negative, self.negative_mask, "negative")] if guided else []
        halves.append((self.positive, self.positive_mask, "positive"))
        texts = [t for half, _, _ in halves if isinstance(half, list) for t in half]
        encoded, encoded_mask = encode(texts) if texts else (None, None)
        states, masks, start = [], [], 0
        for half, mask, _ in halves:
            if isinstance(half, list):
                states.append(encoded[start : start + len(half)])
                masks.append(None if encoded_mask is None else encoded_mask[start : start + len(half)])
                start += len(half)
            else:
                states.append(half.to(device))
                masks.append(None if mask is None else mask.to(device))
        lengths = {s.shape[1] for s in states}
        if len(lengths) > 1:
            got = ", ".join(f"{name} {s.shape[1]}" for (_, _, name), s in zip(halves, states))
            raise VidrtError(f"the guidance halves' text states differ in length ({got} tokens); vidrt runs both in "
                             "one batch: give both as states of one length, or set max_sequence_length to the "
                             "given states' length")
        out = torch.cat(states).repeat_interleave(per_prompt, dim=0).contiguous()
        if masks[0] is None:
            return out, None
        return out, torch.cat(masks).repeat_interleave(per_prompt, dim=0).contiguous()


def _states(value, name: str, text_dim: int) -> torch.Tensor:
    """Given text states as float32 [N, L, D]."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor) or value.ndim != 3 or value.shape[0] < 1 or value.shape[1] < 1 or (
            value.shape[2] != text_dim):
        got = list(value.shape) if hasattr(value, "shape") else type(value).__name__
        raise VidrtError(f"{name}: this model takes text states of shape [prompts, tokens, {text_dim}], got {got}")
    if not torch.is_floating_point(value) or not bool(torch.isfinite(value).all()):
        raise VidrtError(f"{name}: text states must be finite floating-point numbers")
    return value.detach().to(torch.float32)


def _mask(value, name: str, states: torch.Tensor, masked: bool) -> torch.Tensor | None:
    """A given mask as int64 [N, L] of 0/1 (required where the family masks its text)."""
    if not masked:
        if value is not None:
            raise VidrtError(f"{name}: this model's denoiser takes no text mask; leave it out")
        return None
    if value is None:
        raise VidrtError(f"{name} is needed with its states (as in diffusers): pass the mask encode_prompt returned")
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(states.shape[:2]):
        got = list(value.shape) if hasattr(value, "shape") else type(value).__name__
        raise VidrtError(f"{name}: expected shape {list(states.shape[:2])} (one per token of the states), got {got}")
    if not bool(((value == 0) | (value == 1)).all()):
        raise VidrtError(f"{name}: a mask holds 0 and 1 only")
    return value.detach().to(torch.int64)


# Text lengths a denoiser runs at after vidrt cuts the padding diffusers attends for
# nothing (LTX-Video's masked tokens, Wan's repeated zeros) are rounded up to this, so
# requests of similar prompts share engine shapes (OpenVINO's per-shape kernels, TensorRT's
# profiles, the loop's step buffers).
TEXT_LENGTH_MULTIPLE = 8


def cut_text_length(tokens: int, limit: int) -> int:
    """``tokens`` rounded up to TEXT_LENGTH_MULTIPLE, at most ``limit``."""
    return min(-(-tokens // TEXT_LENGTH_MULTIPLE) * TEXT_LENGTH_MULTIPLE, limit)


def as_prompts(prompt, what: str) -> list[str]:
    """``prompt`` as a non-empty list of strings, else a VidrtError naming ``what``."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise VidrtError(f"{what} must be a string or a non-empty list of strings, not {type(prompt).__name__}")


def negatives_for(negative_prompt, count: int) -> list[str]:
    """One negative prompt per prompt ("" when none is given, as diffusers does)."""
    if negative_prompt is None:
        return [""] * count
    if isinstance(negative_prompt, str):
        return [negative_prompt] * count
    negatives = as_prompts(negative_prompt, "negative_prompt")
    if len(negatives) != count:
        raise VidrtError(f"{len(negatives)} negative prompts for {count} prompts; pass one per prompt, or a single string")
    return negatives
