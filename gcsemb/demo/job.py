"""The embedded default: the whole job on a local GCS emulator with sample photographs.

No account, no bucket, no internet: fake-gcs-server stands in for GCS, scikit-image's bundled
photographs (varied into a few hundred) stand in for a bucket of images, and a model with seeded
random weights stands in for downloaded CLIP weights.

Example:
    >>> from gcsemb.demo.job import run_demo
    >>> run_demo(n_images=50)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import mimetypes
import time
from pathlib import Path
from typing import Any

from gcsemb.demo.emulator import Emulator
from gcsemb.demo.samples import broken_images, sample_images

DEMO_BUCKET = "gcsemb-demo"


def upload_samples(fs: Any, bucket: str = DEMO_BUCKET, n_images: int = 300) -> int:
    """Upload sample photographs, a few broken files and one exact copy; return the count.

    Example:
        >>> with Emulator(buckets=["demo"]) as gcs:  # doctest: +SKIP
        ...     upload_samples(gcs.filesystem(), "demo", 20)
        24
    """
    objects = {f"{bucket}/{name}": data for name, data in sample_images(n_images)}
    objects.update({f"{bucket}/{name}": data for name, data in broken_images().items()})
    first = next(iter(objects.values()))
    objects[f"{bucket}/photos/copies/same bytes, other name.jpg"] = first
    by_type: dict[str, dict[str, bytes]] = {}
    for path, data in objects.items():
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        by_type.setdefault(kind, {})[path] = data
    for kind, group in by_type.items():
        fs.pipe(group, content_type=kind)  # concurrent uploads
    return len(objects)


def demo_checkpoint(model: str) -> Path:
    """Seeded random weights for ``model``, saved once in the cache (no download)."""
    from gcsemb.model.embedder import save_random_checkpoint
    from gcsemb.storage.cache import cache_dir

    path = cache_dir() / "demo" / f"{Path(model).stem}-random-seed0.pt"
    if not path.is_file():
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # open_clip warns that the weights are random: we know
        try:
            save_random_checkpoint(path, model)
        finally:
            root.setLevel(level)
    return path


def run_demo(n_images: int = 300, model: str | None = None, out: str = "demo-output") -> Any:
    """Upload sample images to a local emulator, embed them, write parquet, show the results.

    Args:
        n_images: How many sample photographs (306 at most).
        model: open_clip architecture or config JSON (default: a tiny CLIP, fast on a CPU).
        out: Local folder that receives a copy of the parquet dataset.

    Returns:
        The :class:`gcsemb.embedding.job.EmbedSummary` of the first run.
    """
    from gcsemb.embedding.job import embed
    from gcsemb.explore.dataset import read_embeddings, read_errors
    from gcsemb.model.embedder import TINY_MODEL

    model = model or TINY_MODEL
    print("Starting a local GCS emulator (fake-gcs-server): no account or internet needed.")
    with Emulator(buckets=[DEMO_BUCKET]) as gcs:
        fs = gcs.filesystem()
        started = time.perf_counter()
        count = upload_samples(fs, n_images=n_images)
        print(
            f"Uploaded {count} objects to gs://{DEMO_BUCKET}/photos/ "
            f"in {time.perf_counter() - started:.1f} s."
        )
        ckpt = demo_checkpoint(model)
        print(
            f"Model: {Path(model).stem} with RANDOM weights ({ckpt}), so no download is needed.\n"
            "  Embeddings are real computations but carry no meaning. For real CLIP weights pass "
            "--model ViT-B-32 --pretrained laion2b_s34b_b79k\n  (downloaded once), or a "
            "checkpoint path / gs:// URL."
        )
        src = gcs.store(f"gs://{DEMO_BUCKET}/photos")  # only the demo's handles reach it
        dst = src.at(f"gs://{DEMO_BUCKET}/embeddings")
        summary = embed(src, dst, model=model, pretrained=str(ckpt))
        print(summary)
        again = embed(src, dst, model=model, pretrained=str(ckpt), progress=False)
        print(
            f"Run again (nothing changed): {again.embedded} embedded, {again.skipped} skipped, "
            f"in {again.seconds:.2f} s."
        )
        df, matrix = read_embeddings(dst)
        errors = read_errors(dst)
        print(
            f"\nThe dataset: {len(df)} rows x {matrix.shape[1]} dimensions; "
            f"{len(errors)} failures recorded in {dst.url}/_errors/:"
        )
        for row in errors.itertuples():
            print(f"  {row.uri}: {row.error} ({row.stage})")
        local = Path(out).resolve() / "embeddings"
        local.mkdir(parents=True, exist_ok=True)
        fs.get(f"{DEMO_BUCKET}/embeddings/", str(local), recursive=True)
    print(
        f"\nA copy is in {local}. Next:\n"
        f"  python -c \"import pandas as pd; print(pd.read_parquet('{local}').head())\"\n"
        "  jupyter lab notebooks/   (walk through listing, embedding and plots)\n"
        "  gcsemb embed gs://YOUR-BUCKET/photos gs://YOUR-BUCKET/embeddings   (your images)"
    )
    return summary
