"""Tests for gcsemb.images.decode: every image is generated in memory with PIL."""

from __future__ import annotations

import io
import json
import resource
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image, ImageFile

import gcsemb.images.decode as decode_module
import gcsemb.images.rgb_conversion as rgb_conversion
from gcsemb.images.decode import (
    DEFAULT_MAX_PIXELS,
    Decoded,
    PixelBudget,
    allowed_formats,
    decode_image,
    decoded_bytes,
    decoder_versions,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def natural(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus mild noise: compresses and decodes like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    rgb += 40 * np.sin(x / 37.0)[..., None] + rng.normal(0, 8, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def assert_colour(image: Image.Image, xy: tuple[int, int], expected, tol: int = 30) -> None:
    actual = image.getpixel(xy)
    assert max(abs(a - e) for a, e in zip(actual, expected, strict=True)) <= tol, (actual, expected)


def bomb_png(width: int, height: int, bit_depth: int, colour_type: int, plte: bytes = b"") -> bytes:
    """A real, valid PNG of zeros built row by row, so the test never holds the pixels."""
    row = bytes(1 + (width * bit_depth + 7) // 8)  # filter byte + packed zero pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * 256) for _ in range(height // 256))
    idat += z.compress(row * (height % 256)) + z.flush()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    plte_chunk = chunk(b"PLTE", plte) if plte else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + plte_chunk
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


# --- EXIF orientation -------------------------------------------------------------------------

# A 120x80 image as stored: red top-left quadrant, green top-right, blue bottom half.
# Where a viewer shows the stored top-left and top-right corners, per the EXIF spec's
# (0th row, 0th column) sides for each orientation value, independent of PIL's own table.
VISUAL_CORNERS = {
    1: ("TL", "TR"),
    2: ("TR", "TL"),
    3: ("BR", "BL"),
    4: ("BL", "BR"),
    5: ("TL", "BL"),
    6: ("TR", "BR"),
    7: ("BR", "TR"),
    8: ("BL", "TL"),
}


def stored_pattern() -> Image.Image:
    im = Image.new("RGB", (120, 80), BLUE)
    im.paste(RED, (0, 0, 60, 40))
    im.paste(GREEN, (60, 0, 120, 40))
    return im


def corner_xy(image: Image.Image, corner: str) -> tuple[int, int]:
    w, h = image.size
    return (
        w // 6 if corner[1] == "L" else w - 1 - w // 6,
        h // 6 if corner[0] == "T" else h - 1 - h // 6,
    )


def with_orientation(fmt: str, orientation: int) -> bytes:
    im = stored_pattern()
    if fmt == "TIFF":
        return encode(im, "TIFF", tiffinfo={0x0112: orientation})
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.mark.parametrize(
    ("fmt", "orientation", "min_side"),
    [("JPEG", o, None) for o in range(1, 9)]
    + [("JPEG", o, 16) for o in (3, 6, 8)]
    + [(fmt, o, None) for fmt in ("PNG", "WEBP", "TIFF") for o in (6, 7)],
)
def test_exif_orientation_makes_the_image_upright(fmt, orientation, min_side):
    d = decode_image(with_orientation(fmt, orientation), min_side=min_side)
    assert d.ok, d.error
    assert d.image.mode == "RGB"
    assert (d.width, d.height) == ((80, 120) if orientation >= 5 else (120, 80))
    w, h = d.image.size
    assert (w < h) == (orientation >= 5)  # the reduced decode is rotated too
    red_at, green_at = VISUAL_CORNERS[orientation]
    assert_colour(d.image, corner_xy(d.image, red_at), RED, tol=60)
    assert_colour(d.image, corner_xy(d.image, green_at), GREEN, tol=60)


# --- transparency -----------------------------------------------------------------------------


def half_transparent(mode: str) -> Image.Image:
    """Left half fully transparent (with a black colour underneath), right half opaque."""
    if mode == "RGBA":
        im = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
        im.paste((200, 30, 60, 255), (20, 0, 40, 20))
    elif mode == "LA":
        im = Image.new("LA", (40, 20), (0, 0))
        im.paste((200, 255), (20, 0, 40, 20))
    else:  # "P": palette index 0 is transparent, 1 is the opaque colour
        im = Image.new("P", (40, 20), 0)
        im.putpalette([0, 0, 0, 200, 30, 60] + [0] * 762)
        im.paste(1, (20, 0, 40, 20))
        im.info["transparency"] = 0
    return im


OPAQUE = {"RGBA": (200, 30, 60), "LA": (200, 200, 200), "P": (200, 30, 60)}


@pytest.mark.parametrize("background", [(255, 255, 255), (10, 200, 30)])
@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("P", "GIF"),
        ("RGBA", "WEBP"),
        ("RGBA", "TIFF"),
    ],
)
def test_transparent_pixels_become_exactly_the_background(mode, fmt, background):
    im = half_transparent(mode)
    params = {"lossless": True} if fmt == "WEBP" else {}
    if mode == "P":
        params["transparency"] = 0
    d = decode_image(encode(im, fmt, **params), background=background)
    assert d.ok, d.error
    assert d.image.mode == "RGB" and d.image.size == (40, 20)
    assert d.image.getpixel((5, 10)) == background
    assert d.image.getpixel((35, 10)) == OPAQUE[mode]


def test_partial_alpha_is_blended_and_colour_key_transparency_is_applied():
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 128))
    d = decode_image(encode(im, "PNG"), background=(0, 0, 255))
    assert_colour(d.image, (4, 4), (128, 0, 127), tol=2)
    keyed = Image.new("RGB", (8, 8), (0, 0, 0))
    keyed.paste((90, 90, 90), (4, 0, 8, 8))
    d = decode_image(encode(keyed, "PNG", transparency=(0, 0, 0)), background=(1, 2, 3))
    assert d.image.getpixel((1, 1)) == (1, 2, 3)
    assert d.image.getpixel((6, 1)) == (90, 90, 90)


