"""torch modules whose forward matches each component description exactly.

Export traces these; the export-time check runs them as the PyTorch reference.
"""

from __future__ import annotations

import torch

from vidrt.components import ComponentSpec
from vidrt.errors import VidrtError

from .video_layout import VideoLayoutDecoderGraph, VideoLayoutResBlock
from .cogvideox_graphs import COGVIDEOX_GRAPHS
from .ltx_graphs import LTX_GRAPHS
from .wan_graphs import WAN_GRAPHS


class ImageEncoderGraph(torch.nn.Module):
    """CLIPVisionModelWithProjection → image_embeds."""

    def __init__(self, image_encoder):
        super().__init__()
        self.image_encoder = image_encoder

    def forward(self, pixel_values):
        return self.image_encoder(pixel_values).image_embeds


class VaeEncoderGraph(torch.nn.Module):
    """Image in [-1, 1] → latent distribution mode (unscaled, as SVD conditions on it)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        return self.vae.encode(image).latent_dist.mode()


class SplitGEGLU(torch.nn.Module):
    """diffusers' GEGLU (one linear layer, split in two, value × gelu(gate)) as two linear
    layers over views of the same weights: the same products without the split, which
    OpenVINO runs on a reference kernel (4% of the svd-xt UNet's bf16 time)."""

    def __init__(self, geglu):
        super().__init__()
        weight, bias = geglu.proj.weight, geglu.proj.bias
        half = weight.shape[0] // 2
        self.value = torch.nn.Linear(weight.shape[1], half, bias=bias is not None, device="meta")
        self.gate = torch.nn.Linear(weight.shape[1], half, bias=bias is not None, device="meta")
        for layer, rows in ((self.value, slice(0, half)), (self.gate, slice(half, None))):
            layer.weight = torch.nn.Parameter(weight[rows], requires_grad=False)
            if bias is not None:
                layer.bias = torch.nn.Parameter(bias[rows], requires_grad=False)

    def forward(self, hidden_states, *args, **kwargs):
        return self.value(hidden_states) * torch.nn.functional.gelu(self.gate(hidden_states))


def split_geglu(module: torch.nn.Module) -> torch.nn.Module:
    """Replaces every diffusers GEGLU inside ``module`` by a SplitGEGLU, in place."""
    from diffusers.models.activations import GEGLU

    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is GEGLU:
                setattr(parent, name, SplitGEGLU(child))
    return module


class OneTokenCrossAttention:
    """A diffusers attention processor for cross-attention to a context of one token
    (SVD's image embedding): softmax over a single key is exactly 1, so every query
    receives that token's value. The query and key projections and the scores are dead
    work (4.5% of the svd-xt UNet's FLOPs); this computes to_out(to_v(context)) once per
    row, [N, 1, C], which the transformer block's residual add broadcasts over the
    queries. The same function to float rounding."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] != 1 or attention_mask is not None:
            raise VidrtError("OneTokenCrossAttention needs an unmasked context of exactly one token")
        return attn.to_out[1](attn.to_out[0](attn.to_v(encoder_hidden_states)))


def one_token_cross_attention(module: torch.nn.Module) -> torch.nn.Module:
    """Gives every plain cross-attention (``attn2``) inside ``module`` the
    OneTokenCrossAttention processor, in place. Only for models whose context is one
    token by construction (the SVD UNet's ``encoder_hidden_states`` is [B, 1, D])."""
    from diffusers.models.attention_processor import Attention

    for name, attn in module.named_modules():
        if not (name.endswith("attn2") and isinstance(attn, Attention) and attn.is_cross_attention):
            continue
        plain = attn.group_norm is None and attn.spatial_norm is None and attn.norm_cross is None
        if plain and not attn.residual_connection and attn.rescale_output_factor == 1.0:
            attn.set_processor(OneTokenCrossAttention())
    return module


def diffusers_cross_attention(module: torch.nn.Module) -> torch.nn.Module:
    """Undoes one_token_cross_attention: diffusers' default processor again, in place
    (the benchmark counts the FLOPs of diffusers' own forward with it)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    for m in module.modules():
        if isinstance(getattr(m, "processor", None), OneTokenCrossAttention):
            m.set_processor(AttnProcessor2_0())
    return module


class UNetGraph(torch.nn.Module):
    """UNetSpatioTemporalConditionModel with positional inputs and a tensor output."""

    def __init__(self, unet):
        super().__init__()
        self.unet = one_token_cross_attention(split_geglu(unet))

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids):
        return self.unet(sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False)[0]


class VideoLayoutUNetGraph(UNetGraph):
    """UNetGraph whose resnet blocks from ``from_level`` down (default: latent/4 and
    smaller) run in [B, C, F, h, w] (VideoLayoutResBlock). Measured on svd-xt at 128x128
    (OpenVINO bf16): 3x3 convolutions on 2x2 and 4x4 latents ~2x faster, the UNet call
    4% faster; at the upper levels OpenVINO's 2D convolutions are as fast or faster."""

    def __init__(self, unet, from_level: int = 2):
        super().__init__(unet)
        levels = len(unet.down_blocks)
        for block in [*unet.down_blocks[from_level:], unet.mid_block, *unet.up_blocks[: levels - from_level]]:
            for k, resnet in enumerate(block.resnets):
                block.resnets[k] = VideoLayoutResBlock(resnet)


class VaeDecoderGraph(torch.nn.Module):
    """Scaled latents of one decode chunk → frames; the chunk is the temporal window.

    Folding ``1/scaling_factor`` in here saves a pass over the latents at run time.
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.inv_scale = 1.0 / vae.config.scaling_factor

    def forward(self, latents):
        return self.vae.decode(latents * self.inv_scale, num_frames=latents.shape[0]).sample


class TextEncoderGraph(torch.nn.Module):
    """CLIPTextModel: token ids → (last hidden states, pooled output)."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        out = self.text_encoder(input_ids, return_dict=True)
        return out.last_hidden_state, out.pooler_output


class VideoUNetGraph(torch.nn.Module):
    """UNet3DConditionModel on [B, C, F, h, w] latents and [B, L, D] text states."""

    def __init__(self, unet):
        super().__init__()
        self.unet = split_geglu(unet)

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class MotionUNetGraph(VideoUNetGraph):
    """UNetMotionModel with the same inputs: AnimateDiffPipeline repeats the text states
    once per frame before the UNet; here the graph does it, so the engine takes them
    once per video like the 3D U-Net."""

    def forward(self, sample, timestep, encoder_hidden_states):
        states = encoder_hidden_states.repeat_interleave(sample.shape[2], dim=0)
        return self.unet(sample, timestep, states, return_dict=False)[0]


class FrameDecoderGraph(torch.nn.Module):
    """AutoencoderKL decoder over frames stacked in the batch, ``1/scaling_factor`` folded in."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.inv_scale = 1.0 / vae.config.scaling_factor

    def forward(self, latents):
        return self.vae.decode(latents * self.inv_scale).sample


# (component, torch module class) -> graph; the SVD family's modules are the defaults.
GRAPHS = {
    "image_encoder": ImageEncoderGraph,
    "vae_encoder": VaeEncoderGraph,
    "unet": UNetGraph,
    "vae_decoder": VaeDecoderGraph,
    "text_encoder": TextEncoderGraph,
    ("unet", "UNet3DConditionModel"): VideoUNetGraph,
    ("unet", "UNetMotionModel"): MotionUNetGraph,
    ("vae_decoder", "AutoencoderKL"): FrameDecoderGraph,
    **WAN_GRAPHS,
    **LTX_GRAPHS,
    **COGVIDEOX_GRAPHS,
}

# (component, torch module class, variant) -> the same function as another graph, laid out
# for the backends that ask for it (Backend.graph_variants; models list theirs).
GRAPH_VARIANTS = {
    ("vae_decoder", "AutoencoderKLTemporalDecoder", "video-layout"): VideoLayoutDecoderGraph,
    ("unet", "UNetSpatioTemporalConditionModel", "video-layout"): VideoLayoutUNetGraph,
}


def component_graph(component: str, module, variant: str | None = None) -> torch.nn.Module:
    """The exportable graph of one component around its torch module
    (UNet, VAE, CLIP vision or text model, as the component needs).

    Raises:
        VidrtError: ``variant`` does not exist for this component's module.
    """
    part = getattr(module, "vidrt_part", None)
    if part is not None:  # one part of a split text encoder (sources.load_text_encoder_part)
        from .wan_graphs import UMT5PartGraph

        return UMT5PartGraph(module, *part).eval()
    if variant is not None:
        graph = GRAPH_VARIANTS.get((component, type(module).__name__, variant))
        if graph is None:
            raise VidrtError(f"no '{variant}' graph of {component} for a {type(module).__name__}")
    else:
        graph = GRAPHS.get((component, type(module).__name__)) or GRAPHS[component]
    return graph(module).eval()


def sample_inputs(spec: ComponentSpec, dims: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the spec's shapes at ``dims``: token ids below the vocabulary
    size, scalars at the spec's sample value (a timestep the model really sees)."""
    gen = torch.Generator().manual_seed(seed)
    feeds = {}
    for t in spec.inputs:
        name, shape = t.name, spec.shape_of(t, dims)
        if t.dtype == "int64":
            feeds[name] = torch.randint(0, t.high or 2, shape, generator=gen, dtype=torch.int64)
        elif t.value is not None:
            feeds[name] = torch.full(shape, float(t.value))
        elif name == "added_time_ids":
            feeds[name] = torch.tensor([[6.0, 127.0, 0.02]]).repeat(shape[0], 1)
        else:
            feeds[name] = torch.randn(shape, generator=gen)
    return feeds


def trace_point(spec: ComponentSpec) -> dict[str, int]:
    """Shape to trace at: small, distinct values so no dynamic dim is specialised."""
    point = {}
    for i, (name, rng) in enumerate(sorted(spec.ranges.items())):
        want = rng.multiple * (2 + i % 2)
        want = min(max(want, rng.min + (i % 2) * rng.multiple), rng.max)
        point[name] = max(rng.min, (want // rng.multiple) * rng.multiple)
    if "B" in point:
        point["B"] = min(2, spec.ranges["B"].max)
    for frames in ("F", "N"):
        if frames in point:
            point[frames] = _frames(spec.ranges[frames], 3)
    return point


def _frames(rng, count: int) -> int:
    """``count`` frames (in units of the range's multiple: CogVideoX 1.5 takes pairs) within the range."""
    return max(rng.min, min(count * rng.multiple, rng.max) // rng.multiple * rng.multiple)


def check_point(spec: ComponentSpec) -> dict[str, int]:
    """A second shape, unlike the trace shape, to prove the axes are really dynamic."""
    point = {}
    for name, rng in spec.ranges.items():
        point[name] = rng.min if name not in ("F", "N") else _frames(rng, 5)
    if "h" in point and "w" in point:
        rng = spec.ranges["w"]
        point["w"] = min(rng.max, max(rng.min, 3 * rng.multiple, 3))
    if "H" in point and "W" in point:
        rng = spec.ranges["W"]
        point["W"] = min(rng.max, 3 * rng.multiple)
    return point
