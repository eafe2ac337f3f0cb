"""gcsemb.model.embedder: offline, with a tiny open_clip model and seeded random weights."""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from gcsemb.model import checkpoints
from gcsemb.model import embedder as emb
from gcsemb.model.embedder import (
    TINY_MODEL,
    Embedder,
    ModelLoadError,
    load_embedder,
    save_random_checkpoint,
)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep every test (session fixtures included) out of ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GCSEMB_CACHE", str(tmp_path_factory.mktemp("gcsemb-cache")))
        yield


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GCSEMB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("w") / "random-seed0.pt", TINY_MODEL)


@pytest.fixture(scope="session")
def ckpt_seed1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("w1"), TINY_MODEL, seed=1)


@pytest.fixture(scope="session")
def embedder(ckpt: Path) -> Embedder:
    return load_embedder(TINY_MODEL, str(ckpt), device="auto")


def lossless_images() -> list[Image.Image]:
    """Images of several sizes and modes, round-tripped through PNG."""
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 120 * 80 * 3).reshape(80, 120, 3).astype(np.uint8)
    raw = [
        Image.fromarray(gradient),
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (200, 37, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (50, 90), dtype=np.uint8), mode="L"),
    ]
    out = []
    for im in raw:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(Image.open(io.BytesIO(buf.getvalue())))
    return out


def test_parity_with_open_clip(embedder: Embedder, ckpt: Path):
    images = lossless_images()
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip", pretrained=str(ckpt))
    with torch.no_grad():
        ref = model.eval().encode_image(torch.stack([preprocess(im) for im in images]))
    ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
    ours = embedder.embed_images(images)
    cosine = (ours * ref).sum(axis=1)
    assert cosine.min() >= 0.999, cosine
    tensors = torch.stack([embedder.preprocess(im) for im in images])
    np.testing.assert_allclose(embedder.embed_tensors(tensors), ours, atol=1e-6)


def test_outputs_are_unit_float32_and_deterministic(embedder: Embedder):
    images = lossless_images()
    vectors = embedder.embed_images(images)
    assert embedder.dim == 64
    assert vectors.dtype == np.float32 and vectors.shape == (len(images), 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embedder.embed_images(images), vectors)
    alone = embedder.embed_images(images[:1])
    np.testing.assert_allclose(alone[0], vectors[0], atol=1e-5)  # batch-independent
    texts = embedder.embed_texts(["a photo of a cat", "a diagram", ""])
    assert texts.dtype == np.float32 and texts.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_texts("one string").shape == (1, 64)
    assert embedder.embed_images([]).shape == (0, 64)
    assert embedder.embed_texts([]).shape == (0, 64)


def test_second_load_is_the_same_object_at_once(embedder: Embedder, ckpt: Path):
    start = time.perf_counter()
    again = load_embedder(TINY_MODEL, str(ckpt), device="cpu", precision="fp32")
    assert again is embedder
    assert time.perf_counter() - start < 0.1
    assert embedder.spec == emb.ModelSpec(TINY_MODEL, str(ckpt), "cpu", "fp32")


def test_name_is_content_addressed(embedder: Embedder, ckpt: Path, ckpt_seed1: Path, tmp_path):
    assert re.fullmatch(r"tiny-clip/random-seed0\.pt#[0-9a-f]{8}", embedder.name)
    copy = tmp_path / "elsewhere" / ckpt.name
    copy.parent.mkdir()
    shutil.copy(ckpt, copy)
    moved = load_embedder(TINY_MODEL, str(copy))
    assert moved is not embedder and moved.name == embedder.name
    other = load_embedder(TINY_MODEL, str(ckpt_seed1))
    assert other.name.startswith("tiny-clip/tiny-clip-random-seed1.pt#")
    assert other.name.split("#")[1] != embedder.name.split("#")[1]
    image = lossless_images()[:1]
    assert float(embedder.embed_images(image)[0] @ other.embed_images(image)[0]) < 0.99
    sidecar = json.loads((checkpoints.cache_dir() / "checkpoint-hashes.json").read_text())
    assert sidecar[str(copy)]["sha256"].startswith(moved.name.split("#")[1])


def test_model_as_config_json(ckpt: Path, tmp_path: Path):
    config = tmp_path / "my-arch.json"
    shutil.copy(TINY_MODEL, config)
    custom = load_embedder(str(config), str(ckpt))
    assert custom.name.startswith("my-arch/random-seed0.pt#") and custom.dim == 64
    narrow = json.loads(config.read_text())
    narrow["embed_dim"] = 32
    (tmp_path / "narrow.json").write_text(json.dumps(narrow))
    with pytest.raises(ModelLoadError, match="another architecture") as info:
        load_embedder(str(tmp_path / "narrow.json"), str(ckpt))
    assert info.value.__cause__ is not None
    (tmp_path / "broken.json").write_text('{"embed_dim": 64}')
    with pytest.raises(ModelLoadError, match="vision_cfg"):
        load_embedder(str(tmp_path / "broken.json"), str(ckpt))


