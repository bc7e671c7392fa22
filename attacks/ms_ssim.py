"""MS-SSIM and DSSIM as the mimicry attack's authors compute them (Wang et al. 2018, `bolunwang/translearn`,
`msssim_tf.py`), ported to torch for images of any size, 8 px and up.

The formula is Zhou Wang's multi-scale SSIM (Wang, Simoncelli & Bovik 2003) as the authors' TensorFlow port writes
it: 5 scales with weights [0.0448, 0.2856, 0.3001, 0.2363, 0.1333], a Gaussian window of 11 px and sigma 1.5 with
VALID convolution per channel, k1 = 0.01, k2 = 0.03, 2x2 average pooling with TF's SAME padding between scales, and
MS-SSIM = prod_{i<5} cs_i^{w_i} * ssim_5^{w_5}, where ssim_i and cs_i are means over the map, the channels and the
pixels. The window shrinks to min(11, h, w) at scales smaller than 11 px and sigma with it: this is what makes
16 px and 32 px images work (the PyPI packages `pytorch-msssim` and `piq` refuse images under 160 px at 5 scales).
DSSIM = (1 - MS-SSIM) / 2.

Differences from the TF code, none of which changes a value: the statistics are per image (the attack calls the
TF function on one image at a time), and images are in [0, 1] with `max_val` 1 instead of 0..255 with 255 (SSIM is
invariant to scaling the images and `max_val` together). As in the TF code, a negative contrast term raised to a
fractional weight is NaN; it does not occur near the source image, where the mimicry attack works.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

#: Zhou Wang's scale weights (they do not sum to 1, as in the paper and the MATLAB code).
WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


@functools.cache
def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """MATLAB's `fspecial('gaussian', size, sigma)` (even sizes centred between pixels), as a float64 (size, size)."""
    radius = size // 2
    offset, start, stop = (0.5, -radius, radius) if size % 2 == 0 else (0.0, -radius, radius + 1)
    coords = torch.arange(start, stop, dtype=torch.float64) + offset
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    g = torch.exp(-(xx**2 + yy**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """VALID convolution of every channel with the same window."""
    c = x.shape[1]
    w = window.to(x)[None, None].expand(c, 1, *window.shape)
    return F.conv2d(x, w, groups=c)


def _ssim_cs(a: torch.Tensor, b: torch.Tensor, max_val: float, filter_size: int, filter_sigma: float, k1, k2):
    """Per-image mean SSIM and contrast-structure term at one scale (`_SSIMForMultiScale`)."""
    height, width = a.shape[-2:]
    size = min(filter_size, height, width)
    sigma = size * filter_sigma / filter_size
    window = gaussian_window(size, sigma)
    # One grouped convolution for the five filtered maps (fewer kernel launches than five calls).
    mu1, mu2, s11, s22, s12 = _filter(torch.cat([a, b, a * a, b * b, a * b], dim=1), window).chunk(5, dim=1)
    mu11, mu22, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s11, s22, s12 = s11 - mu11, s22 - mu22, s12 - mu12
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    v1 = 2.0 * s12 + c2
    v2 = s11 + s22 + c2
    ssim = ((2.0 * mu12 + c1) * v1) / ((mu11 + mu22 + c1) * v2)
    return ssim.flatten(1).mean(1), (v1 / v2).flatten(1).mean(1)


def avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    """TF's `avg_pool` with a 2x2 window, stride 2 and SAME padding: an odd side is padded at its end, and the
    padding is left out of the average."""
    pad_h, pad_w = x.shape[-2] % 2, x.shape[-1] % 2
    if not (pad_h or pad_w):
        return F.avg_pool2d(x, 2, 2)
    ones = torch.ones(1, 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
    summed = F.avg_pool2d(F.pad(x, (0, pad_w, 0, pad_h)), 2, 2, divisor_override=1)
    count = F.avg_pool2d(F.pad(ones, (0, pad_w, 0, pad_h)), 2, 2, divisor_override=1)
    return summed / count


def ms_ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    max_val: float = 1.0,
    filter_size: int = 11,
    filter_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    weights: tuple[float, ...] = WEIGHTS,
) -> torch.Tensor:
    """Per-image MS-SSIM of two NCHW batches (differentiable); see the module docstring.

    Args:
        a, b: images of the same shape, values in [0, max_val].
        max_val: the dynamic range (1 for [0, 1] images; the authors' 255 on 0..255).
        filter_size, filter_sigma: the Gaussian window (shrunk at scales smaller than it).
        k1, k2: SSIM's stability constants.
        weights: one weight per scale.
    """
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ms_ssim needs two NCHW batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    w = torch.tensor(weights, dtype=a.dtype, device=a.device)
    mcs, ssim = [], None
    for level in range(len(weights)):
        ssim, cs = _ssim_cs(a, b, max_val, filter_size, filter_sigma, k1, k2)
        mcs.append(cs)
        if level < len(weights) - 1:
            a, b = avg_pool_same(a), avg_pool_same(b)
    cs = torch.stack(mcs[:-1], dim=1)
    return torch.prod(cs ** w[:-1], dim=1) * ssim ** w[-1]


def dssim(a: torch.Tensor, b: torch.Tensor, **kwargs) -> torch.Tensor:
    """Per-image structural dissimilarity (1 - MS-SSIM) / 2: 0 for identical images (the mimicry budget P)."""
    return (1.0 - ms_ssim(a, b, **kwargs)) / 2.0
