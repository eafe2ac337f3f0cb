"""Tests for gcsemb.decode: every image is generated in memory with PIL."""

from __future__ import annotations

import io
import resource
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile

from gcsemb.decode import DEFAULT_MAX_PIXELS, Decoded, decode_image

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
