"""The SimCLR augmentation (v1 section 3, appendix A), batched on the model's device.

``Augment(cfg, out_size)`` turns a uint8 batch ``(B, C, H, W)`` into float views ``(B, 3, S, S)``:
random resized crop + horizontal flip (one resampling), colour jitter with p = 0.8 (brightness, contrast,
saturation, hue in a random order per image, clipped after each), grayscale with p = 0.2, Gaussian blur
with p = 0.5 (images > 32 px), then mean/std normalisation. Random parameters are drawn per image as
tensors by :meth:`Augment.sample_params` and applied by :meth:`Augment.apply`, so a batch is transformed
without Python loops over images or host syncs. The maths lives in :mod:`simclr.augment_ops`.

1-channel images are augmented on their one channel (saturation, hue and grayscale leave a gray image
unchanged) and repeated to 3 channels at the end, a third of the work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr.augment_ops import adjust_hsv, blend_, blur_kernel_size, gaussian_blur, resized_crop_flip, rgb_to_grayscale
from simclr.config import AugmentConfig
from simclr.crop_boxes import CROP_SAMPLERS, image_sizes, sample_crop_boxes
from simclr.errors import SimCLRError

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3  # op ids in AugmentParams.order

# The jitter's passes over a 3-channel batch: L = a linear op (brightness or contrast, :func:`blend_`),
# N = saturation and/or hue (:func:`adjust_hsv`). Every order of the four ops embeds in this sequence
# when adjacent saturation and hue share one N pass (they commute); see Augment._jitter_slots.
SCHEDULE = "LNLLNL"
# _NEXT[kind][i]: the first slot of that kind at or after slot i (i = 0..6; 6 = past the end)
_NEXT = {"L": (0, 2, 2, 3, 5, 5, 6), "N": (1, 1, 4, 4, 4, 6, 6)}
CPU_CHUNK_ELEMENTS = 1 << 19  # values per chunk of the jitter on the CPU (2 MB of float32)


@dataclass
class AugmentParams:
    """Per-image random parameters of one batch of views (all tensors have B rows)."""

    boxes: Tensor  # float (B, 4): crop (top, left, height, width) in each image's own pixels
    flip: Tensor  # bool (B,)
    jitter: Tensor  # bool (B,): colour jitter applied
    brightness: Tensor  # float (B,): factor (v2) or additive delta (v1)
    contrast: Tensor  # float (B,): factor of the distance to each channel's mean
    saturation: Tensor  # float (B,): factor of S in HSV
    hue: Tensor  # float (B,): rotation, fraction of a turn
    order: Tensor  # int64 (B, 4): order[b, k] = id of the k-th jitter op (BRIGHTNESS..HUE)
    grayscale: Tensor  # bool (B,)
    blur: Tensor  # bool (B,)
    sigma: Tensor  # float (B,): blur standard deviation in output pixels


def finetune_augment_config(base: AugmentConfig) -> AugmentConfig:
    """Crop + flip only: the training augmentation of fine-tuning, linear eval and distillation (SPEC 8-9)."""
    return dataclasses.replace(base, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)


def _check_range(key: str, pair: tuple[float, float], low: float, high: float) -> None:
    if not (low <= pair[0] <= pair[1] <= high):
        raise SimCLRError(f"augment.{key}: expected {low} <= min <= max <= {high}, got {list(pair)}")


def _check_prob(key: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise SimCLRError(f"augment.{key}: expected a probability in [0, 1], got {p}")


class _Normalize:
    """``(x - mean) / std`` as one ``addcmul``, constants cached per device; also repeats 1 -> 3 channels."""

    def __init__(self, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> None:
        if mean is None or std is None:
            self.values = None
            return
        mean3, std3 = tuple(mean) * (3 // len(mean)), tuple(std) * (3 // len(std))
        if len(mean3) != 3 or len(std3) != 3 or min(std3) <= 0:
            raise SimCLRError(f"normalisation: expected 1 or 3 means and positive stds, got {mean}, {std}")
        self.values = (tuple(1 / s for s in std3), tuple(-m / s for m, s in zip(mean3, std3, strict=True)))
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def __call__(self, x: Tensor) -> Tensor:
        if self.values is None:
            return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x
        key = (x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(
                torch.tensor(v, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) for v in self.values
            )
        scale, bias = self._cache[key]
        return torch.addcmul(bias, x, scale)  # broadcasting (B, 1, ...) repeats a gray image to 3 channels


class Augment(nn.Module):
    """The SimCLR view generator: ``forward(x_uint8 (B, C, H, W)) -> float32 (B, 3, S, S)`` (v1 section 3).

    Every op can be switched off from ``cfg`` for the paper's ablations (v1 Figure 5): ``crop=False``
    only resizes, ``flip=False``, ``color_strength=0`` or ``color_jitter_prob=0``, ``grayscale_prob=0``,
    ``blur_prob=0``, ``normalize=False`` (output in [0, 1], as the official code feeds the encoder).
    The same ``generator`` state gives the same views. No parameters; runs on ``x``'s device.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        out_size: int,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        blur_padding: str = "zeros",
    ) -> None:
        super().__init__()
        blur_prob = cfg.blur_prob if cfg.blur_prob is not None else (0.5 if out_size > 32 else 0.0)
        self.cfg = dataclasses.replace(cfg, blur_prob=blur_prob)
        self.out_size = int(out_size)
        if self.out_size < 1:
            raise SimCLRError(f"augment: output size must be positive, got {out_size}")
        _check_range("crop_scale", cfg.crop_scale, 1e-6, 1.0)
        _check_range("crop_ratio", cfg.crop_ratio, 1e-6, float("inf"))
        _check_range("blur_sigma", cfg.blur_sigma, 1e-6, float("inf"))
        for key in ("color_jitter_prob", "grayscale_prob", "blur_prob"):
            _check_prob(key, getattr(self.cfg, key))
        if cfg.color_strength < 0:
            raise SimCLRError(f"augment.color_strength: expected >= 0, got {cfg.color_strength}")
        if cfg.brightness_mode not in ("v1", "v2"):
            raise SimCLRError(f"augment.brightness_mode: expected v1 or v2, got {cfg.brightness_mode!r}")
        if cfg.crop_sampler not in CROP_SAMPLERS:
            raise SimCLRError(f"augment.crop_sampler: expected {' or '.join(CROP_SAMPLERS)}, got {cfg.crop_sampler!r}")
        if blur_padding not in ("zeros", "reflect"):
            raise SimCLRError(f"augment: blur padding must be zeros or reflect, got {blur_padding!r}")
        self.blur_padding = blur_padding
        self.use_jitter = cfg.color_strength > 0 and cfg.color_jitter_prob > 0
        self.use_gray = cfg.grayscale_prob > 0
        self.use_blur = blur_prob > 0
        self.normalize = _Normalize(mean, std) if cfg.normalize else _Normalize(None, None)

    def sample_params(
        self,
        batch: int,
        height: int | Tensor,
        width: int | Tensor,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> AugmentParams:
        """Draw every image's random parameters (v1 appendix A ranges), on ``generator``'s device, then move.

        ``height`` / ``width``: the input images' sides, ints for a uniform batch or ``(batch,)`` tensors
        (per-image sizes): each crop box lies in its own image (``augment.crop_sampler``, see
        :mod:`simclr.crop_boxes`). Strength s = ``color_strength``: brightness / contrast / saturation
        factors are uniform in [max(0, 1 - 0.8 s), 1 + 0.8 s] (v1 brightness: a delta in [-0.8 s, 0.8 s]),
        hue in [-0.2 s, 0.2 s]; the op order is a uniformly random permutation per image.
        """
        cfg = self.cfg
        gen_device = generator.device if generator is not None else torch.device(device or "cpu")

        def rand(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator, device=gen_device)

        def uniform(low: float, high: float) -> Tensor:
            return low + (high - low) * rand(batch)

        def coin(p: float) -> Tensor:
            return rand(batch) < p

        if cfg.crop:
            boxes = sample_crop_boxes(
                batch, height, width, cfg.crop_scale, cfg.crop_ratio, generator, gen_device, cfg.crop_sampler
            )
        else:
            boxes = torch.zeros(batch, 4, device=gen_device)  # the whole image: a plain resize
            boxes[:, 2], boxes[:, 3] = image_sizes(batch, height, width, gen_device)
        s = 0.8 * cfg.color_strength
        if cfg.brightness_mode == "v2":
            brightness = uniform(max(0.0, 1 - s), 1 + s)
        else:
            brightness = uniform(-s, s)
        hue_strength = min(0.2 * cfg.color_strength, 0.5)  # a half turn either way covers the circle
        params = AugmentParams(
            boxes=boxes,
            flip=coin(0.5) if cfg.flip else torch.zeros(batch, dtype=torch.bool, device=gen_device),
            jitter=coin(cfg.color_jitter_prob if self.use_jitter else 0.0),
            brightness=brightness,
            contrast=uniform(max(0.0, 1 - s), 1 + s),
            saturation=uniform(max(0.0, 1 - s), 1 + s),
            hue=uniform(-hue_strength, hue_strength),
            order=torch.argsort(rand(batch, 4), dim=1),
            grayscale=coin(cfg.grayscale_prob),
            blur=coin(cfg.blur_prob),
            sigma=uniform(*cfg.blur_sigma),
        )
        if device is not None:
            moved = {f.name: getattr(params, f.name).to(device) for f in dataclasses.fields(params)}
            params = AugmentParams(**moved)
        return params

    @staticmethod
    def _jitter_slots(order: Tensor, channels: int) -> Tensor:
        """The pass of each jitter op for each image: ``(B, 4)`` indexed by op id (BRIGHTNESS..HUE).

        3 channels: each image's ops, in its order, go greedily to the earliest pass of their kind in
        :data:`SCHEDULE` after the previous op's pass; saturation and hue that follow each other share one
        N pass. 1 channel: saturation and hue do nothing, so brightness and contrast take passes 0 and 1 in
        the image's order (the schedule is then "LL").
        """
        b = order.shape[0]
        device = order.device
        if channels == 1:
            rank = torch.argsort(order, dim=1)  # rank[b, op] = position of op in image b's order
            bright_second = (rank[:, BRIGHTNESS] > rank[:, CONTRAST]).long()
            none = torch.full_like(bright_second, -1)
            return torch.stack([bright_second, 1 - bright_second, none, none], 1)
        next_pass = {k: torch.tensor(v, device=device) for k, v in _NEXT.items()}
        slot_of_op = torch.empty(b, 4, dtype=torch.long, device=device)
        slot = torch.full((b,), -1, dtype=torch.long, device=device)
        prev_n = torch.zeros(b, dtype=torch.bool, device=device)
        for k in range(4):
            op = order[:, k]
            is_n = (op == SATURATION) | (op == HUE)
            fresh = torch.where(is_n, next_pass["N"][slot + 1], next_pass["L"][slot + 1])
            slot = torch.where(is_n & prev_n, slot, fresh)
            slot_of_op.scatter_(1, op.view(b, 1), slot.view(b, 1))
            prev_n = is_n
        return slot_of_op

    def _jitter_passes(self, p: AugmentParams, channels: int, device: torch.device) -> list[tuple[str, Tensor]]:
        """Each pass's per-image arguments: ``("L", (3, B) alpha, gamma, delta of blend_)`` or ``("N", (3, B)
        saturation factor, hue delta, 1 where the image has an op in this pass)``; identity elsewhere."""
        slot_of_op = self._jitter_slots(p.order.to(device), channels)
        slot_of_op = torch.where(p.jitter.to(device).view(-1, 1), slot_of_op, -1)  # -1: no pass
        s_bright, s_contrast, s_sat, s_hue = slot_of_op.unbind(1)
        bright, contrast = p.brightness.to(device), p.contrast.to(device)
        one, zero = torch.ones_like(bright), torch.zeros_like(bright)
        b_alpha, b_delta = (bright, zero) if self.cfg.brightness_mode == "v2" else (one, bright)
        passes = []
        for k, kind in enumerate(SCHEDULE if channels == 3 else "LL"):
            if kind == "L":
                on_b, on_c = s_bright == k, s_contrast == k
                alpha = torch.where(on_b, b_alpha, torch.where(on_c, contrast, one))
                args = (alpha, torch.where(on_c, 1 - contrast, zero), torch.where(on_b, b_delta, zero))
            else:
                on_s, on_h = s_sat == k, s_hue == k
                sat = torch.where(on_s, p.saturation.to(device), one)
                args = (sat, torch.where(on_h, p.hue.to(device), zero), (on_s | on_h).to(bright.dtype))
            passes.append((kind, torch.stack(args)))
        return passes

    def _color_jitter(self, x: Tensor, p: AugmentParams) -> Tensor:
        """Jitter with a per-image op order in a fixed sequence of batched passes (:data:`SCHEDULE`), in place.

        Each pass applies, per image, the op the image has in that pass or the identity: linear passes
        through :func:`blend_` (exact identity), N passes through :func:`adjust_hsv` with a select that
        keeps images without an op there bit-exact. So every image gets its ops in its own order, each
        followed by a clip, as the official code (SPEC-DETAILS 1.3), and unjittered images are untouched.
        On the CPU the passes run over chunks of images of about ``CPU_CHUNK_ELEMENTS`` values: the chain of
        elementwise passes is memory-bound, and a chunk's temporaries stay in cache from pass to pass.
        """
        passes = self._jitter_passes(p, x.shape[1], x.device)
        step = max(1, CPU_CHUNK_ELEMENTS // x[0].numel()) if x.device.type == "cpu" else x.shape[0]
        for start in range(0, x.shape[0], step):
            part = x[start : start + step]  # a view: blend_ writes through it
            for kind, args in passes:
                args = args[:, start : start + step]
                if kind == "L":
                    blend_(part, *args)
                elif part.device.type == "cpu":  # a free host read: only the images with an op in this pass
                    rows = (args[2] > 0).nonzero().flatten()
                    if len(rows):
                        part.index_copy_(0, rows, adjust_hsv(part.index_select(0, rows), args[0][rows], args[1][rows]))
                else:
                    shifted = adjust_hsv(part, args[0], args[1])
                    part.copy_(torch.where(args[2].view(-1, 1, 1, 1) > 0, shifted, part, out=shifted))
        return x

    def apply(self, x: Tensor, params: AugmentParams, sizes: Tensor | None = None) -> Tensor:
        """Apply ``params`` to uint8 (or float in [0, 1]) ``x`` (B, C, H, W); returns float32 (B, 3, S, S).

        ``sizes`` int (B, 2): each image's (h, w) when ``x`` is a canvas of images of different sizes
        (top-left aligned); ``params`` must then have been drawn for those sizes.
        """
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 1 or 3, H, W), got shape {tuple(x.shape)}")
        # float32 throughout, even when called under autocast (bf16 matmuls would blur the blur's identity)
        with torch.autocast(x.device.type, enabled=False):
            return self._augment(x, params, sizes)

    def _augment(self, x: Tensor, params: AugmentParams, sizes: Tensor | None = None) -> Tensor:
        cfg, size = self.cfg, self.out_size
        height, width = x.shape[2:]
        xf = x.to(torch.float32)
        if cfg.crop or cfg.flip or sizes is not None or (height, width) != (size, size):
            xf = resized_crop_flip(xf, params.boxes, params.flip if cfg.flip else None, size, sizes)
        elif xf is x:
            xf = x.clone()  # the steps below work in place on their own buffer
        if x.dtype == torch.uint8:
            xf.div_(255)  # after the crop, which is linear: fewer pixels when the input is larger
        if self.use_jitter:
            xf = self._color_jitter(xf, params)
        if self.use_gray and xf.shape[1] == 3:
            mask = params.grayscale.to(x.device).view(-1, 1, 1, 1)
            xf = torch.where(mask, rgb_to_grayscale(xf), xf, out=xf)
        if self.use_blur:
            k = blur_kernel_size(size)
            xf = gaussian_blur(xf, params.sigma, k, apply=params.blur, padding=self.blur_padding)
        return self.normalize(xf)

    def forward(self, x: Tensor, generator: torch.Generator | None = None, sizes: Tensor | None = None) -> Tensor:
        """One random view per image: uint8 (B, C, H, W) -> float32 (B, 3, S, S) on x's device.

        ``sizes`` int (B, 2): ``x`` is a canvas of images of different sizes, image b in its top-left
        ``(h_b, w_b)``; each view is cropped from its own image's full extent.
        """
        if sizes is None:
            params = self.sample_params(x.shape[0], x.shape[2], x.shape[3], generator, x.device)
        else:
            gen_device = generator.device if generator is not None else x.device
            hw = sizes.to(gen_device)
            params = self.sample_params(x.shape[0], hw[:, 0], hw[:, 1], generator, x.device)
        return self.apply(x, params, sizes)

    def two_views(
        self, x: Tensor, generator: torch.Generator | None = None, sizes: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Two independent views of each image, computed as one batch of 2B (v1 section 2.1)."""
        views = self(torch.cat([x, x]), generator, None if sizes is None else torch.cat([sizes, sizes]))
        return views[: x.shape[0]], views[x.shape[0] :]


def eval_crop_side(shorter: int, crop_fraction: float) -> int:
    """Side of the evaluation centre crop: ``rint(crop_fraction * shorter)`` in float32, as the official
    ``_compute_crop_shape`` (round half to even; 224 of 256, 88 of 100), at least 1."""
    return max(1, round(float(torch.tensor(crop_fraction, dtype=torch.float32) * shorter)))


class EvalTransform(nn.Module):
    """Evaluation preprocessing (SPEC 2.4, SPEC-DETAILS 1.7): centre crop, bicubic resize, 1 -> 3 channels.

    The crop is a centred square keeping ``crop_fraction`` of the shorter side (side ``round(crop_fraction
    * min(H, W))``, offset ((H - h) + 1) // 2, as the official code), resized to ``out_size`` with bicubic
    interpolation and clipped to [0, 1], then normalised. The bicubic is ``F.interpolate``'s antialiased
    one: the Keys cubic (a = -0.5) on half-pixel centres with the taps outside the image dropped and the
    rest renormalised, which is TF2's ``tf.image.resize(method="bicubic")`` of the official ``tf2`` code
    when enlarging (or keeping the size); when shrinking it also antialiases (TF2 does not).
    ``crop_fraction=None`` resolves like ``augment.eval_crop_fraction``: 0.875 for ``out_size`` > 32,
    else 1.0 (no crop, as for CIFAR-10).
    """

    def __init__(
        self,
        out_size: int,
        crop_fraction: float | None = None,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        normalize: bool = True,
        interpolation: str | None = None,
    ) -> None:
        super().__init__()
        self.out_size = int(out_size)
        # None keeps the default above; "bicubic" is the official evaluation resize (SPEC-DETAILS 1.7).
        if interpolation not in (None, "bilinear", "bicubic"):
            raise SimCLRError(f"augment.eval_interpolation: use bilinear or bicubic, got {interpolation!r}")
        self.interpolation = interpolation or "bicubic"
        if crop_fraction is None:
            crop_fraction = 0.875 if out_size > 32 else 1.0
        if not 0.0 < crop_fraction <= 1.0:
            raise SimCLRError(f"augment.eval_crop_fraction: expected a value in (0, 1], got {crop_fraction}")
        self.crop_fraction = crop_fraction
        self.normalize = _Normalize(mean, std) if normalize else _Normalize(None, None)

    def forward(self, x: Tensor, sizes: Tensor | None = None) -> Tensor:
        """uint8 (or float in [0, 1]) (B, C, H, W) -> float32 (B, 3, S, S).

        ``sizes`` int (B, 2): a canvas of images of different sizes (top-left aligned); each image gets the
        centre crop of its own extent, and images with the same crop side are resized together.
        """
        if sizes is None:
            height, width = x.shape[2:]
            side = eval_crop_side(min(height, width), self.crop_fraction)
            top, left = (height - side + 1) // 2, (width - side + 1) // 2
            return self.normalize(self._resize(x[:, :, top : top + side, left : left + side]))
        out = torch.empty(x.shape[0], x.shape[1], self.out_size, self.out_size, device=x.device)
        crops: dict[int, list[tuple[int, Tensor]]] = {}  # crop side -> (row, crop): one resize per side
        for i, (height, width) in enumerate(sizes.tolist()):
            side = eval_crop_side(min(height, width), self.crop_fraction)
            top, left = (height - side + 1) // 2, (width - side + 1) // 2
            crops.setdefault(side, []).append((i, x[i, :, top : top + side, left : left + side]))
        for group in crops.values():  # images of one stored side share their crop side
            rows = torch.tensor([i for i, _ in group], device=x.device)
            out[rows] = self._resize(torch.stack([c for _, c in group]))
        return self.normalize(out)

    def _resize(self, crop: Tensor) -> Tensor:
        """(B, C, side, side) crops -> float32 (B, C, S, S) in [0, 1]."""
        xf = crop.to(torch.float32)
        if crop.dtype == torch.uint8:
            xf = xf / 255
        side = crop.shape[-1]
        if side != self.out_size:
            size = (self.out_size, self.out_size)
            xf = F.interpolate(xf, size=size, mode=self.interpolation, align_corners=False, antialias=True)
            xf = xf.clamp_(0, 1)
        return xf
