"""Pure, batched tensor ops of the SimCLR augmentation (v1 section 3 and appendix A).

Every op takes a float batch ``x`` of shape ``(B, C, H, W)`` in [0, 1] with C = 3 (RGB) or C = 1 (an image
that is already gray), and per-image parameters as tensors of shape ``(B,)``; nothing loops over images
and nothing reads a value back to the host, so the ops run on the model's device at full speed. Colour ops
clip to [0, 1] as the official code does after each one. :mod:`simclr.augment` samples the parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R 601 luma, the weights of TF's rgb_to_grayscale and torchvision (SPEC section 2.2).
LUMA = (0.2989, 0.5870, 0.1140)


def _per_image(v: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) in x's dtype, to broadcast a per-image parameter over C, H, W."""
    return v.to(dtype=x.dtype).view(-1, 1, 1, 1)


def resized_crop_flip(
    images: Tensor, boxes: Tensor, flip: Tensor | None, out_size: int, sizes: Tensor | None = None
) -> Tensor:
    """Crop each image to its box, resize to ``out_size`` and mirror it, in one bilinear resampling.

    ``images`` float ``(B, C, H, W)``; ``boxes`` ``(B, 4)`` as ``(top, left, height, width)`` in pixels
    (fractional boxes are fine); ``flip`` bool ``(B,)`` or None. Returns ``(B, C, S, S)``, S = ``out_size``.
    Output pixel u samples input column ``left + (u + 0.5) * width / S - 0.5`` (pixel centres, the
    ``align_corners=False`` convention of ``F.interpolate``), so a whole-image box with S = H reproduces
    the image (exactly up to float32 rounding of the normalised grid: < 3e-5 at 224 px). Border
    padding, as a resize clamps at the edges. Bilinear stands in for the official bicubic (SPEC
    section 2.1); no antialiasing, as crops are almost always upsampled.

    ``sizes`` int ``(B, 2)``: images of different sizes in one canvas, image b top-left aligned in its own
    ``(h_b, w_b)``; every sample position is clamped into its own image, so the canvas padding is never
    read (the border rule of each image, as for a uniform batch).
    """
    if sizes is not None:
        return _ragged_crop_flip(images, boxes, flip, out_size, sizes)
    b, _, height, width = images.shape
    top, left, h, w = boxes.to(device=images.device, dtype=images.dtype).unbind(1)
    theta = images.new_zeros(b, 2, 3)
    # Affine map from output coordinates in [-1, 1] to input coordinates in [-1, 1] (pixel edges).
    sx = w / width
    theta[:, 0, 0] = sx if flip is None else torch.where(flip.to(images.device), -sx, sx)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [b, 1, out_size, out_size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _ragged_crop_flip(images: Tensor, boxes: Tensor, flip: Tensor | None, out_size: int, sizes: Tensor) -> Tensor:
    """:func:`resized_crop_flip` on a canvas of images of different sizes: a separable grid per image."""
    b, _, height, width = images.shape
    top, left, h, w = boxes.to(device=images.device, dtype=images.dtype).unbind(1)
    sizes = sizes.to(device=images.device, dtype=images.dtype)
    u = (torch.arange(out_size, device=images.device, dtype=images.dtype) + 0.5) / out_size  # (S,)
    xs = left[:, None] + u[None, :] * w[:, None] - 0.5  # (B, S) source columns, pixel units
    ys = top[:, None] + u[None, :] * h[:, None] - 0.5  # (B, S) source rows
    if flip is not None:
        xs = torch.where(flip.to(images.device).view(-1, 1), xs.flip(1), xs)
    xs = torch.minimum(xs.clamp_min(0), (sizes[:, 1] - 1).view(-1, 1))  # border rule of each image
    ys = torch.minimum(ys.clamp_min(0), (sizes[:, 0] - 1).view(-1, 1))
    gx = (2 * xs + 1) / width - 1  # pixel centre -> normalised canvas coordinate (align_corners=False)
    gy = (2 * ys + 1) / height - 1
    grid = torch.stack([gx[:, None, :].expand(b, out_size, out_size), gy[:, :, None].expand(b, out_size, out_size)], 3)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma ``0.2989 R + 0.5870 G + 0.1140 B`` of ``(B, 3, H, W)`` as ``(B, 1, H, W)`` (v1 appendix A).

    A 1-channel input is already gray and is returned as is. Broadcast the result (or ``expand``) to keep
    3 channels, as the paper's grayscale op does.
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return torch.mul(r, LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)  # one allocation


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """v2 brightness (the official default): ``clip(x * factor)``, ``factor`` (B,) (v1 appendix A)."""
    return (x * _per_image(factor, x)).clamp_(0, 1)


def adjust_brightness_additive(x: Tensor, delta: Tensor) -> Tensor:
    """v1 brightness (``tf.image.random_brightness``): ``clip(x + delta)``, ``delta`` (B,)."""
    return (x + _per_image(delta, x)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """TF ``adjust_contrast``: ``clip((x - mean_c) * factor + mean_c)``, ``factor`` (B,) (SPEC 2.2).

    ``mean_c`` is each channel's own spatial mean (torchvision blends with the mean of the grayscale image
    instead; the official code uses TF's per-channel form, SPEC-DETAILS 1.3).
    """
    mean = x.mean((2, 3), keepdim=True)
    f = _per_image(factor, x)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """TF ``adjust_saturation``: S of HSV scaled by ``factor`` (B,) and clipped to [0, 1] (SPEC 2.2).

    Closed form, without an HSV round trip: with V = max channel and chroma C = max - min, each channel is
    ``V - C r`` where r in [0, 1] depends only on the hue; scaling S = C / V by f and clipping it to 1 makes
    the chroma ``min(f C, V)``, so ``x' = V - (V - x) * min(f, V / C)``. Gray pixels (C = 0) are unchanged;
    so are 1-channel images, returned as is. (torchvision blends with the grayscale image instead.)
    """
    if x.shape[1] == 1:
        return x
    maxc = x.amax(1, keepdim=True)
    chroma = maxc - x.amin(1, keepdim=True)
    # fmin ignores the NaN / inf of V / 0 on gray pixels, where V - x is 0 anyway
    gain = torch.fmin(_per_image(factor, x).clamp_min(0), maxc / chroma)
    return (maxc - (maxc - x) * gain).clamp_(0, 1)


def adjust_hue(x: Tensor, delta: Tensor) -> Tensor:
    """Rotate the hue by ``delta`` (B,) of a full turn (TF ``adjust_hue``; v1 appendix A).

    1-channel (gray) images have no hue and are returned unchanged. See :func:`adjust_hsv`.
    """
    return adjust_hsv(x, hue=delta)


def adjust_hsv(x: Tensor, saturation: Tensor | None = None, hue: Tensor | None = None) -> Tensor:
    """Scale S by ``saturation`` (B,) (clipped to [0, 1], as :func:`adjust_saturation`) and rotate H by
    ``hue`` (B,) of a turn, in one RGB -> HSV -> RGB pass; the two commute, as they change different
    coordinates of HSV and both keep V. Either may be None (no change).

    With V = max, chroma = max - min and H the hue in sixths of a turn (torchvision's formula), the
    result is ``V - chroma' * clamp(2 - |k - 2|, 0, 1)`` with ``k = (n + H') mod 6`` for n = 5, 3, 1
    (R, G, B) and ``chroma' = min(f chroma, V)``: the closed form of HSV -> RGB, which needs no S and no
    per-sector select. Masks enter as arithmetic, not ``torch.where``, which is slow on CPU with full-size
    masks. 1-channel (gray) images are returned unchanged.
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)  # (B, H, W) each
    maxc, minc = x.amax(1), x.amin(1)
    chroma = maxc - minc
    inv = chroma.clamp_min(torch.finfo(x.dtype).tiny).reciprocal_()  # gray pixels: numerators are 0
    is_r = (maxc == r).to(x.dtype)
    is_g = (maxc == g).to(x.dtype).mul_(1 - is_r)  # ties go to R, then G, as torchvision
    hue6 = (r - g).add_(chroma, alpha=4)  # B is the max
    hue6 += is_g * ((b - r).add_(chroma, alpha=2) - hue6)
    hue6 += is_r * ((g - b) - hue6)
    hue6.mul_(inv)
    if hue is not None:
        hue6.add_((6 * hue.to(x.dtype)).view(-1, 1, 1))
    hue6 = torch.remainder(hue6, 6.0)  # on one channel: cheaper than on the three k below
    if saturation is not None:
        chroma = torch.minimum(chroma * saturation.to(x.dtype).clamp_min(0).view(-1, 1, 1), maxc)
    n = torch.arange(5, 0, -2, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # 5, 3, 1; no host copy
    k = hue6.unsqueeze(1) + n  # (B, 3, H, W) in [1, 11)
    k.sub_((k >= 6).to(x.dtype), alpha=6)
    ramp = k.sub_(2).abs_().neg_().add_(2).clamp_(0, 1)
    return torch.addcmul(maxc.unsqueeze(1), chroma.unsqueeze(1), ramp, value=-1, out=ramp).clamp_(0, 1)


def blend_(x: Tensor, alpha: Tensor, gamma: Tensor, delta: Tensor) -> Tensor:
    """One fused linear colour op, in place: ``x = clip(alpha x + gamma mean_c(x) + delta)``.

    ``alpha``, ``gamma``, ``delta`` are (B,); ``mean_c`` is each channel's spatial mean. Brightness
    (alpha = f; v1: alpha = 1, delta = d) and TF's contrast (alpha = f, gamma = 1 - f) both have this
    form, so one pass applies a different op to each image; alpha = 1 with the rest 0 is an exact
    identity. In place because a fresh full-size tensor costs page faults on CPU.
    """
    bias = _per_image(gamma, x) * x.mean((2, 3), keepdim=True) + _per_image(delta, x)  # (B, C, 1, 1)
    return torch.addcmul(bias, x, _per_image(alpha, x), out=x).clamp_(0, 1)


def blur_kernel_size(side: int) -> int:
    """Gaussian kernel side: 10 % of the image side, made odd, ``2 * floor(side / 20) + 1`` (23 at 224)."""
    return 2 * (side // 20) + 1


def gaussian_kernels(sigma: Tensor, kernel_size: int, apply: Tensor | None = None) -> Tensor:
    """Normalised 1-D Gaussian taps ``(B, K)`` for ``sigma`` (B,); a unit impulse where not ``apply``."""
    radius = kernel_size // 2
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    s = sigma.view(-1, 1)
    kernel = torch.exp(-(t * t) / (2 * s * s))
    kernel = kernel / kernel.sum(1, keepdim=True)
    if apply is not None:
        impulse = (t == 0).to(sigma.dtype).expand_as(kernel)
        kernel = torch.where(apply.to(sigma.device).view(-1, 1), kernel, impulse)
    return kernel


def _band_matrices(kernel: Tensor, n: int, padding: str) -> Tensor:
    """(B, n, n) matrices M with ``(M @ v)[i] = sum_t kernel[t] * v_pad[i + t - r]``: 1-D blur as a matmul."""
    b, k = kernel.shape
    i = torch.arange(n, device=kernel.device).view(n, 1)
    j = i + torch.arange(k, device=kernel.device).view(1, k) - k // 2  # (n, K) source index of each tap
    weights = kernel.view(b, 1, k).expand(b, n, k)
    if padding == "reflect":  # mirror without repeating the edge pixel (F.pad's "reflect"), any radius
        period = max(2 * (n - 1), 1)
        j = torch.remainder(j, period)
        j = torch.where(j >= n, period - j, j)
    else:  # zeros: taps that fall outside the image contribute nothing
        weights = weights * ((j >= 0) & (j < n)).to(kernel.dtype)
        j = j.clamp(0, n - 1)
    return kernel.new_zeros(b, n, n).scatter_add_(2, j.expand(b, n, k), weights)


def gaussian_blur(
    x: Tensor,
    sigma: Tensor,
    kernel_size: int,
    apply: Tensor | None = None,
    padding: str = "zeros",
    method: str = "auto",
) -> Tensor:
    """Separable Gaussian blur with a per-image ``sigma`` (B,) (v1 appendix A), clipped to [0, 1].

    ``x`` (B, C, H, W). ``apply`` (bool (B,)): the other images are returned bit-exact (on CUDA a final
    select, as TF32 or autocast matmuls would round even a unit impulse, and no subset is gathered, which
    would need a host sync; on the CPU only the chosen images are blurred). ``padding``: ``"zeros"`` as
    the official code ('SAME': borders darken, SPEC-DETAILS 1.4) or ``"reflect"``. ``method``: ``"conv"`` views x as
    (1, B*C, H, W) and runs one grouped convolution (groups = B*C) per axis with every image's own
    kernel; ``"matmul"`` multiplies by per-image banded (Toeplitz) matrices, ``M_h @ x @ M_w^T``, which is
    the same sum and 3x faster on CPU at 224 px, but its cost grows with the side cubed; ``"auto"`` picks
    matmul up to 256 px.
    """
    if padding not in ("zeros", "reflect"):
        raise ValueError(f"padding must be 'zeros' or 'reflect', got {padding!r}")
    if apply is not None and x.device.type == "cpu":
        # On the CPU a host read of the mask is free: blur only the chosen images (about half of them).
        rows = apply.to(x.device).nonzero().flatten()
        out = x.clone()
        if len(rows):
            chosen, sigmas = x.index_select(0, rows), sigma.to(x.device)[rows]
            out.index_copy_(0, rows, gaussian_blur(chosen, sigmas, kernel_size, None, padding, method))
        return out
    b, c, height, width = x.shape
    kernel = gaussian_kernels(sigma.to(device=x.device, dtype=x.dtype), kernel_size, apply)  # (B, K)
    if method == "auto":
        method = "matmul" if max(height, width) <= 256 else "conv"
    if method == "matmul":
        m_w = _band_matrices(kernel, width, padding)  # (B, W, W)
        m_h = _band_matrices(kernel, height, padding).repeat_interleave(c, 0)  # (B*C, H, H)
        # bmm with explicit batches: broadcasting matmul is markedly slower on CPU
        y = torch.bmm(x.reshape(b, c * height, width), m_w.transpose(1, 2))  # rows of all channels
        y = torch.bmm(m_h, y.view(b * c, height, width)).view(b, c, height, width)
    elif method == "conv":
        radius = kernel_size // 2
        weight = kernel.repeat_interleave(c, 0)  # (B*C, K): one row per group
        y = x.reshape(1, b * c, height, width)
        pad_w, pad_h = (0, radius), (radius, 0)
        if padding == "reflect":
            y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
            pad_w = pad_h = (0, 0)
        y = F.conv2d(y, weight.view(b * c, 1, 1, kernel_size), padding=pad_w, groups=b * c)
        y = F.conv2d(y, weight.view(b * c, 1, kernel_size, 1), padding=pad_h, groups=b * c)
        y = y.view(b, c, height, width)
    else:
        raise ValueError(f"method must be 'auto', 'matmul' or 'conv', got {method!r}")
    y = y.clamp_(0, 1)
    if apply is not None:
        y = torch.where(apply.to(x.device).view(-1, 1, 1, 1), y, x, out=y)
    return y
