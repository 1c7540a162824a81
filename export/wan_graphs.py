"""Exportable graphs of the Wan family's components (diffusers WanPipeline).

Three things in diffusers' Wan code do not trace to ONNX as they are, and each is
replaced here by the same arithmetic: ``torch.nn.RMSNorm`` (no ONNX op at opset 17), the
rotary embedding's strided in-place writes (they trace to an Expand that breaks at a
second shape; here a Gather of the swapped pairs), and the VAE's per-layer caches, a
Python list (here graph inputs and outputs). The tests compare each graph with
diffusers' own modules.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from vidrt.split import ALL_STAGES

from .split_graphs import DenoiserStages, stage_graph


class RMSNormGraph(torch.nn.Module):
    """torch.nn.RMSNorm over the last axis, written out: x / rms(x) * weight."""

    def __init__(self, norm: torch.nn.RMSNorm):
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps

    def forward(self, x):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * self.weight if self.weight is not None else y


def _rotary(cos, sin, dtype):
    """diffusers' Wan rotary embedding on interleaved pairs (x[2i], x[2i+1]) as a function
    ``x -> x * cos + swap(x) * sin``: each pair swapped by one Gather, the sign folded into
    sin once for q and k. cos and sin hold each frequency twice, as diffusers'
    WanRotaryPosEmbed makes them (repeat_interleave_real). The products and sums are those
    of diffusers' strided writes (bit-equal in torch). An unbind/stack form exports to a
    Split and a Concat that cost OpenVINO 3.5x more (82 against 24 ms for one layer's q
    and k at 1280 tokens, fp32)."""
    d = cos.shape[-1]
    swap = torch.arange(d).view(-1, 2).flip(-1).flatten()  # 1, 0, 3, 2, ...: the head dim is a weight shape
    cos, sin = cos.to(dtype), sin.to(dtype) * torch.tensor([-1.0, 1.0], dtype=dtype).repeat(d // 2)
    return lambda x: x * cos + x.index_select(-1, swap) * sin


class WanAttentionGraph:
    """WanAttnProcessor: projections, q/k norms, rotary embedding, scaled-dot-product
    attention (cross-attention with the logit bias ``text_bias`` [B, 1, 1, L] of the call
    being traced, set by ``cross_attention_bias``: diffusers' blocks pass cross-attention
    no mask), output projection. Wan 2.1 I2V's cross-attention (``add_k_proj``) also
    attends the image states, the first ``image_tokens`` of the context, with their own
    keys and values (``added_kv_proj_dim``; without them, with the text's), and adds the
    two results, as diffusers does. diffusers finds the image states as all but the last
    512 tokens (WanImageToVideoPipeline's default text length), vidrt by their count, so
    the text may be shorter."""

    text_bias = None
    image_tokens = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import _get_added_kv_projections, _get_qkv_projections

        image = None
        if encoder_hidden_states is not None and self.text_bias is not None:
            attention_mask = self.text_bias
        if attn.add_k_proj is not None:
            image = encoder_hidden_states[:, : self.image_tokens]
            encoder_hidden_states = encoder_hidden_states[:, self.image_tokens :]
        elif self.image_tokens and attention_mask is not None:  # no added projections: the image states are
            attention_mask = F.pad(attention_mask, (self.image_tokens, 0))  # attended as more text, unbiased
        q, k, v = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))
        if rotary_emb is not None:
            rotate = _rotary(*rotary_emb, q.dtype)
            q, k = rotate(q), rotate(k)
        q = q.transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=attention_mask)
        if image is not None:
            k_img, v_img = _get_added_kv_projections(attn, image)
            k_img = attn.norm_added_k(k_img)
            k_img, v_img = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (k_img, v_img))
            out = out + F.scaled_dot_product_attention(q, k_img, v_img)
        return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2, 3)))


@contextlib.contextmanager
def cross_attention_bias(transformer: torch.nn.Module, bias, image_tokens: int = 0):
    """Hands ``bias`` (and the image states' token count, Wan 2.1 I2V) to every
    WanAttentionGraph of ``transformer`` for one call (set on the processors at call
    time: graphs built over the same module share them)."""
    processors = [m.processor for m in transformer.modules() if isinstance(getattr(m, "processor", None), WanAttentionGraph)]
    for p in processors:
        p.text_bias, p.image_tokens = bias, image_tokens
    try:
        yield
    finally:
        for p in processors:
            p.text_bias, p.image_tokens = None, 0


def exportable_transformer(transformer: torch.nn.Module, processor=WanAttentionGraph) -> torch.nn.Module:
    """Gives a diffusers transformer (Wan's, LTX-Video's) the graph-friendly RMSNorm and
    attention ``processor``, in place."""
    for parent in list(transformer.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.RMSNorm:
                setattr(parent, name, RMSNormGraph(child))
    for module in transformer.modules():
        if hasattr(module, "set_processor") and hasattr(module, "norm_q"):
            module.set_processor(processor())
    return transformer


class WanTransformerGraph(torch.nn.Module):
    """WanTransformer3DModel on [B, C, F, h, w] latents, one timestep for the whole
    batch (expanded here, as WanPipeline does), [B, L, D] text states and the [B, L]
    logit bias of their tokens in every cross-attention (where vidrt collapsed diffusers'
    identical padding tokens into fewer: families/wan/pipeline.py ``collapse_padding``);
    for image to video also the image inputs (families/wan/model.py ``image_inputs``;
    WanStages)."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = exportable_transformer(transformer)
        self.stages = WanStages(transformer)

    def forward(self, sample, timestep, encoder_hidden_states, text_bias, *image):
        if image:
            return self.stages(sample, timestep, encoder_hidden_states, text_bias, *image)
        t = timestep.expand(sample.shape[0])
        with cross_attention_bias(self.transformer, text_bias[:, None, None, :]):
            return self.transformer(sample, t, encoder_hidden_states, return_dict=False)[0]


class WanStages(DenoiserStages):
    """WanTransformer3DModel.forward in the three parts step caching cuts it into
    (export/split_graphs.py), each diffusers' own code: streams (video tokens), context
    (projected text states, the [B, 6, D] timestep projection, rotary cos and sin), final
    (the time embedding for the output norm's shift and scale).

    Image to video, as WanImageToVideoPipeline calls the transformer:
    - a transformer with more input than output channels (Wan 2.1 I2V, Wan 2.2 I2V-A14B)
      takes ``condition`` [B, C', F, h, w], concatenated after the latents' channels, and,
      if it has an image embedder (Wan 2.1 I2V), the CLIP states ``image_embeds``, whose
      embedding every block's cross-attention reads before the text (context
      ``image_states``);
    - otherwise (TI2V-5B, expand_timesteps) ``image_latents`` [B, C, h, w]: the image's
      latent in place of frame 0, and the timestep per token, 0 for frame 0's tokens, the
      step's for the others; the projection and embedding are then [1, tokens, 6, D] and
      [1, tokens, D] (the same rows for every video), which diffusers' blocks and output
      norm take as its per-token [B, tokens, ...] ones."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = exportable_transformer(transformer)
        self.blocks = self.transformer.blocks
        cfg = self.transformer.config
        self.channels_condition = cfg.in_channels > (cfg.out_channels or cfg.in_channels)

    def embed(self, sample, timestep, encoder_hidden_states, text_bias, *image):
        t = self.transformer
        image_latents = image[0] if image and not self.channels_condition else None
        if image_latents is not None:
            sample = torch.cat([image_latents[:, :, None], sample[:, :, 1:]], dim=2)
        elif image:
            sample = torch.cat([sample, image[0]], dim=1)
        cos, sin = t.rope(sample)
        hidden = t.patch_embedding(sample).flatten(2).transpose(1, 2).contiguous()
        bias = text_bias[:, None, None, :]
        if image_latents is None:
            clip = image[1] if len(image) > 1 else None
            temb, proj, text, states = t.condition_embedder(timestep.expand(sample.shape[0]), encoder_hidden_states, clip)
            context = (text, proj.unflatten(1, (6, -1)), cos, sin, bias, *(() if states is None else (states,)))
            return (hidden,), context, (temb,)
        temb, proj, text, _ = t.condition_embedder(torch.cat([torch.zeros_like(timestep), timestep]),
                                                   encoder_hidden_states, None)
        _, ph, pw = t.config.patch_size
        per_frame = (sample.shape[3] // ph) * (sample.shape[4] // pw)
        later = (torch.arange(hidden.shape[1], device=hidden.device) >= per_frame).long()  # 0: frame 0's tokens
        return (hidden,), (text, proj.unflatten(1, (6, -1))[later][None], cos, sin, bias), (temb[later][None],)

    def run_block(self, block, streams, context):
        text, proj, cos, sin, bias, *image = context
        if image:  # diffusers' forward puts the image states before the text
            text = torch.cat([image[0], text], dim=1)
        with cross_attention_bias(block, bias, image[0].shape[1] if image else 0):
            return (block(streams[0], text, proj, (cos, sin)),)

    def finish(self, sample, streams, final):
        t = self.transformer
        b, _, frames, height, width = sample.shape
        pt, ph, pw = t.config.patch_size
        temb = final[0]
        if temb.ndim == 3:  # per token (image to video), as diffusers' forward handles it
            shift, scale = (t.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (t.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (t.norm_out(streams[0].float()) * (1 + scale) + shift).type_as(streams[0])
        hidden = t.proj_out(hidden).reshape(b, frames // pt, height // ph, width // pw, pt, ph, pw, -1)
        return hidden.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)


class UMT5Graph(torch.nn.Module):
    """UMT5 (or T5) encoder: token ids (and an attention mask, where the pipeline passes
    one: Wan does, LTX-Video does not) -> last hidden states."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids, attention_mask=None):
        return self.text_encoder(input_ids, attention_mask).last_hidden_state


class UMT5PartGraph(torch.nn.Module):
    """Blocks ``start:stop`` of a UMT5 or T5 encoder (one part of a split encoder,
    sources.load_text_encoder_part): the token embedding before them in the first part,
    the final norm after them in the last, as the encoder stack runs them. Every UMT5
    block computes its own relative position bias; T5's blocks share block 0's, which
    each part computes from block 0's bias table (loaded in every part)."""

    def __init__(self, text_encoder, start: int, stop: int):
        super().__init__()
        encoder = text_encoder.encoder
        self.config = encoder.config
        self.embed = encoder.embed_tokens if start == 0 else None
        self.blocks = torch.nn.ModuleList(encoder.block[start:stop])
        self.norm = encoder.final_layer_norm if stop == len(encoder.block) else None
        self.shared_bias = None
        if type(text_encoder).__name__ == "T5EncoderModel":
            self.shared_bias = encoder.block[0].layer[0].SelfAttention

    def forward(self, x, attention_mask=None):
        from transformers.masking_utils import create_bidirectional_mask

        hidden = self.embed(x) if self.embed is not None else x
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        if self.shared_bias is None:
            for block in self.blocks:
                hidden = block(hidden, mask)
        else:
            length = hidden.shape[1]
            bias = self.shared_bias.compute_bias(length, length, device=hidden.device)
            for block in self.blocks:
                hidden = block(hidden, attention_mask=mask, position_bias=bias)[0]
        return self.norm(hidden) if self.norm is not None else hidden


class WanVaeEncoderGraph(torch.nn.Module):
    """Images [B, 3, H, W] in [-1, 1] -> the mean of their one-frame latent, normalised as
    WanImageToVideoPipeline normalises it: (mean - latents_mean) * (1 / latents_std),
    [B, C, h, w]. diffusers' own encode (Wan 2.2's pixel patches, the encoder's first chunk)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        z = vae.config.z_dim
        self.register_buffer("mean", torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1))

    def forward(self, image):
        latent = self.vae.encode(image[:, :, None]).latent_dist.mode()[:, :, 0]
        return (latent - self.mean) * self.inv_std


class _VaeEncoderChunkBase(WanVaeEncoderGraph):
    """The Wan VAE encoder on one chunk of a clip through diffusers' own cached code path
    (``feat_cache``/``feat_idx``, as AutoencoderKLWan._encode runs it), the latent's mean
    normalised as WanImageToVideoPipeline does; the caches as graph inputs and outputs in
    the layout of families/wan/vae.py ``encoder_caches``."""

    def __init__(self, vae):
        super().__init__(vae)
        from vidrt.families.wan.vae import encoder_caches

        self.frames = [f for _, _, f in encoder_caches(dict(vae.config))]

    def _encode(self, x, caches: list):
        from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

        if self.vae.config.patch_size is not None:
            x = patchify(x, patch_size=self.vae.config.patch_size)
        out = self.vae.quant_conv(self.vae.encoder(x, feat_cache=caches, feat_idx=[0]))
        latent = (out[:, : self.vae.config.z_dim, 0] - self.mean) * self.inv_std
        # a cache left shorter than its layout (the first chunk's single frame) gets zeros in
        # front, which the next chunk's causal convolutions read as the padding they add
        kept = [c if c.shape[2] == f else torch.cat([torch.zeros_like(c[:, :, :1]).expand(-1, -1, f - c.shape[2], -1, -1), c], 2)
                for c, f in zip(caches, self.frames)]
        return (latent, *kept)


class WanVaeEncoderFirstChunkGraph(_VaeEncoderChunkBase):
    """The image [B, 3, H, W] (the clip's frame 0) -> (its latent mean, every cache)."""

    def forward(self, image):
        return self._encode(image[:, :, None], [None] * self.vae._cached_conv_counts["encoder"])


class WanVaeEncoderChunkGraph(_VaeEncoderChunkBase):
    """The clip's next 4 frames [B, 3, 4, H, W] and the caches -> (their latent mean, the
    caches updated)."""

    def forward(self, frames, *caches):
        return self._encode(frames, list(caches) + [None] * (self.vae._cached_conv_counts["encoder"] - len(caches)))


class WanImageEncoderGraph(torch.nn.Module):
    """Wan 2.1 I2V's CLIPVisionModel -> the states before its last layer
    (``hidden_states[-2]``, what WanImageToVideoPipeline.encode_image takes): the last
    layer is left out rather than computed and dropped."""

    def __init__(self, image_encoder):
        super().__init__()
        self.vision = getattr(image_encoder, "vision_model", image_encoder)  # transformers < 5 nests it
        self.layers = self.vision.encoder.layers[:-1]

    def forward(self, pixel_values):
        hidden = self.vision.pre_layrnorm(self.vision.embeddings(pixel_values))
        for layer in self.layers:
            hidden = layer(hidden, None)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return hidden


class _VaeChunkBase(torch.nn.Module):
    """The Wan VAE decoder on one latent frame through diffusers' own cached code path
    (``feat_cache``/``feat_idx``; ``first_chunk``, which Wan 2.2's residual upsampling
    shortcuts read), latents un-normalised with the config's latents_mean/latents_std as
    WanPipeline does, Wan 2.2's pixel patches unpacked, frames clamped to [-1, 1]."""

    def __init__(self, vae):
        super().__init__()
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanResample, WanUpsample

        self.vae = vae
        z = vae.config.z_dim
        self.register_buffer("mean", torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1))
        self.register_buffer("std", torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1))
        self.upsamplers3d = [m for m in vae.decoder.modules() if isinstance(m, WanResample) and m.mode == "upsample3d"]
        for m in vae.decoder.modules():
            if isinstance(m, WanResample) and isinstance(m.resample[0], WanUpsample):
                m.resample[0] = torch.nn.Upsample(scale_factor=2.0, mode="nearest")  # nearest-exact at 2x is nearest

    def _decode(self, latents, caches: list, first: bool):
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        x = self.vae.post_quant_conv(latents * self.std + self.mean)
        frames = self.vae.decoder(x, feat_cache=caches, feat_idx=[0], first_chunk=first)
        if self.vae.config.patch_size is not None:  # Wan 2.2's VAE: 2x2 pixel patches as channels
            frames = unpatchify(frames, patch_size=self.vae.config.patch_size)
        return frames.clamp(-1.0, 1.0)


class WanVaeFirstChunkGraph(_VaeChunkBase):
    """Latent frame 0 -> (1 frame, every cache). diffusers leaves each cache with the one
    frame it saw and the temporal upsamplers' with the marker "Rep" (the next frame's
    temporal convolution pads with zeros); here each is two frames, zeros in front, which
    the next frame's convolutions read exactly as that padding, so one chunk graph serves
    every later frame."""

    def forward(self, latents):
        caches = [None] * self.vae._cached_conv_counts["decoder"]
        rep_inputs = []
        hooks = [m.register_forward_pre_hook(lambda mod, args: rep_inputs.append(args[0])) for m in self.upsamplers3d]
        try:
            frames = self._decode(latents, caches, first=True)
        finally:
            for h in hooks:
                h.remove()
        rep = iter(rep_inputs)
        out = []
        for c in caches:
            if c is None:
                break  # the rest are the residual shortcuts' 1x1x1 convolutions: no cache
            if isinstance(c, str):  # "Rep": a temporal upsampler's, its input's shape
                x = next(rep)
                c = torch.zeros_like(x[:, :, :1])
            out.append(torch.cat([torch.zeros_like(c[:, :, :1]).expand(-1, -1, 2 - c.shape[2], -1, -1), c], 2)
                       if c.shape[2] < 2 else c)
        return (frames, *out)


class WanVaeChunkGraph(_VaeChunkBase):
    """One later latent frame and the caches -> (4 frames, the caches updated)."""

    def forward(self, latents, *caches):
        caches = list(caches) + [None] * (self.vae._cached_conv_counts["decoder"] - len(caches))
        frames = self._decode(latents, caches, first=False)
        return (frames, *(c for c in caches if c is not None))


# (component, torch module class) -> graph
WAN_GRAPHS = {
    ("text_encoder", "UMT5EncoderModel"): UMT5Graph,
    ("text_encoder", "T5EncoderModel"): UMT5Graph,
    ("transformer", "WanTransformer3DModel"): WanTransformerGraph,
    ("transformer_2", "WanTransformer3DModel"): WanTransformerGraph,
    **{(f"{e}_{stage}", "WanTransformer3DModel"): (lambda m, stage=stage: stage_graph(stage, WanStages(m), 1))
       for e in ("transformer", "transformer_2") for stage in ALL_STAGES},
    ("vae_encoder", "AutoencoderKLWan"): WanVaeEncoderGraph,
    ("vae_encoder_first", "AutoencoderKLWan"): WanVaeEncoderFirstChunkGraph,
    ("vae_encoder_chunk", "AutoencoderKLWan"): WanVaeEncoderChunkGraph,
    ("image_encoder", "CLIPVisionModel"): WanImageEncoderGraph,
    ("vae_decoder", "AutoencoderKLWan"): WanVaeFirstChunkGraph,
    ("vae_decoder_chunk", "AutoencoderKLWan"): WanVaeChunkGraph,
}
