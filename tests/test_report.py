"""Where the time goes: the stage report names the stage that bounds a run, and says what to try.

Three runs, each limited by a different stage: a real ViT-B-32 on this CPU (the model),
12-megapixel photos with a tiny model (decoding), and 400 ms added to every request with one
small fetch group in flight (fetching).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from servers import ACCESS_TOKEN, GatewayProxy

from gcsemb.demo.samples import encode, sample_images
from gcsemb.embedding.config import EmbedConfig
from gcsemb.embedding.job import embed
from gcsemb.embedding.report import STAGES, StageClock, bound_stage
from gcsemb.model.embedder import TINY_MODEL
from gcsemb.storage import open_store


def _photos(folder: Path, count: int, size: tuple[int, int] | None = None) -> None:
    for i, (_, data) in enumerate(sample_images(count)):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        if size is not None:
            image = image.resize(size, Image.Resampling.BILINEAR)
        (folder / f"IMG_{i:04d}.jpg").write_bytes(encode(image, "JPEG", quality=90))


def test_capacity_and_bound_stage_by_hand():
    clock = StageClock({"fetch": 4, "decode": 2})
    clock.add("fetch", seconds=2.0, items=40, nbytes=40 * 2**20)  # 80 images/s with 4 groups
    clock.add("decode", seconds=1.0, items=40)  # 80 images/s on 2 cores
    clock.add("model", seconds=0.5, items=40)  # 80 images/s
    clock.add("write", seconds=0.01, items=40)
    stats = clock.stats()
    assert [stats[s].capacity for s in ("fetch", "decode", "model")] == [80.0, 80.0, 80.0]
    clock.add("decode", seconds=0.1, items=0)  # decoding got slower: it is now the bound
    assert bound_stage(clock.stats()) == "decode"
    assert bound_stage(StageClock().stats()) is None
    assert set(STAGES) <= set(stats)


@pytest.mark.slow
def test_vit_b_32_on_a_cpu_is_bound_by_the_model(tmp_path):
    (tmp_path / "photos").mkdir()
    _photos(tmp_path / "photos", 48)
    summary = embed(
        str(tmp_path / "photos"),
        str(tmp_path / "emb"),
        model="ViT-B-32",
        pretrained=None,  # the real architecture with seeded random weights: no download
        progress=False,
    )
    assert summary.embedded == 48 and summary.bound == "model", summary.to_dict()
    assert "the model bounds this run" in summary.hint and "GPU" in summary.hint
    assert summary.stages["model"].items == 48


@pytest.mark.slow
def test_12_megapixel_photos_with_a_tiny_model_are_bound_by_decoding(tmp_path, tiny_ckpt):
    (tmp_path / "photos").mkdir()
    _photos(tmp_path / "photos", 24, size=(4000, 3000))
    summary = embed(
        str(tmp_path / "photos"),
        str(tmp_path / "emb"),
        model=TINY_MODEL,
        pretrained=tiny_ckpt,
        progress=False,
    )
    assert summary.embedded == 24 and summary.bound == "decode", summary.to_dict()
    assert "decode bounds this run" in summary.hint and "cores decode about" in summary.hint


def test_slow_requests_with_little_in_flight_are_bound_by_fetching(gcs, bucket, tiny_ckpt, capsys):
    fs = gcs.filesystem()
    for i, (_, data) in enumerate(sample_images(16)):
        fs.pipe_file(f"{bucket}/photos/{i:02d}.jpg", data)

    def slow(n, method, path):
        if "alt=media" in path:
            time.sleep(0.4)  # a distant bucket: 400 ms per request
        return None

    with GatewayProxy(gcs.emulator.url, token=ACCESS_TOKEN, fault=slow) as proxy:
        summary = embed(
            open_store(f"gs://{bucket}/photos", endpoint=proxy.url),
            f"gs://{bucket}/emb",
            model=TINY_MODEL,
            pretrained=tiny_ckpt,
            progress=False,
            io_workers=1,
            fetch_batch=4,
        )
    assert summary.embedded == 16 and summary.bound == "fetch", summary.to_dict()
    assert "fetch bounds this run" in summary.hint and "--io-workers" in summary.hint
    fetch = summary.stages["fetch"]
    assert fetch.workers == 1 and fetch.capacity < 12  # 4 objects per 0.4 s
    assert fetch.bytes_per_second > 0


def test_cli_json_report_and_the_final_line(tmp_path, tiny_ckpt):
    (tmp_path / "photos").mkdir()
    _photos(tmp_path / "photos", 12)
    gcsemb = str(Path(sys.executable).parent / "gcsemb")
    base = [gcsemb, "embed", str(tmp_path / "photos"), str(tmp_path / "emb")]
    flags = ["--model", TINY_MODEL, "--pretrained", tiny_ckpt, "--no-progress"]
    tuning = ["--io-workers", "2", "--fetch-batch", "4", "--decode-workers", "2"]
    out = subprocess.run(
        [*base, *flags, *tuning, "--rows-per-shard", "5", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # one JSON object, nothing else on stdout
    assert report["embedded"] == 12 and report["bound"] in STAGES
    assert report["images_per_second"] > 0
    for stage in ("list", "fetch", "decode", "model", "write"):
        assert {"seconds", "items", "items_per_second"} <= set(report["stages"][stage])
    assert report["stages"]["fetch"]["workers"] == 2
    assert len(list((tmp_path / "emb").glob("part-*.parquet"))) == 3  # 5 rows per shard
    shard = next((tmp_path / "emb").glob("part-*.parquet"))
    cfg = json.loads(pq.read_schema(shard).metadata[b"gcsemb.config"])
    assert (cfg["io_workers"], cfg["fetch_batch"], cfg["decode_workers"]) == (2, 4, 2)
    base[-1] = str(tmp_path / "emb-text")
    text = subprocess.run([*base, *flags], capture_output=True, text=True, timeout=300)
    summary_line, final_line = text.stdout.strip().splitlines()
    assert "12 embedded" in summary_line and "bounds this run" in final_line


def test_gpu_decode_path_matches_the_cpu_path(tmp_path, tiny_ckpt, monkeypatch):
    # the batched tensor path (nvJPEG on CUDA) wired into the pipeline, run here on the CPU
    import gcsemb.images.tensor_decode as td
    from gcsemb.explore.dataset import read_embeddings

    (tmp_path / "photos").mkdir()
    _photos(tmp_path / "photos", 10)
    Image.new("RGBA", (64, 48), (0, 0, 255, 128)).save(tmp_path / "photos" / "alpha.png")
    cmyk = Image.new("CMYK", (80, 60), (0, 255, 255, 0))
    cmyk.save(tmp_path / "photos" / "cmyk.jpg", "JPEG")  # the tensor path leaves it to PIL
    cpu = embed(str(tmp_path / "photos"), str(tmp_path / "cpu"), model=TINY_MODEL,
                pretrained=tiny_ckpt, progress=False, decode="cpu")  # fmt: skip
    monkeypatch.setattr(td, "resolve_decode", lambda decode, device: "gpu")
    gpu = embed(str(tmp_path / "photos"), str(tmp_path / "gpu"), model=TINY_MODEL,
                pretrained=tiny_ckpt, progress=False, decode="gpu")  # fmt: skip
    assert (cpu.decode, gpu.decode) == ("cpu", "gpu") and gpu.embedded == cpu.embedded == 12
    a, xa = read_embeddings(str(tmp_path / "cpu"))
    b, xb = read_embeddings(str(tmp_path / "gpu"))
    order = b.set_index("uri").loc[a["uri"]].index
    xb = xb[[list(b["uri"]).index(u) for u in order]]
    cosine = np.einsum("ij,ij->i", xa, xb)
    assert cosine.min() >= 0.99, cosine
    assert list(a["width"]) == list(b.set_index("uri").loc[a["uri"], "width"])


def test_config_refuses_nonsense():
    with pytest.raises(ValueError, match="decode"):
        EmbedConfig(decode="tpu")
    with pytest.raises(ValueError, match="io_workers"):
        EmbedConfig(io_workers=0)


def test_an_estimate_is_printed_once_the_listing_is_complete(tmp_path, tiny_ckpt, capsys):
    (tmp_path / "photos").mkdir()
    _photos(tmp_path / "photos", 40)
    summary = embed(
        str(tmp_path / "photos"),
        str(tmp_path / "emb"),
        model=TINY_MODEL,
        pretrained=tiny_ckpt,
        batch_size=2,
        decode_workers=1,
        seconds_per_shard=0.2,
        progress=True,
    )
    err = capsys.readouterr().err
    estimate = [line for line in err.splitlines() if line.startswith("to do:")]
    assert summary.embedded == 40
    if summary.seconds >= 2.5:  # the estimate waits for two seconds of work to measure a rate
        assert len(estimate) == 1, err
        assert "40 images" in estimate[0] and "GB to download" in estimate[0]
        assert "left at" in estimate[0] and "images/s" in estimate[0]
    assert "bound=" in err  # the bar's postfix names the bounding stage as the run goes
