"""A request's text arguments (vidrt.prompts): diffusers' rules for prompts against given
text states, each broken rule a one-line error. The states' parity with diffusers is in
each family's tests (test_wan, test_ltx, test_cogvideox, test_t2v: test_prompt_embeds_*)."""

import numpy as np
import pytest
import torch

from vidrt.errors import VidrtError
from vidrt.prompts import PromptRequest

D = 8


def states(n=2, length=4):
    return torch.randn(n, length, D)


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt=None, negative_prompt=None), "prompt must be a string or a non-empty list of strings, not NoneType"),
    (dict(prompt="a", negative_prompt=None, prompt_embeds=states()), "pass prompt or prompt_embeds, not both"),
    (dict(prompt=None, negative_prompt="b", prompt_embeds=states(), negative_prompt_embeds=states()),
     "pass negative_prompt or negative_prompt_embeds, not both"),
    (dict(prompt=None, negative_prompt=None, prompt_embeds=torch.zeros(2, 4)),
     "prompt_embeds: this model takes text states of shape \\[prompts, tokens, 8\\], got \\[2, 4\\]"),
    (dict(prompt=None, negative_prompt=None, prompt_embeds=torch.full((1, 4, D), float("nan"))),
     "prompt_embeds: text states must be finite"),
    (dict(prompt=None, negative_prompt=None, prompt_embeds=torch.ones(1, 4, D, dtype=torch.int64)),
     "prompt_embeds: text states must be finite floating-point numbers"),
    (dict(prompt=["a", "b"], negative_prompt=None, negative_prompt_embeds=states(3)),
     "negative_prompt_embeds hold 3 prompts, the request 2"),
    (dict(prompt=["a", "b"], negative_prompt=["x"]), "1 negative prompts for 2 prompts"),
    (dict(prompt=None, negative_prompt=None, prompt_embeds=states(), prompt_attention_mask=torch.ones(2, 4)),
     "prompt_attention_mask: this model's denoiser takes no text mask"),
])
def test_bad_text_arguments_get_one_line_errors(kwargs, message):
    with pytest.raises(VidrtError, match=message) as err:
        PromptRequest.read(**kwargs, text_dim=D)
    assert "\n" not in str(err.value)


def test_masks_of_a_masked_family_are_checked():
    given = dict(prompt=None, negative_prompt=None, prompt_embeds=states(), text_dim=D, masked=True)
    with pytest.raises(VidrtError, match="expected shape \\[2, 4\\]"):
        PromptRequest.read(**given, prompt_attention_mask=torch.ones(2, 5))
    with pytest.raises(VidrtError, match="a mask holds 0 and 1 only"):
        PromptRequest.read(**given, prompt_attention_mask=torch.full((2, 4), 2))
    request = PromptRequest.read(**given, prompt_attention_mask=np.ones((2, 4), dtype=bool))
    assert request.positive_mask.dtype == torch.int64 and request.count == 2 and request.given_length() == 4


def test_only_the_texts_are_encoded_in_one_call():
    """The given half is used as given; the text half goes through the encoder, once."""
    given = states(2, 3)
    calls = []

    def encode(texts):
        calls.append(texts)
        return torch.zeros(len(texts), 3, D), None

    request = PromptRequest.read(None, ["x", "y"], given, text_dim=D)
    out, mask = request.states(encode, guided=True, per_prompt=2, device="cpu")
    assert calls == [["x", "y"]] and mask is None
    assert out.shape == (8, 3, D)
    assert torch.equal(out[:4], torch.zeros(4, 3, D))  # the negatives first, each twice
    assert torch.equal(out[4:], given.repeat_interleave(2, dim=0))
    calls.clear()
    request.states(encode, guided=False, per_prompt=1, device="cpu")
    assert calls == []  # no text to encode without guidance
