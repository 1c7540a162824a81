"""Exportable graphs of the LTX-Video family's components (diffusers LTXPipeline).

diffusers' LTX transformer takes packed latents [B, F*h*w, C] and the latent grid's
sizes as Python numbers, so a trace would freeze them. Here the transformer takes
[B, C, F, h, w] latents, packs them itself, and builds its rotary table from the
input's shape and a ``rope_interpolation_scale`` input (LTXPipeline's: VAE temporal
ratio / frame rate, the spatial ratio twice) with diffusers' arithmetic; ``torch.nn.RMSNorm`` and the rotary embedding's
unbind/stack are replaced as for Wan (export/wan_graphs.py). The tests compare each
graph with diffusers' own modules.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from vidrt.split import ALL_STAGES

from .split_graphs import DenoiserStages, stage_graph
from .wan_graphs import _rotary, exportable_transformer


class LTXAttentionGraph:
    """LTXVideoAttnProcessor: projections, q/k RMS norms across heads, rotary embedding on
    the whole inner dim (self-attention), SDPA with an additive text mask (cross-attention)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        q, k = attn.norm_q(q), attn.norm_k(k)
        if image_rotary_emb is not None:
            rotate = _rotary(*image_rotary_emb, torch.float32)
            q, k = rotate(q), rotate(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))
        mask = attention_mask[:, None] if attention_mask is not None else None  # [B, 1, 1, L] over the heads
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2, 3)))


def ltx_rotary(rope, frames, height, width, scale, device):
    """diffusers' LTXVideoRotaryPosEmbed over a frames x height x width latent grid, the
    sizes traced from the input's shape: coordinates scaled as its
    ``_prepare_video_coords`` scales them (by ``scale``, the [3] rope_interpolation_scale),
    frequencies as its ``forward`` makes them. Returns its (cos, sin) tables [1, N, dim]
    (the attention rotates by ``wan_graphs._rotary``)."""
    f = torch.arange(frames, dtype=torch.float32, device=device) * scale[0] * rope.patch_size_t / rope.base_num_frames
    h = torch.arange(height, dtype=torch.float32, device=device) * scale[1] * rope.patch_size / rope.base_height
    w = torch.arange(width, dtype=torch.float32, device=device) * scale[2] * rope.patch_size / rope.base_width
    grid = torch.stack(torch.meshgrid(f, h, w, indexing="ij"), dim=-1).flatten(0, 2)  # [N, 3]
    freqs = rope.theta ** torch.linspace(math.log(1.0, rope.theta), math.log(rope.theta, rope.theta), rope.dim // 6,
                                         dtype=torch.float32)
    freqs = (freqs * math.pi / 2.0) * (grid.unsqueeze(-1) * 2 - 1)  # [N, 3, dim // 6]
    freqs = freqs.transpose(-1, -2).flatten(1)
    cos = freqs.cos().unsqueeze(-1).expand(-1, -1, 2).flatten(1)  # each frequency twice, as repeat_interleave
    sin = freqs.sin().unsqueeze(-1).expand(-1, -1, 2).flatten(1)
    pad = rope.dim % 6
    if pad:
        cos = torch.cat([torch.ones_like(cos[:, :pad]), cos], dim=-1)
        sin = torch.cat([torch.zeros_like(sin[:, :pad]), sin], dim=-1)
    return cos[None], sin[None]


