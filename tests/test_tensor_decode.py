"""The tensor decode path (gcsemb.images.tensor_decode) against open_clip's own PIL preprocess.

Everything runs on CPU here (torchvision's libjpeg decode plus the same tensor transforms the GPU
path uses); the ``gpu`` tests repeat the parity checks with nvJPEG where CUDA exists.
"""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image, ImageDraw

from gcsemb.demo.samples import encode, photo_dir, sample_images
from gcsemb.images import tensor_decode
from gcsemb.images.decode import decode_image
from gcsemb.images.tensor_decode import (
    JpegHeader,
    Preprocess,
    decode_batch,
    read_jpeg_header,
    resolve_decode,
)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
INVERSE = {  # EXIF orientation -> how to store an upright image so that the tag makes it upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
CONFIGS = [  # what open_clip models use: square/non-square shortest, longest + fill, squash
    {"size": 224},
    {"size": (224, 256)},
    {"size": 224, "resize_mode": "longest", "fill_color": 128},
    {"size": 224, "resize_mode": "squash"},
    {"size": 224, "interpolation": "bilinear"},
]


def _photo(name: str = "astronaut.png") -> Image.Image:
    with Image.open(photo_dir() / name) as im:
        return im.convert("RGB")


def _jpeg(image: Image.Image, orientation: int | None = None, **params: object) -> bytes:
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif
    return encode(image, "JPEG", quality=params.pop("quality", 90), **params)


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, bytes]]:
    """Offline JPEGs: the bundled photos, a 12 MP one, VGA, tiny, grayscale, progressive, EXIF."""
    items = [(n, b) for n, b in sample_images(18) if n.endswith(".jpg")]
    chelsea, coffee = _photo("chelsea.png"), _photo("coffee.png")
    items += [
        ("4000x3000", _jpeg(coffee.resize((4000, 3000), Image.Resampling.BICUBIC))),
        ("640x480", _jpeg(chelsea.resize((640, 480)))),
        ("100x80 (upscaled)", _jpeg(coffee.resize((100, 80)))),
        ("grayscale", _jpeg(chelsea.convert("L"))),
        ("progressive", _jpeg(coffee, progressive=True)),
        ("EXIF 6, portrait", _jpeg(chelsea.transpose(INVERSE[6]), orientation=6)),
        ("EXIF 3", _jpeg(coffee.transpose(INVERSE[3]), orientation=3)),
    ]
    return items


@pytest.fixture(scope="module")
def reference_images(photos) -> list[Image.Image]:
    """What the CPU PIL path decodes (full size, upright RGB)."""
    decoded = [decode_image(b) for _, b in photos]
    assert all(d.ok for d in decoded)
    return [d.image for d in decoded]


def _pil_batch(images: list[Image.Image], cfg: dict) -> torch.Tensor:
    """open_clip's own inference transform, as gcsemb.model.embedder builds it."""
    transform = image_transform_v2(PreprocessCfg(**{"size": 224, **cfg}), is_train=False)
    return torch.stack([transform(im) for im in images])


@pytest.fixture(scope="module")
def vit_b_32() -> torch.nn.Module:
    """ViT-B-32 with seeded random weights (no weights can be downloaded here)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32", pretrained=None, pretrained_text=False)
    return model.eval()


def _embed(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        features = model.encode_image(batch).float()
    return features / features.norm(dim=-1, keepdim=True)


# --- headers ------------------------------------------------------------------------------------


def test_header_reads_size_components_coding_and_orientation():
    """The header scan reports what decides the path, without decoding pixels."""
    im = _photo("coffee.png")  # 600x400
    assert read_jpeg_header(_jpeg(im)) == JpegHeader(600, 400, 3, 1, False)
    assert read_jpeg_header(_jpeg(im.convert("L"), progressive=True)) == JpegHeader(
        600, 400, 1, 1, True
    )
    header = read_jpeg_header(_jpeg(im, orientation=8))
    assert isinstance(header, JpegHeader)
    assert header.orientation == 8 and header.upright_size == (400, 600)
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    header = read_jpeg_header(encode(im, "JPEG", xmp=xmp))
    assert isinstance(header, JpegHeader) and header.orientation == 6  # as PIL's getexif()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a JPEG"),
        (b"\x89PNG\r\n\x1a\n", "not a JPEG"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated JPEG (header incomplete)"),
    ],
)
def test_header_refuses(data: bytes, reason: str):
    """Bytes the tensor path does not take come back as a reason."""
    assert read_jpeg_header(data) == reason


# --- pixels -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_pixels_match_open_clip_preprocess(photos, reference_images, cfg):
    """Normalised tensors match open_clip's PIL transform for every resize mode."""
    out = decode_batch([b for _, b in photos], cfg)
    assert out.fallback == {} and out.indices == list(range(len(photos)))
    assert out.sizes == [im.size for im in reference_images]
    reference = _pil_batch(reference_images, cfg)
    assert out.pixels.shape == reference.shape and out.pixels.dtype == torch.float32
    diff = (out.pixels - reference).abs()
    per_image = diff.flatten(1).mean(1)
    # units: normalised values (1/255 of a pixel level is about 0.015)
    assert float(diff.mean()) < 0.002, float(diff.mean())
    assert float(per_image.max()) < 0.01, {photos[int(per_image.argmax())][0]: per_image.max()}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(orientation: int):
    """All 8 EXIF orientations give the upright picture and the upright size."""
    upright = Image.new("RGB", (320, 200), (40, 40, 40))  # landscape, every quadrant distinct
    draw = ImageDraw.Draw(upright)
    draw.rectangle((0, 0, 159, 99), fill=(255, 0, 0))
    draw.rectangle((160, 0, 319, 99), fill=(0, 255, 0))
    draw.rectangle((0, 100, 159, 199), fill=(0, 0, 255))
    draw.ellipse((200, 120, 300, 190), fill=(255, 255, 0))
    stored = upright.transpose(INVERSE[orientation]) if orientation in INVERSE else upright
    data = _jpeg(stored, orientation=orientation, quality=95)

    out = decode_batch([data], {"size": 224, "resize_mode": "squash"})

    assert out.sizes == [(320, 200)]
    expected = _pil_batch([upright], {"resize_mode": "squash"})
    assert float((out.pixels - expected).abs().mean()) < 0.05  # a wrong orientation gives > 0.5
    same_as_pil_path = _pil_batch([decode_image(data).image], {"resize_mode": "squash"})
    assert float((out.pixels - same_as_pil_path).abs().mean()) < 0.005


