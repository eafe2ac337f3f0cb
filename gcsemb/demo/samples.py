"""Sample photographs for the demo, notebooks and tests, made offline.

The photographs ship inside scikit-image's wheel (astronaut, cat, coffee, rocket, ...). Each is
varied (crops, flips, rotations, rescales, grayscale) and re-encoded as JPEG, PNG or WebP, so a
few hundred distinct images exist without any download. Deterministic: the same call gives the
same bytes.

Example:
    >>> names = [name for name, _ in sample_images(5)]
    >>> names[0]
    'photos/astronaut/original.jpg'
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image, ImageOps

PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "camera.png",
    "moon.png",
    "coins.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "ihc.png",
    "page.png",
    "clock_motion.png",
    "cell.png",
    "motorcycle_right.png",
)


def _crop(box: tuple[float, float, float, float]) -> Callable[[Image.Image], Image.Image]:
    def crop(im: Image.Image) -> Image.Image:
        w, h = im.size
        return im.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))

    return crop


VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "original": lambda im: im,
    "mirrored": ImageOps.mirror,
    "flipped": ImageOps.flip,
    "rotated 90": lambda im: im.rotate(90, expand=True),
    "rotated 180": lambda im: im.rotate(180),
    "half size": lambda im: im.reduce(2),
    "crop top-left": _crop((0, 0, 0.6, 0.6)),
    "crop top-right": _crop((0.4, 0, 1, 0.6)),
    "crop bottom-left": _crop((0, 0.4, 0.6, 1)),
    "crop bottom-right": _crop((0.4, 0.4, 1, 1)),
    "crop centre": _crop((0.2, 0.2, 0.8, 0.8)),
    "grayscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "high contrast": ImageOps.autocontrast,
    "posterized": lambda im: ImageOps.posterize(im, 3),
    "small ü #1": lambda im: im.reduce(4),
    "tilted": lambda im: im.rotate(12, expand=False),
    "equalized": ImageOps.equalize,
}
_FORMATS = (
    ("jpg", "JPEG", {"quality": 90}),
    ("png", "PNG", {"compress_level": 1}),
    ("webp", "WEBP", {"quality": 80, "method": 0}),
)


def photo_dir() -> Path:
    """The folder of scikit-image's bundled photographs."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("The sample images come from scikit-image: pip install 'gcsemb[demo]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """Encode a PIL image to bytes in ``fmt``."""
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def sample_images(n: int | None = None, *, prefix: str = "photos") -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, bytes)`` of varied sample photographs (306 at most).

    Args:
        n: How many (default all, 306).
        prefix: Folder the names start with.

    Yields:
        Object names like ``photos/chelsea/mirrored.jpg`` and their encoded bytes.
    """
    count = 0
    folder = photo_dir()
    for variant_index, (variant, transform) in enumerate(VARIANTS.items()):
        for photo_index, file in enumerate(PHOTOS):
            if n is not None and count >= n:
                return
            with Image.open(folder / file) as im:
                image = transform(im.convert("RGB"))
            ext, fmt, params = _FORMATS[(photo_index + variant_index) % 3 if variant_index else 0]
            if fmt != "JPEG" and image.width * image.height > 250_000:  # keep the demo quick
                ext, fmt, params = _FORMATS[0]
            yield f"{prefix}/{Path(file).stem}/{variant}.{ext}", encode(image, fmt, **params)
            count += 1


def broken_images(prefix: str = "photos/broken") -> dict[str, bytes]:
    """Files a real bucket also holds: each must be recorded as a failure, never end a run."""
    with Image.open(photo_dir() / "chelsea.png") as im:
        jpeg = encode(im.convert("RGB"), "JPEG", quality=90)
    return {
        f"{prefix}/truncated.jpg": jpeg[: len(jpeg) // 2],
        f"{prefix}/empty.png": b"",
        f"{prefix}/not-an-image.jpg": b"<html><body>404 Not Found</body></html>",
    }
