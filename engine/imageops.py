"""Image preparation for the CLIP image encoder, as SVD was trained with it.

SVD resizes the conditioning image to the encoder's size with an anti-aliasing
Gaussian blur before a bicubic resize (align_corners), then applies CLIP's
mean/std normalisation. diffusers' StableVideoDiffusionPipeline does the same;
tests check the two agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    k = torch.exp(-x.pow(2.0) / (2 * sigma**2))
    return k / k.sum()


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    """Depthwise 1-D convolution along H (axis=2) or W (axis=3), reflect-padded."""
    n = kernel.numel()
    lo, hi = (n - 1) // 2, (n - 1) - (n - 1) // 2
    c = x.shape[1]
    if axis == 3:
        weight = kernel.view(1, 1, 1, n).expand(c, 1, 1, n)
        x = F.pad(x, (lo, hi, 0, 0), mode="reflect")
    else:
        weight = kernel.view(1, 1, n, 1).expand(c, 1, n, 1)
        x = F.pad(x, (0, 0, lo, hi), mode="reflect")
    return F.conv2d(x, weight.to(x.dtype), groups=c)


def resize_antialiased(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Blur with sigma = (scale - 1) / 2 per axis, then bicubic resize to ``size``.

    Args:
        images: [B, C, H, W] float tensor.
        size: (height, width) to resize to.
    """
    h, w = images.shape[-2:]
    sig_h = max((h / size[0] - 1.0) / 2.0, 0.001)
    sig_w = max((w / size[1] - 1.0) / 2.0, 0.001)
    # Kernel of about 2 sigmas each side, odd, at least 3 taps.
    k_h = int(max(4.0 * sig_h, 3))
    k_w = int(max(4.0 * sig_w, 3))
    k_h += 1 - k_h % 2
    k_w += 1 - k_w % 2
    out = _blur_axis(images, _gaussian_kernel(k_w, sig_w), axis=3)
    out = _blur_axis(out, _gaussian_kernel(k_h, sig_h), axis=2)
    return F.interpolate(out, size=size, mode="bicubic", align_corners=True)


def clip_pixel_values(images01: torch.Tensor, size: int | None, mean, std) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] → CLIP encoder input.

    Args:
        images01: images in [0, 1].
        size: resize to size×size first (None keeps the tensor's size, as
            diffusers does for tensor inputs).
        mean, std: the feature extractor's per-channel normalisation.
    """
    x = images01
    if size is not None:
        x = resize_antialiased(x * 2.0 - 1.0, (size, size))
        x = (x + 1.0) / 2.0
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - mean_t) / std_t).contiguous()