def test_small_chunks_give_the_same_batch(photos):
    """Decoding in many small chunks (bounded memory) changes nothing but the peak size."""
    data = [b for _, b in photos]
    whole = decode_batch(data, {"size": 224})
    chunked = decode_batch(data, {"size": 224}, chunk_pixels=300_000)
    assert chunked.indices == whole.indices and chunked.sizes == whole.sizes
    assert torch.equal(chunked.pixels, whole.pixels)


def test_preprocess_from_model_and_cfg(vit_b_32):
    """The config comes from the model, its preprocess_cfg dict, or open_clip's PreprocessCfg."""
    from_model = Preprocess.from_cfg(vit_b_32)
    assert from_model == Preprocess.from_cfg(vit_b_32.visual.preprocess_cfg)
    assert from_model == Preprocess.from_cfg(PreprocessCfg(**vit_b_32.visual.preprocess_cfg))
    assert from_model.size == (224, 224) and from_model.resize_mode == "shortest"
    with pytest.raises(ValueError, match="resize_mode"):
        Preprocess.from_cfg({"resize_mode": "stretch"})


# --- embeddings ---------------------------------------------------------------------------------


def test_embeddings_match_pil_preprocess_on_vit_b_32(vit_b_32, photos, reference_images, capsys):
    """The parity bar: min cosine >= 0.99 against open_clip's PIL preprocess, ViT-B-32."""
    cfg = vit_b_32.visual.preprocess_cfg
    tensor_path = decode_batch([b for _, b in photos], cfg)
    assert tensor_path.fallback == {}
    pil_path = _pil_batch(reference_images, cfg)
    cosine = (_embed(vit_b_32, tensor_path.pixels) * _embed(vit_b_32, pil_path)).sum(-1)
    with capsys.disabled():
        print(
            f"\nViT-B-32 (seeded random weights), {len(photos)} JPEGs, tensor path on CPU vs "
            f"PIL: cosine min {float(cosine.min()):.6f} mean {float(cosine.mean()):.6f}; pixels "
            f"mean |diff| {float((tensor_path.pixels - pil_path).abs().mean()):.5f}"
        )
    assert float(cosine.min()) >= 0.99, dict(
        zip([n for n, _ in photos], cosine.tolist(), strict=True)
    )


# --- fallback -----------------------------------------------------------------------------------


def _bogus_huffman(data: bytes) -> bytes:
    """A JPEG whose header scans fine but whose Huffman table the decoder rejects."""
    out = bytearray(data)
    at = out.index(b"\xff\xc4")
    out[at + 5 : at + 21] = b"\xff" * 16  # code counts summing to far more than 256
    return bytes(out)