# --- modes and formats ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "colour", "fmt", "expected"),
    [
        ("RGB", (30, 140, 220), "JPEG", (30, 140, 220)),
        ("CMYK", (0, 255, 255, 0), "JPEG", RED),
        ("CMYK", (0, 0, 0, 0), "TIFF", (255, 255, 255)),
        ("L", 100, "JPEG", (100, 100, 100)),
        ("L", 100, "PNG", (100, 100, 100)),
        ("1", 1, "PNG", (255, 255, 255)),
        ("I;16", 32768, "PNG", (128, 128, 128)),
        ("I", 40000, "TIFF", (156, 156, 156)),
        ("F", 0.5, "TIFF", (128, 128, 128)),
        ("P", None, "PNG", (30, 140, 220)),
        ("P", None, "GIF", (30, 140, 220)),
        ("RGB", (30, 140, 220), "WEBP", (30, 140, 220)),
        ("RGB", (30, 140, 220), "TIFF", (30, 140, 220)),
        ("RGB", (30, 140, 220), "BMP", (30, 140, 220)),
        ("RGB", (30, 140, 220), "GIF", (30, 140, 220)),
        ("RGB", (30, 140, 220), "PNG", (30, 140, 220)),
    ],
)
def test_every_mode_and_format_comes_out_rgb_with_the_right_colour(mode, colour, fmt, expected):
    if mode == "P":
        im = Image.new("RGB", (64, 48), (30, 140, 220)).convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        im = Image.new(mode, (64, 48), colour)
    d = decode_image(encode(im, fmt))
    assert d.ok, d.error
    assert d.image.mode == "RGB"
    assert d.image.size == (d.width, d.height) == (64, 48)
    assert_colour(d.image, (32, 24), expected, tol=6)


def test_16bit_gradient_spans_the_8bit_range():
    ramp = np.linspace(0, 65535, 256, dtype=np.float64).round().astype(np.uint16)
    im = Image.fromarray(np.tile(ramp, (16, 1)))
    assert im.mode == "I;16"
    d = decode_image(encode(im, "PNG"))
    assert d.ok, d.error
    out = np.asarray(d.image)[..., 0].astype(int)
    assert out.min() <= 2 and out.max() >= 253
    assert 120 <= out.mean() <= 135  # not clipped to white
    assert np.all(np.diff(out[0]) >= 0)  # still a monotonic ramp


