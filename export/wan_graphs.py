"""Exportable graphs of the Wan family's components (diffusers WanPipeline).

Three things in diffusers' Wan code do not trace to ONNX as they are, and each is
replaced here by the same arithmetic: ``torch.nn.RMSNorm`` (no ONNX op at opset 17), the
rotary embedding's strided in-place writes (they trace to an Expand that breaks at a
second shape), and the VAE's frame-by-frame decode through per-layer caches (Python
lists, not tensors). The tests compare each graph with diffusers' own modules.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


class RMSNormGraph(torch.nn.Module):
    """torch.nn.RMSNorm over the last axis, written out: x / rms(x) * weight."""

    def __init__(self, norm: torch.nn.RMSNorm):
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps

    def forward(self, x):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * self.weight if self.weight is not None else y


def _rotate(x, cos, sin):
    """diffusers' Wan rotary embedding on interleaved pairs, built by stacking the pairs
    instead of writing strided slices of an empty tensor."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2].to(x.dtype), sin[..., 1::2].to(x.dtype)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)


class WanAttentionGraph:
    """WanAttnProcessor for text to video (no image context): projections, q/k norms,
    rotary embedding, scaled-dot-product attention, output projection."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if attn.add_k_proj is not None:
            raise NotImplementedError("Wan image-to-video attention (add_k_proj) is not exported by vidrt")
        q, k, v = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))
        if rotary_emb is not None:
            q, k = _rotate(q, *rotary_emb), _rotate(k, *rotary_emb)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attention_mask)
        return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2, 3)))


def exportable_transformer(transformer: torch.nn.Module) -> torch.nn.Module:
    """Gives a WanTransformer3DModel the graph-friendly RMSNorm and attention, in place."""
    for parent in list(transformer.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.RMSNorm:
                setattr(parent, name, RMSNormGraph(child))
    for module in transformer.modules():
        if hasattr(module, "set_processor") and hasattr(module, "norm_q"):
            module.set_processor(WanAttentionGraph())
    return transformer


class WanTransformerGraph(torch.nn.Module):
    """WanTransformer3DModel on [B, C, F, h, w] latents, one timestep for the whole
    batch (expanded here, as WanPipeline does) and [B, L, D] text states."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = exportable_transformer(transformer)

    def forward(self, sample, timestep, encoder_hidden_states):
        t = timestep.expand(sample.shape[0])
        return self.transformer(sample, t, encoder_hidden_states, return_dict=False)[0]


class UMT5Graph(torch.nn.Module):
    """UMT5 (or T5) encoder: token ids and attention mask -> last hidden states."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids, attention_mask):
        return self.text_encoder(input_ids, attention_mask).last_hidden_state


def _whole_clip_upsample3d(self, x, feat_cache=None, feat_idx=(0,)):
    """WanResample('upsample3d') over a whole latent clip. diffusers decodes one latent
    frame at a time: the first passes the temporal convolution by (its cache says "Rep"),
    the second sees zeros before it, later ones their predecessors. Over the clip that is
    the causal convolution of [zeros, frames 1..] with frame 0's output dropped; frame 0
    itself is not doubled in time. Zeros stand in for frame 0 so no tensor is ever
    0 frames long (ONNX Reshape reads a 0 as "keep this axis")."""
    b, c, t, h, w = x.shape
    first = x[:, :, :1]
    y = self.time_conv(torch.cat([torch.zeros_like(first), x[:, :, 1:]], 2))
    y = y.reshape(b, 2, c, t, h, w)
    y = torch.stack((y[:, 0], y[:, 1]), 3).reshape(b, c, 2 * t, h, w)[:, :, 2:]
    x = torch.cat([first, y], 2)
    t = x.shape[2]
    x = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return x.view(b, t, x.size(1), x.size(2), x.size(3)).permute(0, 2, 1, 3, 4)


class WanVaeDecoderGraph(torch.nn.Module):
    """AutoencoderKLWan's decode of a whole latent clip: un-normalise with the config's
    latents_mean/latents_std (as WanPipeline does before decoding), post-quant conv, the
    decoder with no feature cache (every causal convolution pads with zeros in front, as
    the first chunk does), clamp to [-1, 1]."""

    def __init__(self, vae):
        super().__init__()
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanResample, WanUpsample

        self.vae = vae
        z = vae.config.z_dim
        self.register_buffer("mean", torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1))
        self.register_buffer("std", torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1))
        for m in vae.decoder.modules():
            if isinstance(m, WanResample) and m.mode in ("upsample2d", "upsample3d"):
                if isinstance(m.resample[0], WanUpsample):  # nearest-exact at 2x is nearest
                    m.resample[0] = torch.nn.Upsample(scale_factor=2.0, mode="nearest")
                if m.mode == "upsample3d":
                    m.forward = types.MethodType(_whole_clip_upsample3d, m)

    def forward(self, latents):
        z = latents * self.std + self.mean
        return self.vae.decoder(self.vae.post_quant_conv(z)).clamp(-1.0, 1.0)


# (component, torch module class) -> graph
WAN_GRAPHS = {
    ("text_encoder", "UMT5EncoderModel"): UMT5Graph,
    ("text_encoder", "T5EncoderModel"): UMT5Graph,
    ("transformer", "WanTransformer3DModel"): WanTransformerGraph,
    ("transformer_2", "WanTransformer3DModel"): WanTransformerGraph,
    ("vae_decoder", "AutoencoderKLWan"): WanVaeDecoderGraph,
}
