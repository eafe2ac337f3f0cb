"""What a dataset records about its model is used only as far as it is safe to trust.

- A checkpoint path written in a dataset is read only in gcsemb's cache or when the user passed
  that path before: ``/etc/shadow`` named by a dataset is never opened, hashed or remembered.
- The hash memo does not trust size and mtime alone: a same-size replacement with its mtime set
  back gets its own hash.
- A dataset embedded with a model-config JSON remembers it: a search in a new process needs no
  ``--model``, and says in one line which architecture it used; a recorded config that is too
  large, unknown to open_clip or would download something is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_reads import _dataset

from gcsemb.embedding.job import embed
from gcsemb.errors import GcsembError
from gcsemb.explore.dataset import read_embeddings
from gcsemb.explore.search import search_text
from gcsemb.model import checkpoints
from gcsemb.model.checkpoints import model_tag
from gcsemb.model.embedder import TINY_MODEL, save_random_checkpoint

_OPENED: list[list[str]] = []  # the lists of files opened while a test listens


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED and isinstance(args[0], str | bytes | os.PathLike):
        _OPENED[-1].append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # for the whole process; records only while a test listens


@pytest.fixture
def opened():
    """The paths this process opens while the test runs (Python's audit events)."""
    seen: list[str] = []
    _OPENED.append(seen)
    yield seen
    _OPENED.remove(seen)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty gcsemb cache (checkpoint hashes, architectures) for this test only."""
    path = tmp_path / "cache"
    monkeypatch.setenv("GCSEMB_CACHE", str(path))
    return path


def _jpeg(color: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(out, "JPEG")
    return out.getvalue()


# -------------------------------------------------------------------------------- checkpoints


def test_a_checkpoint_path_a_dataset_names_is_never_opened(tmp_path, fresh_cache, opened):
    secret = tmp_path / "home" / ".ssh" / "id_rsa"  # stands for /etc/shadow, a private key
    secret.parent.mkdir(parents=True)
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n")
    sha = hashlib.sha256(secret.read_bytes()).hexdigest()  # the author knows the bytes
    crafted = str(tmp_path / "crafted")
    meta = {"source": str(tmp_path), "checkpoint": str(secret), "checkpoint_sha256": sha}
    _dataset(crafted, [{"uri": f"{tmp_path}/x.jpg"}], meta, model=f"tiny-clip/id_rsa#{sha[:8]}")
    opened.clear()

    with pytest.raises(GcsembError, match="pretrained=") as refused:
        search_text(crafted, "a photo")
    assert "does not read it on a dataset's word" in str(refused.value)
    assert str(secret) not in opened  # never opened, so never hashed
    memo = fresh_cache / "checkpoint-hashes.json"
    assert not memo.exists() or str(secret) not in memo.read_text()


def test_a_same_size_replacement_with_its_mtime_restored_gets_a_new_hash(tmp_path, fresh_cache):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"a" * 4096)
    first = model_tag(TINY_MODEL, str(weights))
    assert first == f"tiny-clip/weights.pt#{hashlib.sha256(b'a' * 4096).hexdigest()[:8]}"
    before = weights.stat()
    time.sleep(0.05)  # the kernel's ctime clock may tick only every few milliseconds

    weights.write_bytes(b"b" * 4096)  # same size, other bytes
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime set back
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (4096, before.st_mtime_ns)
    expected = f"tiny-clip/weights.pt#{hashlib.sha256(b'b' * 4096).hexdigest()[:8]}"
    assert model_tag(TINY_MODEL, str(weights)) == expected
    checkpoints._HASHES.clear()  # another process: only the memo file
    assert model_tag(TINY_MODEL, str(weights)) == expected


# ------------------------------------------------------------------------------ architectures


@pytest.mark.slow
def test_a_dataset_remembers_its_architecture(tmp_path, fresh_cache):
    config = tmp_path / "my-arch.json"
    config.write_text(Path(TINY_MODEL).read_text())
    ckpt = save_random_checkpoint(tmp_path / "mine.pt", str(config), seed=7)
    photos = tmp_path / "photos"
    photos.mkdir()
    for color in ("red", "green", "blue"):
        (photos / f"{color}.jpg").write_bytes(_jpeg(color))
    dst = str(tmp_path / "emb")
    embed(str(photos), dst, model=str(config), pretrained=str(ckpt), progress=False)
    df, _ = read_embeddings(dst)
    assert json.loads(df.attrs["dataset"]["architecture"]) == json.loads(config.read_text())
    config.unlink()  # gone: only the dataset knows the architecture now

    done = subprocess.run(  # a new process: open_clip has never heard of my-arch
        [sys.executable, "-m", "gcsemb.cli", "search", dst, "a photo", "-k", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "architecture" in line]
    assert said == ["gcsemb: using the architecture my-arch that the dataset records (its model "
                    "config)"], done.stderr  # fmt: skip
    assert all(f"{color}.jpg" in done.stdout for color in ("red", "green", "blue")), done.stdout


def _tiny(**changes: dict) -> dict:
    config = json.loads(Path(TINY_MODEL).read_text())
    for section, values in changes.items():
        config[section] = {**config[section], **values} if isinstance(values, dict) else values
    return config


HOSTILE_CONFIGS = {
    "hugging face text tower": (_tiny(text_cfg={"hf_model_name": "someone/model"}), "download"),
    "pretrained timm tower": (
        _tiny(vision_cfg={"timm_model_name": "vit_tiny", "timm_model_pretrained": True}),
        "download",
    ),
    "too large": (_tiny(text_cfg={"pad": ["x" * 100] * 700}), "larger than 64 KiB"),
    "unknown key": (_tiny(vision_cfg={"__init__": "os.system"}), "does not know"),
    "a billion layers": (_tiny(vision_cfg={"layers": 10**9}), "out of range"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_CONFIGS))
def test_a_recorded_architecture_is_checked_as_data(kind, tmp_path, fresh_cache):
    config, reason = HOSTILE_CONFIGS[kind]
    crafted = str(tmp_path / "crafted")
    meta = {"source": str(tmp_path), "architecture": json.dumps(config)}
    _dataset(crafted, [{"uri": f"{tmp_path}/x.jpg"}], meta, model="evil-arch/random-seed0")
    df, _ = read_embeddings(crafted)
    matrix = np.zeros((1, 64), np.float32)
    with pytest.raises(GcsembError, match=reason) as refused:
        search_text((df, matrix), "a photo", k=1)
    assert "--model" in str(refused.value)
    assert not (fresh_cache / "architectures").exists()