def test_float_image_with_arbitrary_range_is_stretched():
    im = Image.fromarray(np.linspace(-1000, 3000, 64 * 8, dtype=np.float32).reshape(8, 64))
    d = decode_image(encode(im, "TIFF"))
    out = np.asarray(d.image)[..., 0]
    assert out.min() == 0 and out.max() == 255


@pytest.mark.parametrize(
    ("fmt", "params"), [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})]
)
def test_animation_decodes_its_first_frame(fmt, params):
    frames = [Image.new("RGB", (32, 24), c) for c in (RED, GREEN, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    d = decode_image(data)
    assert d.ok, d.error
    assert d.image.mode == "RGB" and d.image.size == (32, 24)
    assert_colour(d.image, (16, 12), RED, tol=4)


# --- reduced (draft) decoding -----------------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return encode(natural(3000, 2000), "JPEG", quality=90)


def test_draft_decodes_small_but_reports_full_size(big_jpeg):
    fast = decode_image(big_jpeg, min_side=224)
    full = decode_image(big_jpeg)
    assert fast.ok and full.ok
    assert (fast.width, fast.height) == (full.width, full.height) == (3000, 2000)
    assert full.image.size == (3000, 2000)
    assert 224 <= min(fast.image.size) < 2000
    a = np.asarray(fast.image.resize((336, 224), Image.Resampling.BICUBIC), dtype=np.float32)
    b = np.asarray(full.image.resize((336, 224), Image.Resampling.BICUBIC), dtype=np.float32)
    assert np.abs(a - b).mean() < 4.0


@pytest.mark.parametrize("min_side", [1, 100, 479, 480, 1000])
def test_draft_never_goes_below_min_side(min_side):
    d = decode_image(encode(natural(640, 480), "JPEG"), min_side=min_side)
    assert (d.width, d.height) == (640, 480)
    assert min(d.image.size) >= min(min_side, 480)


def test_min_side_leaves_other_formats_at_full_size():
    d = decode_image(encode(natural(640, 480), "PNG"), min_side=100)
    assert d.image.size == (640, 480)


# --- refusals ---------------------------------------------------------------------------------


def refused(data: bytes, *words: str, **kwargs) -> Decoded:
    d = decode_image(data, **kwargs)
    assert d.ok is False
    assert (d.image, d.width, d.height) == (None, 0, 0)
    assert all(w in d.error for w in words), d.error
    return d


def test_empty_file():
    refused(b"", "empty", "0 bytes")


@pytest.mark.parametrize(("fmt", "params"), [("JPEG", {}), ("PNG", {}), ("WEBP", {}), ("TIFF", {})])
def test_truncated_files_are_refused(fmt, params):
    data = encode(natural(200, 150), fmt, **params)
    refused(data[: len(data) // 2], "truncated")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", ("not an image", "HTML")),
        (b"just some text that someone named cat.jpg\n", ("not an image", "text")),
        (np.random.default_rng(1).bytes(5000), ("not an image",)),
        (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', ("SVG",)),
        (b"\x00\x00\x00\x18ftypheic" + bytes(100), ("HEIC",)),
        (b"\xff\xd8\xff\xe0\x00", ("JPEG",)),
    ],
)
def test_non_images_are_refused_with_what_they_look_like(data, words):
    refused(data, *words)


def test_bomb_beyond_pil_limit_is_refused_fast_without_allocating():
    data = bomb_png(30000, 30000, 1, 0)
    assert len(data) < 200_000
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    refused(data, "decompression bomb", "900000000 pixels", str(DEFAULT_MAX_PIXELS))
    assert time.perf_counter() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100_000  # KiB on Linux


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_below_pil_limit_is_refused_by_our_header_check():
    data = bomb_png(12000, 12000, 8, 3, plte=bytes(3))  # 144 MB of pixels if decoded
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    refused(data, "decompression bomb", "12000x12000", "89478485")
    assert time.perf_counter() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100_000


def test_max_pixels_is_respected():
    data = encode(natural(200, 100), "PNG")
    refused(data, "decompression bomb", "200x100", "19999", max_pixels=19_999)
    assert decode_image(data, max_pixels=20_000).ok


def test_truncated_images_stay_refused_after_import():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the corrupt EXIF/TIFF tags
def test_corrupted_bytes_never_raise():
    rng = np.random.default_rng(7)
    seeds = [encode(natural(48, 32), f) for f in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")]
    for data in seeds:
        for _ in range(40):
            bad = bytearray(data)
            for i in rng.integers(0, len(bad), size=rng.integers(1, 8)):
                bad[i] = rng.integers(0, 256)
            d = decode_image(bytes(bad[: rng.integers(1, len(bad) + 1)]))
            assert d.ok or d.error


# --- threads ----------------------------------------------------------------------------------


def varied_images() -> list[bytes]:
    out = []
    for i in range(50):
        im = natural(64 + 7 * i, 48 + 5 * i, seed=i)
        kind = i % 10
        if kind == 0:
            out.append(encode(im, "JPEG", quality=85))
        elif kind == 1:
            out.append(with_orientation("JPEG", 1 + i % 8))
        elif kind == 2:
            out.append(encode(im.convert("RGBA"), "PNG"))
        elif kind == 3:
            out.append(encode(im.convert("P"), "GIF"))
        elif kind == 4:
            out.append(encode(im, "WEBP"))
        elif kind == 5:
            out.append(encode(im.convert("CMYK"), "JPEG"))
        elif kind == 6:
            out.append(encode(im.convert("L"), "TIFF"))
        elif kind == 7:
            out.append(encode(im, "BMP"))
        elif kind == 8:
            data = encode(im, "JPEG")
            out.append(data[: len(data) // 2])
        else:
            out.append(b"<html></html>" if i % 20 else b"")
    return out


def test_threaded_decoding_matches_sequential():
    images = varied_images()
    sequential = [decode_image(b, min_side=48) for b in images]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda b: decode_image(b, min_side=48), images * 2))
    assert sum(d.ok for d in sequential) == 40
    for s, t in zip(sequential * 2, threaded, strict=True):
        assert (s.ok, s.error, s.width, s.height) == (t.ok, t.error, t.width, t.height)
        if s.ok:
            assert s.image.mode == t.image.mode == "RGB"
            assert s.image.tobytes() == t.image.tobytes()


# --- bit depth: 8-bit in float32 strips, huge images reduced first ----------------------------


def test_float_conversion_values_nan_and_infinities():
    values = np.array([[0.0, 0.25, 0.5, 1.0, np.nan, np.inf, -np.inf, 0.75]], np.float32)
    d = decode_image(encode(Image.fromarray(values), "TIFF"))
    assert d.ok, d.error
    assert list(np.asarray(d.image)[0, :, 0]) == [0, 64, 128, 255, 0, 0, 0, 191]


def test_arbitrary_range_is_stretched_exactly():
    a = np.linspace(-1000, 3000, 64 * 8, dtype=np.float32).reshape(8, 64)
    for values in (a, a.astype(np.int32)):
        expected = np.floor((values.astype(np.float64) + 1000) * 255 / 4000 + 0.5)
        out = np.asarray(decode_image(encode(Image.fromarray(values), "TIFF")).image)[..., 0]
        assert np.abs(out - expected).max() <= 1 and (out == expected).mean() > 0.99


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(np.arange(300 * 200, dtype=np.uint16).reshape(200, 300)),
        lambda: Image.fromarray(np.linspace(-5, 9, 300 * 200, dtype=np.float32).reshape(200, 300)),
        lambda: Image.fromarray(np.arange(300 * 200, dtype=np.int32).reshape(200, 300) * 7),
        lambda: natural(300, 200).convert("RGBA"),
        lambda: half_transparent("P").resize((300, 200)),
        lambda: natural(300, 200).convert("CMYK"),
    ],
)
def test_conversion_in_strips_equals_whole_image(make, monkeypatch):
    data = encode(make(), "TIFF")
    whole = decode_image(data)
    monkeypatch.setattr(rgb_conversion, "_STRIP_PIXELS", 1000)  # 200 strips of 3-4 rows
    strips = decode_image(data)
    assert whole.ok and strips.ok
    assert whole.image.tobytes() == strips.image.tobytes()


@pytest.mark.parametrize(
    "make",
    [
        lambda: natural(1600, 1200),
        lambda: natural(1600, 1200).convert("L"),
        lambda: natural(1600, 1200).convert("RGBA"),
        lambda: natural(1600, 1200).convert("P"),
        lambda: Image.fromarray(np.asarray(natural(1600, 1200).convert("L"), "u2") * 257),
        lambda: Image.fromarray(np.asarray(natural(1600, 1200).convert("L"), "f4") / 255),
    ],
)
def test_huge_images_are_reduced_early_and_look_the_same(make, monkeypatch):
    data = encode(make(), "PNG" if make().mode != "F" else "TIFF")
    full = decode_image(data)
    monkeypatch.setattr(decode_module, "_HUGE_PIXELS", 0)  # treat 1600x1200 as huge
    monkeypatch.setattr(rgb_conversion, "_STRIP_PIXELS", 50_000)
    small = decode_image(data, min_side=100)
    assert small.ok, small.error
    assert (small.width, small.height) == (full.width, full.height) == (1600, 1200)
    assert small.image.size == (267, 200)  # 1200 // (2 * 100) = 6; both sides >= 2 * min_side
    a = np.asarray(small.image.resize((133, 100), Image.Resampling.BICUBIC), np.float32)
    b = np.asarray(full.image.resize((133, 100), Image.Resampling.BICUBIC), np.float32)
    assert np.abs(a - b).mean() < 1.5


def test_small_images_are_not_reduced():
    d = decode_image(encode(natural(1600, 1200), "PNG"), min_side=100)
    assert d.image.size == (1600, 1200)  # below 16 Mpx: full size, as before


def test_reduced_image_is_still_upright(monkeypatch):
    monkeypatch.setattr(decode_module, "_HUGE_PIXELS", 0)
    d = decode_image(with_orientation("PNG", 6), min_side=10)
    assert (d.width, d.height) == (80, 120) and d.image.size == (20, 30)
    assert_colour(d.image, corner_xy(d.image, "TR"), RED, tol=60)


# --- peak memory of big images (each in a fresh process) --------------------------------------

PEAK = """
import json, os, resource, sys
from gcsemb.images.decode import decode_image
data = open(sys.argv[1], "rb").read()
with open("/proc/self/statm") as f:
    rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = max(rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
d = decode_image(data, **json.loads(sys.argv[2]))
rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
out = {"rise": rise, "error": d.error, "full": [d.width, d.height]}
if d.ok:
    out["size"] = list(d.image.size)
    out["corners"] = [d.image.getpixel((0, 0)), d.image.getpixel((-1, -1))]
print(json.dumps(out))
"""


def peak_rise(path: Path, **kwargs) -> dict:
    """Decodes a file in a fresh interpreter: how far its peak RSS rose above that before."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(path), json.dumps(kwargs)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)


@pytest.fixture(scope="session")
def big_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 9000x9000 16-bit PNG (ramp 0..65535) and an 8000x8000 float TIFF (-1000..2900)."""
    folder = tmp_path_factory.mktemp("big")
    ramp = np.empty((9000, 9000), np.uint16)
    for top in range(0, 9000, 1000):  # row blocks: the test never holds float copies
        diagonal = np.arange(9000) + np.arange(top, top + 1000)[:, None]  # 0..17998
        ramp[top : top + 1000] = diagonal * 65535 // 17998
    Image.fromarray(ramp).save(folder / "gray16.png", compress_level=1)
    del ramp
    tiles = np.empty((8000, 8000), np.float32)
    for top in range(0, 8000, 1000):
        y = np.arange(top, top + 1000)[:, None] // 50
        tiles[top : top + 1000] = ((np.arange(8000) // 50 + y) % 40) * 100.0 - 1000.0
    tiles[-1, -1] = 2900.0
    Image.fromarray(tiles).save(folder / "float.tif", compression="tiff_deflate")
    return {"gray16": folder / "gray16.png", "float": folder / "float.tif"}


MB = 1e6
GRAY16_BYTES = 9000 * 9000 * 2  # as PIL stores it (mode I;16): 162 MB
FLOAT_BYTES = 8000 * 8000 * 4  # mode F: 256 MB


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize(
    ("name", "decoded", "corners"),
    [("gray16", GRAY16_BYTES, [[0, 0, 0], [255, 255, 255]]), ("float", FLOAT_BYTES, None)],
)
def test_big_deep_images_decode_within_their_raw_size(big_files, name, decoded, corners):
    """For the model (min_side): peak rise < raw decoded size + 30% (float64 copies: 3.5x, 7x)."""
    got = peak_rise(big_files[name], min_side=224)
    assert got["error"] is None
    assert got["full"] == ([9000, 9000] if name == "gray16" else [8000, 8000])
    assert min(got["size"]) >= 448
    if corners:
        assert got["corners"] == corners
    assert got["rise"] < decoded * 1.3, f"{got['rise'] / MB:.0f} MB for {decoded / MB:.0f} MB"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize(("name", "decoded"), [("gray16", GRAY16_BYTES), ("float", FLOAT_BYTES)])
def test_big_deep_images_at_full_size_cost_pixels_plus_rgb(big_files, name, decoded):
    """Full size: the raw pixels plus the RGB result (4 B/px), + 30%; no full-size float copy."""
    got = peak_rise(big_files[name])
    assert got["error"] is None and got["size"] == got["full"]
    rgb = got["size"][0] * got["size"][1] * 4
    assert got["rise"] < (decoded + rgb) * 1.3, f"{got['rise'] / MB:.0f} MB"


# --- too large for memory, from the header ----------------------------------------------------


def header_only_png(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A PNG whose header announces the size, with almost no pixel data: decoding it fails."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(bytes(100))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_too_large_is_refused_from_the_header_fast():
    data = header_only_png(12000, 12000, 16, 2)  # 16-bit RGB: PIL stores RGB, 4 bytes a pixel
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    d = refused(data, "too large: 12000x12000 RGB = 549 MiB decoded", "512 MiB limit",
                max_pixels=200_000_000)  # fmt: skip
    assert d.environmental is False
    assert time.perf_counter() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 50_000  # KiB on Linux


def test_the_byte_cap_counts_bit_depth():
    limit = 100 * 2**20
    refused(header_only_png(9000, 9000, 16, 0), "9000x9000 16-bit grayscale = 154 MiB",
            "100 MiB limit", max_decoded_bytes=limit)  # fmt: skip
    # the same size in 8 bits passes the check: it fails later, decoding the missing pixels
    refused(header_only_png(9000, 9000, 8, 0), "truncated PNG", max_decoded_bytes=limit)
    assert decoded_bytes((10, 10), "I;16") == 200
    assert decoded_bytes((10, 10), "F") == decoded_bytes((10, 10), "RGB") == 400
    assert decoded_bytes((10, 10), "1") == decoded_bytes((10, 10), "P") == 100


def test_the_byte_cap_applies_to_a_jpegs_reduced_decode(big_jpeg):
    refused(big_jpeg, "too large: 3000x2000 RGB = 23 MiB", max_decoded_bytes=2**20)
    d = decode_image(big_jpeg, min_side=224, max_decoded_bytes=2**20)  # drafted to 375x250
    assert d.ok and (d.width, d.height) == (3000, 2000)


# --- the budget of decoded bytes in flight ----------------------------------------------------


def hold_all(budget: PixelBudget, sizes: list[int], seconds: float = 0.02) -> list[int]:
    """Holds each size in its own thread; returns what was held at each grant."""
    seen, lock = [], threading.Lock()

    def hold(n: int) -> None:
        with budget.hold(n):
            with lock:
                seen.append(budget.in_use)
            time.sleep(seconds)

    with ThreadPoolExecutor(len(sizes)) as pool:
        for f in [pool.submit(hold, n) for n in sizes]:
            f.result(timeout=10)  # a deadlock fails here
    assert budget.in_use == 0
    return seen


def test_budget_bounds_the_bytes_in_flight():
    budget = PixelBudget(100)
    seen = hold_all(budget, [40] * 8)
    assert budget.peak == 80 and max(seen) == 80  # two at a time, never three


def test_budget_runs_an_oversized_request_alone_and_never_deadlocks():
    budget = PixelBudget(100)
    seen = hold_all(budget, [30, 500, 30, 30, 500, 30])
    assert 500 in seen and budget.peak == 500  # alone: nothing else was held with it


def test_budget_is_first_come_first_served():
    budget, order = PixelBudget(100), []
    first = budget.hold(60)
    first.__enter__()

    def take(n: int) -> None:
        with budget.hold(n):
            order.append(n)

    big = threading.Thread(target=take, args=(80,))
    big.start()
    while not budget._queue:  # the 80 is waiting
        time.sleep(0.001)
    small = threading.Thread(target=take, args=(30,))  # would fit now, but comes second
    small.start()
    time.sleep(0.05)
    assert order == []
    first.__exit__(None, None, None)
    big.join(5)
    small.join(5)
    assert order == [80, 30] and budget.in_use == 0


def test_budget_rejects_a_non_positive_limit():
    with pytest.raises(ValueError, match="> 0"):
        PixelBudget(0)


def test_decodes_share_a_budget_and_always_give_it_back():
    images = [encode(natural(1000, 800, seed=i), "PNG") for i in range(4)]
    cost = 2 * decoded_bytes((1000, 800), "RGB")  # pixels plus the RGB result
    budget = PixelBudget(cost + cost // 2)  # room for one image at a time
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: decode_image(b, budget=budget), images))
    assert budget.peak == cost and budget.in_use == 0
    unbounded = [decode_image(b, budget=None) for b in images]
    assert [d.image.tobytes() for d in got] == [d.image.tobytes() for d in unbounded]
    bad = [images[0][:5000], b"<html>", encode(natural(64, 64), "PNG")[:-30]]
    assert not any(decode_image(b, budget=budget).ok for b in bad)
    assert budget.in_use == 0


# --- decoders picked by the object's name -----------------------------------------------------


def psd_gray(width: int, height: int, value: int) -> bytes:
    """A minimal uncompressed 8-bit grayscale Photoshop file (PIL cannot write PSD)."""
    header = b"8BPS" + struct.pack(">H6sHIIHH", 1, bytes(6), 1, height, width, 8, 1)
    return header + struct.pack(">IIIH", 0, 0, 0, 0) + bytes([value]) * (width * height)


def fits_gray(width: int, height: int, value: int) -> bytes:
    """A minimal 8-bit FITS image (PIL cannot write FITS)."""
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8",
             "NAXIS   =                    2", f"NAXIS1  = {width:>20}", f"NAXIS2  = {height:>20}",
             "END"]  # fmt: skip
    pixels = bytes([value]) * (width * height)
    return "".join(c.ljust(80) for c in cards).ljust(2880).encode() + pixels.ljust(2880, b"\0")


def spider(width: int, height: int) -> bytes:
    return encode(Image.new("F", (width, height), 3.0), "SPIDER")


@pytest.mark.parametrize(
    ("data", "name", "words"),
    [
        (psd_gray(8, 6, 77), "photo.jpg", ("not a JPEG: the bytes are a PSD file", ".jpg")),
        (psd_gray(8, 6, 77), "gs://b/x.v2/IMG.JPEG", ("not a JPEG", "PSD", ".jpeg")),
        (fits_gray(8, 6, 77), "scan.png", ("not a PNG: the bytes are a FITS file",)),
        (spider(8, 6), "cat.jpg", ("not a JPEG: the bytes are a SPIDER file",)),
        (fits_gray(8, 6, 77), "scan.psd", ("not a PSD: the bytes are a FITS file",)),
    ],
)
def test_exotic_decoders_run_only_when_the_extension_names_them(data, name, words):
    assert decode_image(data).ok  # a valid file of its kind
    refused(data, *words, name=name)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (psd_gray(8, 6, 77), "layers.psd"),
        (fits_gray(8, 6, 77), "m31.fits"),
        (psd_gray(8, 6, 77), "no-extension"),
        (psd_gray(8, 6, 77), "blob.bin"),  # an extension PIL does not know: every decoder
        (encode(natural(40, 30), "PNG"), "photo.jpg"),  # common in buckets
        (encode(natural(40, 30), "JPEG"), "photo.png"),
        (encode(natural(40, 30), "WEBP"), "anim.gif"),
        (encode(natural(40, 30), "TIFF"), "scan.bmp"),
        (encode(natural(40, 30), "PNG"), "art.psd"),
    ],
)
def test_common_formats_under_any_image_name_and_exotic_ones_when_named(data, name):
    d = decode_image(data, name=name)
    assert d.ok, d.error


def test_allowed_formats_policy():
    assert "PSD" not in allowed_formats("a.jpg") and "PSD" in allowed_formats("A.PSD")
    assert {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"} <= set(allowed_formats("a.tif"))
    assert set(allowed_formats("x.mpo")) == set(allowed_formats("x.jpg"))
    assert (
        set(allowed_formats(None)) == set(allowed_formats("dir.v1/file")) == set(Image.ID) - {"EPS"}
    )
    assert "EPS" not in allowed_formats("figure.eps")


def test_html_named_jpg_still_says_what_it_is():
    refused(b"<!DOCTYPE html><html>Access denied</html>", "looks like HTML", name="a.jpg")


# --- failures: environmental or permanent, and decoder versions -------------------------------


def test_a_missing_decoder_is_environmental():
    if "HEIF" in Image.ID:
        pytest.skip("a HEIF plugin is registered")
    d = refused(b"\x00\x00\x00\x18ftypheic" + bytes(100), "HEIC", "pillow-heif", name="a.heic")
    assert d.environmental is True


def test_avif_without_an_avif_decoder_is_environmental(monkeypatch):
    data = encode(natural(16, 16), "AVIF")
    assert decode_image(data, name="a.avif").ok
    monkeypatch.setattr(Image, "ID", [f for f in Image.ID if f != "AVIF"])  # an older Pillow
    d = refused(data, "unsupported format (AVIF", name="a.avif")
    assert d.environmental is True


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (MemoryError(), ("out of memory",)),
        (OSError("decoder jpeg2k not available"), ("unsupported", "not available")),
    ],
)
def test_out_of_memory_and_unavailable_codecs_are_environmental(monkeypatch, error, words):
    def fail(self):
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    budget = PixelBudget()
    d = refused(encode(natural(40, 30), "PNG"), *words, budget=budget)
    assert d.environmental is True and budget.in_use == 0


@pytest.mark.parametrize(
    ("data", "kwargs"),
    [
        (encode(natural(200, 150), "PNG")[:900], {}),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), {}),
        (b"hello", {}),
        (encode(natural(200, 100), "PNG"), {"max_pixels": 100}),
        (encode(natural(200, 100), "PNG"), {"max_decoded_bytes": 100}),
        (psd_gray(8, 6, 1), {"name": "a.jpg"}),
    ],
)
def test_failures_of_the_bytes_are_permanent(data, kwargs):
    assert decode_image(data, **kwargs).environmental is False


def test_decoded_stays_backwards_compatible():
    d = Decoded(None, 0, 0, "corrupt")
    assert (d.ok, d.environmental) == (False, False)


def test_decoder_versions():
    versions = decoder_versions()
    assert versions["Pillow"] == PIL.__version__
    assert {"libjpeg", "zlib", "libtiff", "libwebp", "libavif", "pillow-heif"} <= set(versions)
    assert all(v is None or isinstance(v, str) for v in versions.values())
    json.dumps(versions)  # storable as is
