"""Exportable graphs of the CogVideoX family's components (diffusers CogVideoXPipeline and
CogVideoXImageToVideoPipeline).

Three things in diffusers' CogVideoX code do not trace to ONNX as they are, and each is
replaced here by the same arithmetic: the 3D sin-cos position table (recomputed in
Python when the input's size differs from the configured one; here a function of the
input's shape), the rotary embedding's in-place writes into a slice of q and k (here the
video tokens rotated and concatenated after the text ones, with Wan's pair swap), and
the VAE decoder's per-convolution caches, a nested dict of Python state (here graph
inputs and outputs). The tests compare each graph with diffusers' own modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vidrt.split import ALL_STAGES

from .split_graphs import DenoiserStages, stage_graph
from .wan_graphs import _rotary


class CogVideoXAttentionGraph:
    """CogVideoXAttnProcessor2_0: joint attention over [text; video] tokens, per-head
    q/k layer norms, the rotary embedding on the video tokens only."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        text = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        q, k, v = (proj(x).unflatten(2, (attn.heads, -1)).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            rotate = _rotary(*image_rotary_emb, q.dtype)
            q = torch.cat([q[:, :, :text], rotate(q[:, :, text:])], dim=2)
            k = torch.cat([k[:, :, :text], rotate(k[:, :, text:])], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2, 3)))
        return out[:, text:], out[:, :text]


