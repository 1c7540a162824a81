"""SVD's temporal VAE decoder computed in one video layout, [B, C, F, H, W], end to end.

diffusers runs its spatial layers on frames stacked in the batch ([B*F, C, H, W]) and
permutes to [B, C, F, H, W] and back around every temporal block. OpenVINO executes
those permutes as real copies plus layout reorders: 47% of the svd-xt decoder's bf16
time (profile_ops). Here the spatial convolutions are 1x3x3 Conv3d, the per-frame group
norms reduce over (H, W) only, and nothing is ever permuted: the same function to
float rounding, 27-30% less time in OpenVINO. ONNX Runtime runs 3D convolutions slower
than 2D ones, so only backends that ask for this graph get it (Backend.graph_variants).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _group_mean(stats: torch.Tensor, groups: int) -> torch.Tensor:
    """Per-channel statistics [B, C, ...] → their mean over each group's channels,
    broadcast back to [B, C, ...]. Works on the small reduced tensors only, so the big
    activations never leave their channel-blocked layout."""
    b, c = stats.shape[:2]
    grouped = stats.reshape(b, groups, c // groups, *stats.shape[2:])
    mean = grouped.mean(2, keepdim=True).expand(grouped.shape)
    return mean.reshape(stats.shape)


def group_norm(x: torch.Tensor, norm: torch.nn.GroupNorm, dims: tuple[int, ...]) -> torch.Tensor:
    """``norm`` with statistics over each group's channels and ``dims`` of x [B, C, F, H, W]:
    dims (3, 4) is GroupNorm of every frame, (2, 3, 4) GroupNorm of the whole clip.
    Two passes (mean, then the centred square) for bf16 accuracy."""
    centred = x - _group_mean(x.mean(dims, keepdim=True), norm.num_groups)
    var = _group_mean((centred * centred).mean(dims, keepdim=True), norm.num_groups)
    scale = torch.rsqrt(var + norm.eps) * norm.weight[:, None, None, None]
    return centred * scale + norm.bias[:, None, None, None]


def frame_conv(conv: torch.nn.Conv2d) -> torch.nn.Conv3d:
    """A Conv2d as the 1 x kh x kw Conv3d that applies it to every frame of
    [B, C, F, H, W], sharing its weights. A module rather than a functional call, so
    the quantization stage sees (and quantizes) it like any other convolution."""
    if conv.groups != 1 or conv.dilation != (1, 1) or isinstance(conv.padding, str):
        raise ValueError("frame_conv covers plain Conv2d layers (no groups, dilation or string padding)")
    out = torch.nn.Conv3d(conv.in_channels, conv.out_channels, (1, *conv.kernel_size), (1, *conv.stride),
                          (0, *conv.padding), bias=conv.bias is not None, device="meta")
    out.weight = torch.nn.Parameter(conv.weight.detach()[:, :, None], requires_grad=False)
    if conv.bias is not None:
        out.bias = torch.nn.Parameter(conv.bias.detach(), requires_grad=False)
    return out


def to_frame_convs(module: torch.nn.Module, *names: str) -> None:
    """Replaces the Conv2d attributes ``names`` of ``module`` by frame_conv, in place."""
    for name in names:
        conv = getattr(module, name)
        if isinstance(conv, torch.nn.Conv2d):
            setattr(module, name, frame_conv(conv))


def _per_frame(emb: torch.Tensor, frames: int) -> torch.Tensor:
    """A time-embedding projection per frame, [B*F, C] → [B, C, F, 1, 1]."""
    return emb.reshape(-1, frames, emb.shape[-1]).permute(0, 2, 1)[..., None, None]


def to_video_layout(block) -> None:
    """Makes a SpatioTemporalResBlock's spatial convolutions frame convolutions, in place."""
    to_frame_convs(block.spatial_res_block, "conv1", "conv2", *(["conv_shortcut"] if block.spatial_res_block.conv_shortcut is not None else []))


