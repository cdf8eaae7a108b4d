"""Random resized crop boxes (v1 appendix A, the "Inception crop"), sampled per image on the device.

Two samplers, both vectorised over the batch with per-image image sizes (``height`` / ``width`` are ints for
a uniform batch or ``(n,)`` tensors, so images of different sizes share one call):

- :func:`tf_crop_boxes`, the official code's sampler (TF ``sample_distorted_bounding_box`` as called by
  ``crop_and_resize`` in ``data_util.py``; SPEC section 2.1, SPEC-DETAILS 1.2): the default;
- :func:`torchvision_crop_boxes`, torchvision's ``RandomResizedCrop.get_params``.

Boxes are float32 ``(n, 4)`` rows ``(top, left, height, width)`` in input pixels (whole numbers). Nothing
loops over images and nothing is read back to the host.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CROP_SAMPLERS = ("tf", "torchvision")

# The float32 value of the TF kernel's kEps, as its double arithmetic sees it.
_TF_EPS = float(torch.tensor(1e-7, dtype=torch.float32))


def _f32(value: float, device: torch.device) -> Tensor:
    """A float32 scalar tensor: constants rounded to float32 as the TF kernel's float attributes are."""
    return torch.tensor(value, dtype=torch.float32, device=device)


def image_sizes(n: int, height: int | Tensor, width: int | Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-image heights and widths as float32 ``(n,)`` tensors on ``device`` (ints broadcast to all n)."""
    out = []
    for name, side in (("height", height), ("width", width)):
        side = torch.as_tensor(side, device=device).to(torch.float32)
        if side.dim() == 0:
            side = side.expand(n)
        if side.shape != (n,):
            raise ValueError(f"{name}: expected an int or a tensor of shape ({n},), got shape {tuple(side.shape)}")
        out.append(side)
    return out[0], out[1]


def _uniform_int(u: Tensor, count: Tensor) -> Tensor:
    """``floor(u * count)`` for u in [0, 1): a uniform integer in [0, count - 1] (0 where count <= 1).

    The minimum guards float32 rounding ``u * count`` up to ``count`` when u is just below 1.
    """
    return torch.minimum(torch.floor(u * count), (count - 1).clamp_min(0))


def _tf_tries(
    u: Tensor, img_h: Tensor, img_w: Tensor, scale: tuple[float, float], ratio: tuple[float, float], min_covered: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One batch of TF tries: ``u`` (n, k, 2) uniforms, image sides (n, 1) -> (kept, height, width), each (n, k)."""
    device = u.device
    lo, hi = _f32(ratio[0], device), _f32(ratio[1], device)
    aspect = u[..., 0] * (hi - lo) + lo  # (n, k), w / h
    min_area = _f32(scale[0], device) * img_w * img_h  # (n, 1), float32 as the kernel
    max_area = _f32(scale[1], device) * img_w * img_h
    h_min = torch.round(torch.sqrt(min_area / aspect))
    h_max = torch.round(torch.sqrt(max_area / aspect))
    # The largest height whose rounded width fits, computed in double as the kernel, then checked again.
    h_fit = torch.trunc((img_w.double() + 0.5 - _TF_EPS) / aspect.double()).to(torch.float32)
    h_fit = h_fit - (torch.round(h_fit * aspect) > img_w).to(torch.float32)
    h_max = torch.where(torch.round(h_max * aspect) > img_w, h_fit, h_max)
    h_max = torch.minimum(h_max, img_h)
    h_min = torch.minimum(h_min, h_max)
    h = h_min + _uniform_int(u[..., 1], h_max - h_min + 1)  # uniform over the allowed heights
    w = torch.round(h * aspect)
    area = w * h
    # Rounding may leave the area just outside the range: one step up, then one step down.
    small = area < min_area
    h = h + small.to(h.dtype)
    w = torch.where(small, torch.round(h * aspect), w)
    area = w * h
    big = area > max_area
    h = h - big.to(h.dtype)
    w = torch.where(big, torch.round(h * aspect), w)
    area = w * h
    ok = (area >= min_area) & (area <= max_area) & (w <= img_w) & (h <= img_h) & (w > 0) & (h > 0)
    ok &= (area >= 1) & (area / (img_w * img_h) >= _f32(min_covered, device))  # the object-coverage test
    return ok, h, w


def tf_crop_boxes(
    n: int,
    height: int | Tensor,
    width: int | Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    attempts: int = 100,
    min_covered: float = 0.1,
) -> Tensor:
    """The official crop: TF ``sample_distorted_bounding_box`` over the whole image (SPEC-DETAILS 1.2).

    Each of ``attempts`` tries draws an aspect ratio (w / h) **uniformly** in ``ratio`` (the target view's
    aspect times (3/4, 4/3); (3/4, 4/3) for square views), then a crop height uniform among the integers
    from ``round(sqrt(scale[0] * area / ratio))`` to ``round(sqrt(scale[1] * area / ratio))`` (lowered so
    that the rounded width fits, and to the image height), a width ``round(height * ratio)``, one step up
    or down when rounding left the area outside ``scale``; a try is kept if the box fits and covers at
    least ``min_covered`` of the image (so the smallest crop is 10 % of the area, not 8 %). Images where
    every try fails get the **whole image**. The offset is uniform over ``[0, side - box)`` (TF's
    ``Uniform(side - box)``: the last position is never drawn unless the box spans the whole side).
    Arithmetic is float32 with round-half-to-even, as the kernel's ``lrintf``.

    ``height`` / ``width``: ints or ``(n,)`` tensors (per-image sizes). Returns float32 ``(n, 4)`` boxes
    ``(top, left, height, width)``, drawn on ``generator``'s device, then moved to ``device``.
    """
    gen_device = generator.device if generator is not None else torch.device(device or "cpu")
    img_h, img_w = image_sizes(n, height, width, gen_device)
    u = torch.rand(n, attempts, 2, generator=generator, device=gen_device)
    # On the CPU, reading `found` back is free: the first 10 tries serve almost every image, so the rest
    # are evaluated only when needed. Elsewhere all tries run at once (no host sync). Same boxes either way.
    bounds = [0, min(10, attempts), attempts] if gen_device.type == "cpu" else [0, attempts]
    found = torch.zeros(n, dtype=torch.bool, device=gen_device)
    h, w = img_h.clone(), img_w.clone()  # fallback: the whole image
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        if start == stop or (gen_device.type == "cpu" and bool(found.all())):
            break
        ok, hs, ws = _tf_tries(u[:, start:stop], img_h.view(n, 1), img_w.view(n, 1), scale, ratio, min_covered)
        first = ok.to(torch.uint8).argmax(1, keepdim=True)  # the first kept try of this chunk
        new = ok.any(1) & ~found
        h = torch.where(new, hs.gather(1, first).squeeze(1), h)
        w = torch.where(new, ws.gather(1, first).squeeze(1), w)
        found |= new
    uo = torch.rand(n, 2, generator=generator, device=gen_device)
    top = _uniform_int(uo[:, 0], img_h - h)
    left = _uniform_int(uo[:, 1], img_w - w)
    boxes = torch.stack([top, left, h, w], 1)
    return boxes.to(device) if device is not None else boxes


def torchvision_crop_boxes(
    n: int,
    height: int | Tensor,
    width: int | Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    attempts: int = 10,
) -> Tensor:
    """torchvision's ``RandomResizedCrop`` sampler, vectorised (``augment.crop_sampler: torchvision``).

    Each of ``attempts`` tries draws an area fraction uniform in ``scale`` and an aspect ratio (w / h)
    **log-uniform** in ``ratio``, rounds to whole pixels and keeps the first try that fits inside the image;
    the offset is uniform over ``[0, side - box]``. Images where every try fails get torchvision's
    fallback: a centred box of the whole image with its aspect ratio clamped into ``ratio``.

    ``height`` / ``width``: ints or ``(n,)`` tensors. Returns float32 ``(n, 4)`` boxes ``(top, left,
    height, width)`` in pixels (whole numbers), drawn on ``generator``'s device, then moved to ``device``.
    """
    gen_device = generator.device if generator is not None else torch.device(device or "cpu")
    img_h, img_w = image_sizes(n, height, width, gen_device)
    area = (img_h * img_w).view(n, 1)
    u = torch.rand(n, attempts, 2, generator=generator, device=gen_device)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect))  # (n, attempts)
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= img_w.view(n, 1)) & (h > 0) & (h <= img_h.view(n, 1))
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # index of the first fitting try (0 if none)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # torchvision's fallback: the whole image with its aspect ratio clamped into `ratio`, centred.
    in_ratio = img_w / img_h
    lo, hi = min(ratio), max(ratio)
    fall_w = torch.where(in_ratio > hi, torch.round(img_h * hi), img_w)
    fall_h = torch.where(in_ratio < lo, torch.round(img_w / lo), img_h)
    ok = fits.any(1)
    w = torch.where(ok, w, fall_w)
    h = torch.where(ok, h, fall_h)
    uo = torch.rand(n, 2, generator=generator, device=gen_device)
    top = torch.where(ok, _uniform_int(uo[:, 0], img_h - h + 1), torch.div(img_h - h, 2, rounding_mode="floor"))
    left = torch.where(ok, _uniform_int(uo[:, 1], img_w - w + 1), torch.div(img_w - w, 2, rounding_mode="floor"))
    boxes = torch.stack([top, left, h, w], 1)
    return boxes.to(device) if device is not None else boxes


def sample_crop_boxes(
    n: int,
    height: int | Tensor,
    width: int | Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    sampler: str = "tf",
) -> Tensor:
    """Crop boxes from the sampler named by ``augment.crop_sampler``: ``"tf"`` (the official one, default)
    or ``"torchvision"``; see :func:`tf_crop_boxes` and :func:`torchvision_crop_boxes`."""
    if sampler == "tf":
        return tf_crop_boxes(n, height, width, scale, ratio, generator, device)
    if sampler == "torchvision":
        return torchvision_crop_boxes(n, height, width, scale, ratio, generator, device)
    raise ValueError(f"unknown crop sampler {sampler!r}; use {' or '.join(CROP_SAMPLERS)}")