def test_fallback_batch_decodes_the_good_and_reports_the_rest():
    """One batch with a PNG, truncated, CMYK, grayscale and undecodable JPEGs never fails."""
    photo = _photo("chelsea.png")
    good = _jpeg(photo)
    data = [
        good,
        encode(photo, "PNG"),
        good[: len(good) // 2],
        _jpeg(photo.convert("CMYK")),
        _jpeg(photo.convert("L")),
        _bogus_huffman(good),
        b"",
        good + b"\0" * 64 + b"phone trailer after the end marker",
    ]

    out = decode_batch(data, {"size": 224})

    assert out.indices == [0, 4, 7]
    assert set(out.fallback) == {1, 2, 3, 5, 6}
    assert out.fallback[1] == out.fallback[6] == "not a JPEG"
    assert out.fallback[2].startswith("truncated JPEG")
    assert out.fallback[3] == "CMYK JPEG (4 components)"
    assert out.fallback[5] == "torchvision cannot decode: Bogus Huffman table definition"
    # what came back matches the PIL path, grayscale included
    reference = _pil_batch([decode_image(data[i]).image for i in out.indices], {})
    assert float((out.pixels - reference).abs().flatten(1).mean(1).max()) < 0.005
    # the CPU path takes over: it decodes the PNG and the CMYK JPEG, and names the bad ones
    assert decode_image(data[1]).ok and decode_image(data[3]).ok
    assert decode_image(data[2]).error.startswith("truncated")


def test_oversized_images_are_left_to_the_cpu_path():
    """Decompression bombs (by header) are not decoded here; the PIL path refuses them."""
    data = _jpeg(Image.new("RGB", (300, 200)))
    out = decode_batch([data], {"size": 224}, max_pixels=50_000)
    assert out.indices == [] and out.pixels.shape == (0, 3, 224, 224)
    assert out.fallback == {0: "decompression bomb: 300x200 pixels"}


def test_a_failing_batch_call_is_retried_image_by_image(monkeypatch):
    """When nvJPEG's batched call raises, each image is decoded alone: only the bad one fails."""
    calls: list[int] = []
    real = tensor_decode.decode_jpeg

    def fake_decode_jpeg(data, mode, device="cpu"):  # a CUDA decode, played on the CPU
        batch = data if isinstance(data, list) else [data]
        calls.append(len(batch))
        if any(int(t[-3]) == 0x21 for t in batch):
            raise RuntimeError("Error while decoding JPEG images: nvjpeg status 6")
        images = [real(t, mode=mode) for t in batch]
        return images if isinstance(data, list) else images[0]

    monkeypatch.setattr(tensor_decode, "decode_jpeg", fake_decode_jpeg)
    good = _jpeg(_photo("coffee.png").reduce(4))
    bad = good[:-2] + b"\x21\xff\xd9"
    assert good[-3] != 0x21
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in (good, bad, good)]

    results = tensor_decode._decode(tensors, tensor_decode.ImageReadMode.RGB, torch.device("cuda"))

    assert calls == [3, 1, 1, 1]
    assert isinstance(results[1], RuntimeError)
    assert all(isinstance(r, torch.Tensor) and r.shape == (3, 100, 150) for r in results[::2])


def test_outputs_are_finite(photos):
    """No NaN or inf sneaks in through padding, empty groups or grayscale expansion."""
    out = decode_batch([b for _, b in photos], {"size": 224, "resize_mode": "longest"})
    assert bool(torch.isfinite(out.pixels).all())


# --- the decode setting -------------------------------------------------------------------------


def test_resolve_decode():
    """auto is gpu only with a working nvJPEG on the model's CUDA device."""
    assert resolve_decode("auto", "cpu") == "cpu"
    assert resolve_decode("cpu", "cuda") == "cpu"
    with pytest.raises(ValueError, match="not on a CUDA device"):
        resolve_decode("gpu", "cpu")
    with pytest.raises(ValueError, match="must be"):
        resolve_decode("nvjpeg", "cpu")
    if CUDA:
        assert resolve_decode("auto", "cuda") == "gpu"


# --- on a GPU -----------------------------------------------------------------------------------


@gpu
@needs_cuda
def test_gpu_decode_matches_pil_preprocess(vit_b_32, photos, reference_images, capsys):
    """nvJPEG decode + GPU resize: pixels close to PIL, ViT-B-32 cosine >= 0.99, CMYK refused."""
    data = [b for _, b in photos]
    cfg = vit_b_32.visual.preprocess_cfg
    out = decode_batch(data + [_jpeg(_photo().convert("CMYK"))], cfg, device="cuda")
    assert out.pixels.device.type == "cuda"
    assert out.fallback == {len(data): "CMYK JPEG (4 components)"}
    assert out.indices == list(range(len(data)))
    assert out.sizes == [im.size for im in reference_images]
    reference = _pil_batch(reference_images, cfg)
    diff = (out.pixels.cpu() - reference).abs()
    assert float(diff.mean()) < 0.02, float(diff.mean())  # nvJPEG's IDCT differs from libjpeg's
    model = copy.deepcopy(vit_b_32).cuda()
    cosine = (_embed(model, out.pixels) * _embed(model, reference.cuda())).sum(-1)
    with capsys.disabled():
        print(
            f"\nGPU decode: cosine min {float(cosine.min()):.6f} mean "
            f"{float(cosine.mean()):.6f}; pixels mean |diff| {float(diff.mean()):.5f}"
        )
    assert float(cosine.min()) >= 0.99


@gpu
@needs_cuda
@pytest.mark.parametrize("orientation", range(1, 9))
def test_gpu_exif_orientation(orientation: int):
    """EXIF orientation on CUDA, where torchvision's decoder does not apply it."""
    upright = _photo("chelsea.png")
    stored = upright.transpose(INVERSE[orientation]) if orientation in INVERSE else upright
    data = _jpeg(stored, orientation=orientation, quality=95)
    out = decode_batch([data], {"size": 224}, device="cuda")
    assert out.sizes == [upright.size]
    expected = _pil_batch([upright], {})
    assert float((out.pixels.cpu() - expected).abs().mean()) < 0.05
