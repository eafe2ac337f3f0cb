"""The model's preprocess on decoded uint8 tensors, as open_clip applies it to PIL images.

:class:`Preprocess` holds the model's settings (size, mean and std, interpolation, resize mode);
:func:`resize_into` resizes a group of images of one stored size (antialiased), makes them
upright and centre-crops or pads them into their rows of the batch
:mod:`gcsemb.images.tensor_decode` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

import torch
import torch.nn.functional as nnf

__all__ = ["Preprocess", "resize_into"]


@dataclass(frozen=True)
class Preprocess:
    """The model's inference preprocess, as open_clip's ``image_transform_v2`` applies it.

    Attributes:
        size: Output ``(height, width)``.
        mean: Per-channel mean, on the 0..1 scale.
        std: Per-channel standard deviation, on the 0..1 scale.
        interpolation: ``"bicubic"`` or ``"bilinear"``.
        resize_mode: ``"shortest"`` (resize the shorter side, centre crop), ``"longest"``
            (resize the longer side, pad with ``fill_color``) or ``"squash"`` (resize to size).
        fill_color: Padding value (0..255) of ``"longest"``.
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_cfg(cls, cfg: Any) -> Preprocess:
        """Build from ``model.visual.preprocess_cfg`` (a dict), a ``PreprocessCfg``, or a model.

        Args:
            cfg: A mapping with open_clip's keys (``size``, ``mean``, ``std``, ``interpolation``,
                ``resize_mode``, ``fill_color``; missing ones take open_clip's defaults), an
                open_clip ``PreprocessCfg``, a :class:`Preprocess`, an object with a
                ``preprocess_cfg`` attribute, or an open_clip model (``model.visual``).

        Returns:
            The resolved :class:`Preprocess`.

        Example:
            >>> Preprocess.from_cfg({"size": 256, "interpolation": "random"}).size
            (256, 256)
        """
        if isinstance(cfg, Preprocess):
            return cfg
        if not isinstance(cfg, Mapping) and is_dataclass(cfg) and not isinstance(cfg, type):
            cfg = asdict(cfg)
        for attr in ("preprocess_cfg", "visual", "_model"):  # an Embedder or open_clip model
            if not isinstance(cfg, Mapping) and hasattr(cfg, attr):
                return cls.from_cfg(getattr(cfg, attr))
        if not isinstance(cfg, Mapping):
            raise TypeError(f"no preprocess config in {type(cfg).__name__}")
        size = cfg.get("size", 224)
        size = (int(size), int(size)) if isinstance(size, int | float) else tuple(size)[-2:]

        def triple(value: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
            if value is None:
                return default
            value = (value,) * 3 if isinstance(value, int | float) else tuple(value)
            return (float(value[0]), float(value[1]), float(value[2]))

        mode = cfg.get("resize_mode") or "shortest"
        if mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"unknown resize_mode {mode!r}")
        return cls(
            size=(int(size[0]), int(size[1])),
            mean=triple(cfg.get("mean"), cls.mean),
            std=triple(cfg.get("std"), cls.std),
            # open_clip maps anything but "bilinear" (e.g. "random") to bicubic at inference
            interpolation="bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic",
            resize_mode=mode,
            fill_color=int(cfg.get("fill_color") or 0),
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The ``(height, width)`` an upright image is resized to, before crop or pad.

        Follows torchvision's ``Resize(int)`` (shorter side to size, longer side truncated) for
        square ``shortest`` and open_clip's ``ResizeKeepRatio`` (rounded) otherwise.
        """
        th, tw = self.size
        if self.resize_mode == "squash":
            return th, tw
        if self.resize_mode == "shortest" and th == tw:
            short, long = min(width, height), max(width, height)
            new_long = int(th * long / short)
            return (new_long, th) if width <= height else (th, new_long)
        ratios = (height / th, width / tw)
        # open_clip's ResizeKeepRatio ignores the interpolation and fits the shorter side for
        # "shortest" with a non-square size; "longest" fits the longer side
        ratio = max(ratios) if self.resize_mode == "longest" else min(ratios)
        return round(height / ratio), round(width / ratio)

    @property
    def mode(self) -> str:
        """The interpolation mode name of ``torch.nn.functional.interpolate``.

        Non-square ``shortest`` always uses bicubic, as open_clip's ``ResizeKeepRatio`` does.
        """
        square_shortest = self.resize_mode == "shortest" and self.size[0] == self.size[1]
        if self.resize_mode == "squash" or square_shortest or self.resize_mode == "longest":
            return self.interpolation
        return "bicubic"


def _orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Make ``(..., H, W)`` upright for an EXIF orientation, as PIL's ``exif_transpose``."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-2, -1)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-2, -1)
    if orientation == 6:
        return x.rot90(-1, (-2, -1))
    if orientation == 7:
        return x.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return x.rot90(1, (-2, -1))
    return x


def _place(src: torch.Tensor, dst: torch.Tensor, fill: float) -> None:
    """Centre-crop or pad ``src`` (k, 3, h, w) into ``dst`` (k, 3, H, W), as torchvision does."""
    slices_src, slices_dst = [], []
    for have, want in zip(src.shape[-2:], dst.shape[-2:], strict=True):
        if have >= want:
            start = int(round((have - want) / 2.0))
            slices_src.append(slice(start, start + want))
            slices_dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            slices_src.append(slice(0, have))
            slices_dst.append(slice(start, start + have))
    if src.shape[-2] < dst.shape[-2] or src.shape[-1] < dst.shape[-1]:
        dst.fill_(fill)
    dst[..., slices_dst[0], slices_dst[1]] = src[..., slices_src[0], slices_src[1]]


def resize_into(
    members: list[int],
    decoded: dict[int, torch.Tensor],
    key: tuple[int, int, int],
    cfg: Preprocess,
    *,
    out: torch.Tensor,
    row: dict[int, int],
) -> None:
    """Resize, orient and crop images of one stored size into their rows of ``out`` (0..255).

    Resizing happens in the stored orientation (with the target size swapped for orientations
    5..8), before the flips: resizing commutes with them, and flips of the small image are cheap.
    """
    height, width, orientation = key
    upright_w, upright_h = (height, width) if orientation >= 5 else (width, height)
    rh, rw = cfg.resized_size(upright_w, upright_h)
    if orientation >= 5:  # resize in stored orientation; resizing commutes with flips
        rh, rw = rw, rh
    fill = float(cfg.fill_color) if cfg.resize_mode == "longest" else 0.0
    if out.device.type == "cpu":  # one at a time: torch resizes uint8 like PIL, no copies
        batches = [([i], decoded.pop(i)[None]) for i in members]
    else:  # one call for the group
        batches = [(members, torch.stack([decoded.pop(i).expand(3, -1, -1) for i in members]))]
    for rows, x in batches:
        if (rh, rw) != (height, width):
            x = _resize(x, (rh, rw), cfg.mode)
        x = _orient(x, orientation)
        for j, i in enumerate(rows):
            _place(x[j : j + 1], out[row[i] : row[i] + 1], fill)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize of a uint8 ``(k, c, h, w)`` batch, with values rounded to 0..255.

    On CPU torch resizes uint8 directly, as PIL does (8-bit intermediate, about 50 times faster
    than in float); elsewhere in float32, then clamped and rounded like PIL's 8-bit result.
    """
    if x.device.type == "cpu":
        return nnf.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    x = nnf.interpolate(x.float(), size=size, mode=mode, align_corners=False, antialias=True)
    return x.clamp_(0, 255).round_()