def sincos_positions(embed, frames, height, width, device) -> torch.Tensor:
    """CogVideoXPatchEmbed's 3D sin-cos table of the video tokens [F*h*w, D] for a
    frames x height x width token grid traced from the input's shape, with the arithmetic
    of diffusers' get_3d_sincos_pos_embed (3/4 of the channels spatial, 1/4 temporal)."""
    from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid, get_2d_sincos_pos_embed_from_grid

    dim = embed.embed_dim
    grid_h = torch.arange(height, device=device, dtype=torch.float32) / embed.spatial_interpolation_scale
    grid_w = torch.arange(width, device=device, dtype=torch.float32) / embed.spatial_interpolation_scale
    grid = torch.stack(torch.meshgrid(grid_w, grid_h, indexing="xy"), dim=0).unsqueeze(1)  # [2, 1, h, w]
    spatial = get_2d_sincos_pos_embed_from_grid(3 * dim // 4, grid, output_type="pt")  # [h*w, 3D/4]
    grid_t = torch.arange(frames, device=device, dtype=torch.float32) / embed.temporal_interpolation_scale
    temporal = get_1d_sincos_pos_embed_from_grid(dim // 4, grid_t, output_type="pt")  # [F, D/4]
    tokens = spatial.shape[0]
    table = torch.cat([temporal[:, None].expand(-1, tokens, -1),
                       spatial[None].expand(temporal.shape[0], -1, -1)], dim=-1)
    return table.flatten(0, 1).to(torch.float32)


class CogVideoXTransformerGraph(DenoiserStages):
    """CogVideoXTransformer3DModel on [B, F, C, h, w] latents with one timestep for the
    whole batch (expanded here, as the pipelines do) and [B, L, D] text states; for image
    to video the [B, C, h, w] image latent (frame 0 of the appended channels, zeros after,
    as CogVideoXImageToVideoPipeline pads it); for rotary models the cos and sin tables.

    Written as the three parts step caching cuts it into (export/split_graphs.py): streams
    (video tokens, text tokens: each block updates both), context (the time embedding; the
    rotary tables), final (the time embedding again, for the output norm)."""

    def __init__(self, transformer):
        super().__init__()
        cfg = transformer.config
        self.transformer = transformer
        self.blocks = transformer.transformer_blocks
        for module in transformer.modules():
            if hasattr(module, "set_processor") and hasattr(module, "norm_q"):
                module.set_processor(CogVideoXAttentionGraph())
        self.image_to_video = cfg.in_channels == 2 * cfg.out_channels
        self.rotary = bool(cfg.use_rotary_positional_embeddings)

    def embed(self, sample, timestep, encoder_hidden_states, *extra):
        t = self.transformer
        extra = list(extra)
        image = extra.pop(0) if self.image_to_video else None
        rotary = (extra[0], extra[1]) if self.rotary else ()
        b = sample.shape[0]
        x = sample
        if image is not None:
            pad = torch.zeros_like(sample[:, 1:])
            x = torch.cat([sample, torch.cat([image[:, None], pad], dim=1)], dim=2)
        emb = t.time_embedding(t.time_proj(timestep.expand(b)).to(x.dtype), None)
        if t.ofs_embedding is not None:  # CogVideoX 1.5 image to video: diffusers' pipeline feeds ofs 2.0
            emb = emb + t.ofs_embedding(t.ofs_proj(torch.full((1,), 2.0, device=x.device)).to(x.dtype))
        hidden, text = self._embed(encoder_hidden_states, x)
        return (hidden, text), (emb, *rotary), (emb,)

    def run_block(self, block, streams, context):
        emb, *rotary = context
        return block(hidden_states=streams[0], encoder_hidden_states=streams[1], temb=emb,
                     image_rotary_emb=tuple(rotary) if rotary else None)

    def finish(self, sample, streams, final):
        t = self.transformer
        b, frames, _, height, width = sample.shape
        hidden = t.proj_out(t.norm_out(t.norm_final(streams[0]), temb=final[0]))
        p, pt = t.config.patch_size, t.config.patch_size_t
        if pt is None:
            out = hidden.reshape(b, frames, height // p, width // p, -1, p, p)
            return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
        out = hidden.reshape(b, frames // pt, height // p, width // p, -1, pt, p, p)
        return out.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)

    def _embed(self, encoder_hidden_states, x):
        """CogVideoXPatchEmbed, split back into (video tokens, text tokens): the position
        table (learned, at the configured size only; else sin-cos of the input's grid) adds
        to both, its text rows being zeros in the sin-cos one."""
        pe = self.transformer.patch_embed
        if pe.patch_size_t is not None:  # CogVideoX 1.5: a linear over pairs of frames, rotary positions only
            joint = pe(encoder_hidden_states, x)
            length = encoder_hidden_states.shape[1]
            return joint[:, length:], joint[:, :length]
        b, frames, c, height, width = x.shape
        text = pe.text_proj(encoder_hidden_states)
        video = pe.proj(x.reshape(-1, c, height, width))
        video = video.view(b, frames, *video.shape[1:]).flatten(3).transpose(2, 3).flatten(1, 2)
        if pe.use_learned_positional_embeddings:
            length = text.shape[1]
            table = pe.pos_embedding.to(text.dtype)
            return video + table[:, length:], text + table[:, :length]
        if pe.use_positional_embeddings:
            p = pe.patch_size
            video = video + sincos_positions(pe, frames, height // p, width // p, x.device)[None].to(video.dtype)
        return video, text


class CogVideoXVaeEncoderGraph(torch.nn.Module):
    """AutoencoderKLCogVideoX.encode of images [B, 3, H, W] in [-1, 1] as one-frame clips ->
    the latent distribution's mean and std, both scaled as the pipeline scales its sample, so
    ``mean + std * noise`` is the scaled sample CogVideoXImageToVideoPipeline draws."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        factor = float(vae.config.scaling_factor)
        # CogVideoX 1.5 was trained on latents divided by the factor (diffusers' pipeline says so)
        self.scaling_factor = 1 / factor if vae.config.invert_scale_latents else factor

    def forward(self, image):
        dist = self.vae.encode(image.unsqueeze(2)).latent_dist
        return dist.mean * self.scaling_factor, dist.std * self.scaling_factor


class _CachedConvs:
    """Routes the caches of the decoder's causal convolutions of kernel > 1 in time through
    lists instead of diffusers' nested dicts: each convolution reads its cache from
    ``given`` and leaves its last frames in ``kept``, by its place in module order. Where
    there is no cache (``given`` None, or the [1] tensor ``fresh`` is 1: a clip's first
    chunk) it pads with copies of its input's first frame, as diffusers does."""

    def __init__(self, decoder):
        from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXCausalConv3d

        self.convs = [m for m in decoder.modules() if isinstance(m, CogVideoXCausalConv3d)
                      and m.time_kernel_size > 1 and m.pad_mode != "replicate"]
        self.given: list | None = None
        self.fresh: torch.Tensor | None = None
        self.kept: list = []
        for i, conv in enumerate(self.convs):
            conv.forward = self._forward(i, conv)  # this instance only

    def _forward(self, i, conv):
        def forward(inputs, conv_cache=None):
            pad = conv.time_kernel_size - 1
            first = inputs[:, :, :1].expand(-1, -1, pad, -1, -1)
            cache = first if self.given is None else torch.where(self.fresh, first, self.given[i])
            x = torch.cat([cache, inputs], dim=2)
            self.kept[i] = x[:, :, -pad:]
            return conv.conv(x), None

        return forward

    def run(self, decoder, z, given, fresh=None):
        self.given, self.kept = given, [None] * len(self.convs)
        self.fresh = None if fresh is None else fresh.bool().view(1, 1, 1, 1, 1)
        frames, _ = decoder(z)
        return frames, self.kept


class CogVideoXVaeDecoderGraph(torch.nn.Module):
    """The first decode chunk: latents [B, 3, C, h, w] in the loop's layout, 1/scaling_factor
    folded in -> (frames [B, 3, 2k+1, H, W] in [-1, 1], every cache)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.inv_scale = 1 / vae.config.scaling_factor
        self.caches = _CachedConvs(vae.decoder)

    def _decode(self, latents, given, fresh=None):
        z = self.inv_scale * latents.permute(0, 2, 1, 3, 4)
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        frames, kept = self.caches.run(self.vae.decoder, z, given, fresh)
        return (frames, *kept)

    def forward(self, latents):
        return self._decode(latents, None)


class CogVideoXVaeChunkGraph(CogVideoXVaeDecoderGraph):
    """A pair of latent frames, the caches and ``first`` ([1] int64: 1 for the first chunk
    of an even latent count, whose caches are ignored) -> (frames [B, 3, 2k, H, W], the
    caches updated)."""

    def forward(self, latents, first, *caches):
        return self._decode(latents, list(caches), first)


# (component, torch module class) -> graph; the T5 text encoder's is Wan's (UMT5Graph, no mask).
COGVIDEOX_GRAPHS = {
    ("transformer", "CogVideoXTransformer3DModel"): CogVideoXTransformerGraph,
    **{(f"transformer_{stage}", "CogVideoXTransformer3DModel"):
       (lambda m, stage=stage: stage_graph(stage, CogVideoXTransformerGraph(m), 2)) for stage in ALL_STAGES},
    ("vae_encoder", "AutoencoderKLCogVideoX"): CogVideoXVaeEncoderGraph,
    ("vae_decoder", "AutoencoderKLCogVideoX"): CogVideoXVaeDecoderGraph,
    ("vae_decoder_chunk", "AutoencoderKLCogVideoX"): CogVideoXVaeChunkGraph,
}
