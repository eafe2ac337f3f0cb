"""Time gcsemb.decode.decode_image on JPEGs, with and without the reduced-size (draft) fast path.

Run: .venv/bin/python benchmarks/bench_decode.py [runs]
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import sys
import time

import numpy as np
import PIL
from PIL import Image

from gcsemb.decode import decode_image


def natural_jpeg(width: int, height: int, noise: float, quality: int = 90) -> bytes:
    """Smooth colour gradients, a ripple and Gaussian noise of std ``noise``: photo-like."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    rgb += 40 * np.sin(x / 37.0)[..., None] + rng.normal(0, noise, rgb.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def median_ms(data: bytes, min_side: int | None, runs: int) -> tuple[float, tuple[int, int]]:
    decode_image(data, min_side=min_side)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        d = decode_image(data, min_side=min_side)
        times.append(time.perf_counter() - start)
    assert d.ok, d.error
    return statistics.median(times) * 1000, d.image.size


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    print(
        f"Pillow {PIL.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, one thread, median of {runs} runs\n"
    )
    print(
        f"{'JPEG (q=90)':<12}{'noise':>6}{'KiB':>6}  {'min_side':<9}{'decoded':>10}{'ms/image':>10}"
    )
    for width, height in ((640, 480), (3000, 2000)):
        for noise in (2.0, 8.0):
            data = natural_jpeg(width, height, noise)
            for min_side in (None, 224):
                ms, (w, h) = median_ms(data, min_side, runs)
                print(
                    f"{f'{width}x{height}':<12}{noise:>6.0f}{len(data) // 1024:>6}  "
                    f"{min_side!s:<9}{f'{w}x{h}':>10}{ms:>10.2f}"
                )


if __name__ == "__main__":
    main()