def test_unknown_architecture_suggests_close_matches():
    with pytest.raises(ModelLoadError, match=r"Did you mean .*ViT-B-32"):
        load_embedder("vit-b-23", None)


def test_missing_and_corrupt_checkpoints(ckpt: Path, tmp_path: Path):
    with pytest.raises(ModelLoadError, match="no checkpoint file"):
        load_embedder(TINY_MODEL, str(tmp_path / "nope.pt"))
    with pytest.raises(ModelLoadError, match="did you mean laion2b_s34b_b79k"):
        load_embedder("ViT-B-32", "laion2b_s34b_b97k")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    for bad in (garbage, truncated):
        with pytest.raises(ModelLoadError, match="truncated or corrupt") as info:
            load_embedder(TINY_MODEL, str(bad))
        assert info.value.__cause__ is not None


def test_offline_tag_not_cached_fails_fast_naming_the_options(fresh_cache, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import; without it each try retries ~50 s.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_embedder("ViT-B-32", "laion2b_s34b_b79k")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    for option in ("local checkpoint", "gs://", "GCSEMB_CACHE", str(fresh_cache / "open_clip")):
        assert option in message
    assert info.value.__cause__ is not None
    assert isinstance(info.value, RuntimeError)


def test_cached_tag_is_served_offline(fresh_cache, ckpt: Path, monkeypatch):
    """A tag already in the cache (HF hub layout) loads with the network off."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tags = open_clip.pretrained._PRETRAINED
    monkeypatch.setitem(tags, "tiny-clip", {"fake": {"hf_hub": "gcsemb/tiny-fake/"}})
    repo = fresh_cache / "open_clip" / "models--gcsemb--tiny-fake"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(ckpt, snapshot / "open_clip_pytorch_model.bin")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    loaded = load_embedder(TINY_MODEL, "fake", precision="fp32")
    assert loaded.name == "tiny-clip/fake"
    image = lossless_images()[:1]
    ref = load_embedder(TINY_MODEL, str(ckpt))
    np.testing.assert_allclose(loaded.embed_images(image), ref.embed_images(image), atol=1e-6)


def test_remote_checkpoint_copy_is_atomic(fresh_cache, ckpt: Path, monkeypatch):
    url = ckpt.as_uri()  # file:// goes through gcsemb.storage.open_store like gs://

    def interrupted(fs, path, local):
        Path(local).write_bytes(ckpt.read_bytes()[:1000])
        raise ConnectionError("network went away")

    def truncating(fs, path, local):
        Path(local).write_bytes(ckpt.read_bytes()[:1000])

    for copy in (interrupted, truncating):
        monkeypatch.setattr(checkpoints, "_copy", copy)
        with pytest.raises(ModelLoadError, match="network went away|bytes of") as info:
            load_embedder(TINY_MODEL, url)
        assert info.value.__cause__ is not None
        assert [p for p in fresh_cache.rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    monkeypatch.setenv("GCSEMB_CACHE", str(fresh_cache))
    remote = load_embedder(TINY_MODEL, url)
    cached = list((fresh_cache / "checkpoints").rglob("*.pt"))
    assert [p.name for p in cached] == [ckpt.name]
    assert remote.name == load_embedder(TINY_MODEL, str(ckpt)).name
    monkeypatch.setattr(
        checkpoints, "_copy", interrupted
    )  # the cached copy is reused, not re-fetched
    assert load_embedder(TINY_MODEL, url) is remote


def test_no_weights_means_the_seed0_random_checkpoint(embedder: Embedder):
    random_init = load_embedder(TINY_MODEL, None)
    assert random_init.name == "tiny-clip/random-seed0"
    image = lossless_images()[:2]
    np.testing.assert_allclose(random_init.embed_images(image), embedder.embed_images(image))


def test_repr_and_summary(embedder: Embedder):
    text = repr(embedder)
    for part in ("tiny-clip", "random-seed0.pt#", "cpu", "fp32", "dim=64"):
        assert part in text
    assert embedder.summary()["dim"] == 64
    assert "<table" in embedder._repr_html_() and "tiny-clip" in embedder._repr_html_()


def test_bad_device_and_precision():
    with pytest.raises(ModelLoadError, match="precision"):
        load_embedder(TINY_MODEL, None, precision="fp8")
    with pytest.raises(ModelLoadError, match="device"):
        load_embedder(TINY_MODEL, None, device="tpu-please")


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("GCSEMB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert checkpoints.cache_dir() == tmp_path / "gcsemb"


@pytest.mark.slow
def test_vit_b_32_random_checkpoint(tmp_path: Path):
    ckpt = save_random_checkpoint(tmp_path, "ViT-B-32", seed=0)
    vit = load_embedder("ViT-B-32", str(ckpt), device="cpu")
    assert vit.dim == 512 and vit.name.startswith("ViT-B-32/ViT-B-32-random-seed0.pt#")
    assert vit.embed_images(lossless_images()[:2]).shape == (2, 512)


def test_model_tag_names_weights_without_loading_them(embedder: Embedder, ckpt: Path, tmp_path):
    # the pipeline decides what is already done from this tag, before importing torch
    assert checkpoints.model_tag(TINY_MODEL, str(ckpt)) == embedder.name
    assert checkpoints.model_tag(TINY_MODEL, None) == load_embedder(TINY_MODEL, None).name
    copy = tmp_path / ckpt.name
    shutil.copy(ckpt, copy)
    assert checkpoints.model_tag(TINY_MODEL, str(copy)) == embedder.name
    assert checkpoints.model_tag("ViT-B-32", "laion2b-s34b-b79k") == "ViT-B-32/laion2b_s34b_b79k"


def test_a_link_and_its_target_get_the_same_tag(embedder: Embedder, ckpt: Path, tmp_path):
    # a Hugging Face cache snapshot is a symbolic link into blobs/
    blob = tmp_path / "blobs" / "5e8f2b0c9a"
    blob.parent.mkdir()
    shutil.copy(ckpt, blob)
    link = tmp_path / "snapshots" / "rev" / "open_clip_pytorch_model.bin"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    tags = {checkpoints.model_tag(TINY_MODEL, str(p)) for p in (link, blob)}
    tags |= {load_embedder(TINY_MODEL, str(p)).name for p in (link, blob)}
    assert len(tags) == 1  # the done index matches whichever path a run is given


def test_a_signed_url_names_nothing_after_its_path(fresh_cache, ckpt: Path, caplog):
    # a checkpoint shared as a signed URL: its signature never reaches a name, a log or a tag
    from servers import StubServer

    secret = "X-Goog-Signature=0123abcdef&X-Goog-Credential=sa%40p.iam"
    data = ckpt.read_bytes()

    def serve(request, body):
        if "X-Goog-Signature=0123abcdef" not in request.path:
            return 403, {"error": "signature required"}
        headers = [("Content-Type", "application/octet-stream"), ("ETag", '"v1"')]
        return 200, (headers, b"" if request.command == "HEAD" else data)

    caplog.set_level("DEBUG")
    with StubServer(serve) as server:
        url = f"{server.url}/models/tiny.pt?{secret}#frag"
        tag = checkpoints.model_tag(TINY_MODEL, url)
        loaded = load_embedder(TINY_MODEL, url)
    cached = [str(p) for p in fresh_cache.rglob("*") if p.is_file()]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("gcsemb")]
    assert tag == loaded.name and tag.startswith("tiny-clip/tiny.pt#")
    assert any("copying" in line for line in ours)
    for text in [tag, loaded.name, repr(loaded), *ours, *cached]:
        assert "Signature" not in text and "0123abcdef" not in text and "frag" not in text
    assert checkpoints.public_url(url) == f"{server.url}/models/tiny.pt"


@pytest.mark.parametrize(
    ("capability", "auto", "bf16_allowed"),
    [
        ((7, 5), "fp16", False),  # T4: bf16 only emulated, no bf16 convolutions
        ((7, 0), "fp16", False),  # V100
        ((8, 0), "bf16", True),  # A100
        ((8, 9), "bf16", True),  # L4
        ((9, 0), "bf16", True),  # H100 / H200
    ],
)
def test_precision_follows_the_gpus_compute_capability(monkeypatch, capability, auto, bf16_allowed):
    # a faked CUDA device: the choice is made before any model is loaded
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Faked GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation
    spec, _ = emb._resolve(TINY_MODEL, None, "auto", "auto")
    assert (spec.device, spec.precision) == ("cuda:0", auto)
    if bf16_allowed:
        assert emb._resolve(TINY_MODEL, None, "auto", "bf16")[0].precision == "bf16"
    else:
        with pytest.raises(ModelLoadError, match="native only from 8.0.*fp16"):
            emb._resolve(TINY_MODEL, None, "auto", "bf16")
    assert emb._resolve(TINY_MODEL, None, "cpu", "auto")[0].precision == "fp32"