class LTXTransformerGraph(DenoiserStages):
    """LTXVideoTransformer3DModel on [B, C, F, h, w] latents: one timestep for the whole
    batch, [B, L, D] text states and their [B, L] mask, LTXPipeline's [3]
    rope_interpolation_scale, and a [F] ``conditioning_mask``, 1 on latent frames that
    condition the video (int64; LTXImageToVideoPipeline: frame 0, the image's), 0 elsewhere
    (text to video: all 0). As the image-to-video pipeline does, conditioning tokens see
    timestep ``t * (1 - mask)`` = 0; their prediction is returned as diffusers computes it
    (its guidance rescale takes every token's), and the pipeline holds those frames.

    Written as the three parts step caching cuts it into (export/split_graphs.py): streams
    (video tokens), context (projected text, per-token temb, the additive text mask, rotary
    cos and sin), final (the embedded timestep)."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = exportable_transformer(transformer, LTXAttentionGraph)
        self.blocks = self.transformer.transformer_blocks
        cfg = transformer.config
        if cfg.patch_size != 1 or cfg.patch_size_t != 1:
            raise NotImplementedError("vidrt exports LTX transformers with patch sizes 1 (every released LTX-Video)")

    def _time_embeddings(self, timestep, conditioning_mask, tokens_per_frame):
        """Per-token (temb, embedded timestep) [1, N, .]: the time embedding of t for free
        tokens and of 0 for conditioning ones, each computed once and gathered (diffusers
        embeds every token's timestep; the rows are the same)."""
        t = self.transformer
        pair = torch.cat([timestep.reshape(1), torch.zeros_like(timestep.reshape(1))])  # [t, 0]
        temb, embedded = t.time_embed(pair, batch_size=2, hidden_dtype=torch.float32)
        pick = conditioning_mask[:, None].expand(-1, tokens_per_frame).flatten()  # [N]: 1 picks the 0-timestep row
        return temb.index_select(0, pick)[None], embedded.index_select(0, pick)[None]

    def embed(self, sample, timestep, encoder_hidden_states, encoder_attention_mask, rope_interpolation_scale,
              conditioning_mask):
        t = self.transformer
        b, c, frames, height, width = sample.shape
        x = sample.flatten(2).transpose(1, 2)  # LTXPipeline._pack_latents at patch size 1: [B, F*h*w, C]
        cos, sin = ltx_rotary(t.rope, frames, height, width, rope_interpolation_scale, sample.device)
        mask = ((1 - encoder_attention_mask.to(x.dtype)) * -10000.0).unsqueeze(1)  # [B, 1, L], as diffusers
        x = t.proj_in(x)
        temb, embedded = self._time_embeddings(timestep, conditioning_mask, height * width)
        text = t.caption_projection(encoder_hidden_states).view(b, -1, x.size(-1))
        return (x,), (text, temb, mask, cos, sin), (embedded,)

    def run_block(self, block, streams, context):
        text, temb, mask, cos, sin = context
        x = streams[0]
        return (block(hidden_states=x, encoder_hidden_states=text, temb=temb.expand(x.shape[0], -1, -1),
                      image_rotary_emb=(cos, sin), encoder_attention_mask=mask),)

    def finish(self, sample, streams, final):
        t = self.transformer
        _, _, frames, height, width = sample.shape
        (embedded,) = final
        shift_scale = t.scale_shift_table[None, None] + embedded[:, :, None]
        x = t.norm_out(streams[0]) * (1 + shift_scale[:, :, 1]) + shift_scale[:, :, 0]
        return t.proj_out(x).transpose(1, 2).unflatten(2, (frames, height, width))


class LTXVaeEncoderGraph(torch.nn.Module):
    """AutoencoderKLLTXVideo.encode of images [B, 3, H, W] in [-1, 1] as one-frame clips ->
    the latent distribution's mean and std, both normalised as LTXImageToVideoPipeline
    normalises its sample ((z - latents_mean) * scaling_factor / latents_std), so
    ``mean + std * noise`` is the normalised sample diffusers draws."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, image):
        with _positive_movedim():
            dist = self.vae.encode(image.unsqueeze(2)).latent_dist
        mean = self.vae.latents_mean.view(1, -1, 1, 1, 1)
        std = self.vae.latents_std.view(1, -1, 1, 1, 1)
        return (dist.mean - mean) * self.scaling_factor / std, dist.std * self.scaling_factor / std


@contextlib.contextmanager
def _positive_movedim():
    """``Tensor.movedim`` with its axes made non-negative: the LTX VAE's ``movedim(-1, 1)``
    otherwise exports to a Transpose with a negative axis in ``perm``, which ONNX forbids
    (the same permutation either way)."""
    movedim = torch.Tensor.movedim

    def positive(x, source, destination):
        return movedim(x, source % x.dim(), destination % x.dim())

    torch.Tensor.movedim = positive
    try:
        yield
    finally:
        torch.Tensor.movedim = movedim


class LTXVaeDecoderGraph(torch.nn.Module):
    """LTXPipeline's decode of a whole latent clip [B, C, F, h, w]: denormalised with the
    VAE's latents_mean/latents_std buffers and scaling_factor, then, for a
    timestep-conditioned decoder, blended with ``noise`` at the [B] ``noise_scale`` and
    decoded at the [B] decode ``timestep``; frames clamped to [-1, 1].

    Inputs in the order of vidrt.families.ltx.model.vae_decoder_spec: latents, then
    (timestep-conditioned) timestep, noise, noise_scale, then (a decoder that injects
    noise, LTX-Video 0.9.1) ``injected_noise``: every [H, W] map the decoder's resnets
    draw with torch.randn, flattened and concatenated in draw order; each draw takes the
    next H*W values."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.timestep_conditioning = bool(vae.config.timestep_conditioning)
        self.injects_noise = any(vae.config.decoder_inject_noise)
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latents, *conditioning):
        given = iter(conditioning)
        timestep = noise = noise_scale = None
        if self.timestep_conditioning:
            timestep, noise, noise_scale = next(given), next(given), next(given)
        mean = self.vae.latents_mean.view(1, -1, 1, 1, 1)
        std = self.vae.latents_std.view(1, -1, 1, 1, 1)
        z = latents * std / self.scaling_factor + mean
        if self.timestep_conditioning:
            scale = noise_scale[:, None, None, None, None]
            z = (1 - scale) * z + scale * noise
        draws = _drawn_from(next(given)) if self.injects_noise else contextlib.nullcontext()
        with _positive_movedim(), draws:
            frames = self.vae.decoder(z, timestep)
        return frames.clamp(-1.0, 1.0)


@contextlib.contextmanager
def _drawn_from(flat):
    """``torch.randn(shape, ...)`` returning the next prod(shape) values of ``flat`` in
    that shape (the decoder's injected noise, given as an input instead of drawn)."""
    randn, taken = torch.randn, [0]

    def next_values(shape, *args, generator=None, device=None, dtype=None, **kwargs):
        count = shape[0] * shape[1]
        values = flat[taken[0] : taken[0] + count]
        taken[0] = taken[0] + count
        return values.reshape(shape[0], shape[1]).to(dtype or flat.dtype)

    torch.randn = next_values
    try:
        yield
    finally:
        torch.randn = randn


# (component, torch module class) -> graph; the T5 text encoder's is Wan's (export/wan_graphs.py
# UMT5Graph, without a mask: LTXPipeline passes none)
LTX_GRAPHS = {
    ("transformer", "LTXVideoTransformer3DModel"): LTXTransformerGraph,
    **{(f"transformer_{stage}", "LTXVideoTransformer3DModel"): (lambda m, stage=stage: stage_graph(stage, LTXTransformerGraph(m), 1))
       for stage in ALL_STAGES},
    ("vae_encoder", "AutoencoderKLLTXVideo"): LTXVaeEncoderGraph,
    ("vae_decoder", "AutoencoderKLLTXVideo"): LTXVaeDecoderGraph,
}