def spatial_resnet(x: torch.Tensor, block, temb: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers' ResnetBlock2D (its convolutions made frame_conv) on every frame;
    ``temb`` [B*F, T] as the UNet gives it."""
    h = block.conv1(F.silu(group_norm(x, block.norm1, (3, 4))))
    if temb is not None and block.time_emb_proj is not None:
        h = h + _per_frame(block.time_emb_proj(F.silu(temb)), x.shape[2])
    h = block.conv2(F.silu(group_norm(h, block.norm2, (3, 4))))
    if block.conv_shortcut is not None:
        x = block.conv_shortcut(x)
    return (x + h) / block.output_scale_factor


def temporal_resnet(x: torch.Tensor, block, temb: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers' TemporalResnetBlock: already [B, C, F, H, W]; ``temb`` [B*F, T]."""
    h = block.conv1(F.silu(group_norm(x, block.norm1, (2, 3, 4))))
    if temb is not None and block.time_emb_proj is not None:
        h = h + _per_frame(block.time_emb_proj(F.silu(temb)), x.shape[2])
    h = block.conv2(F.silu(group_norm(h, block.norm2, (2, 3, 4))))
    return x + h


def spatio_temporal_resnet(x: torch.Tensor, block, temb=None, image_only_indicator=None) -> torch.Tensor:
    """diffusers' SpatioTemporalResBlock: spatial block, temporal block, learned blend."""
    x = spatial_resnet(x, block.spatial_res_block, temb)
    mixer = block.time_mixer
    alpha = mixer.get_alpha(image_only_indicator, x.ndim).to(x.dtype)
    if mixer.switch_spatial_to_temporal_mix:
        alpha = 1.0 - alpha
    return alpha * x + (1.0 - alpha) * temporal_resnet(x, block.temporal_res_block, temb)


class VideoLayoutResBlock(torch.nn.Module):
    """A SpatioTemporalResBlock inside a UNet that keeps frames in the batch: one permute
    into [B, C, F, H, W] and one back, instead of two each way, and 1x3x3 Conv3d where
    OpenVINO's 2D kernels are slow (3x3 convolutions on 2x2 and 4x4 latents run 2-3x
    faster as 3D convolutions over the frames). Takes ``block`` over (to_video_layout)."""

    def __init__(self, block):
        super().__init__()
        spatial = block.spatial_res_block
        if spatial.upsample is not None or spatial.downsample is not None or spatial.time_embedding_norm != "default":
            raise ValueError("video layout covers SVD's resnet blocks (no resampling, additive time embedding)")
        to_video_layout(block)
        self.block = block

    def forward(self, hidden_states, temb=None, image_only_indicator=None):
        frames = image_only_indicator.shape[-1]
        _, channels, height, width = hidden_states.shape
        x = hidden_states.reshape(-1, frames, channels, height, width).permute(0, 2, 1, 3, 4)
        x = spatio_temporal_resnet(x, self.block, temb, image_only_indicator)
        return x.permute(0, 2, 1, 3, 4).reshape(-1, x.shape[1], height, width)


def frame_attention(x: torch.Tensor, attn) -> torch.Tensor:
    """The decoder's mid-block self-attention over each frame's pixels (one permute each
    way, at the lowest resolution)."""
    b, c, frames, height, width = x.shape
    tokens = group_norm(x, attn.group_norm, (3, 4)).permute(0, 2, 3, 4, 1).reshape(b * frames, height * width, c)
    q, k, v = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
    heads = attn.heads
    split = lambda t: t.reshape(b * frames, height * width, heads, c // heads).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=attn.scale)
    out = attn.to_out[0](out.transpose(1, 2).reshape(b * frames, height * width, c))
    out = out.reshape(b, frames, height, width, c).permute(0, 4, 1, 2, 3)
    return (out + x) / attn.rescale_output_factor


class VideoLayoutDecoderGraph(torch.nn.Module):
    """AutoencoderKLTemporalDecoder.decode as VaeDecoderGraph: scaled latents of one
    decode chunk [F, 4, h, w] → frames [F, 3, H, W], 1/scaling_factor folded in.
    Takes the VAE over: its spatial convolutions become frame convolutions."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.inv_scale = 1.0 / vae.config.scaling_factor
        decoder = vae.decoder
        to_frame_convs(decoder, "conv_in", "conv_out")
        for block in (decoder.mid_block, *decoder.up_blocks):
            for resnet in block.resnets:
                to_video_layout(resnet)
            for upsampler in getattr(block, "upsamplers", None) or ():
                to_frame_convs(upsampler, "conv")

    def forward(self, latents):
        decoder = self.vae.decoder
        x = decoder.conv_in((latents * self.inv_scale).transpose(0, 1)[None])
        mid = decoder.mid_block
        x = spatio_temporal_resnet(x, mid.resnets[0])
        for resnet, attn in zip(mid.resnets[1:], mid.attentions):
            x = spatio_temporal_resnet(frame_attention(x, attn), resnet)
        for up in decoder.up_blocks:
            for resnet in up.resnets:
                x = spatio_temporal_resnet(x, resnet)
            for upsampler in up.upsamplers or ():
                x = upsampler.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))
        x = decoder.conv_out(F.silu(group_norm(x, decoder.conv_norm_out, (3, 4))))
        return decoder.time_conv_out(x)[0].transpose(0, 1)
