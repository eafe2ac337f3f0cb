"""Embedder load times and ViT-B-32 CPU throughput (random weights: no network needed).

Run: ``.venv/bin/python benchmarks/bench_embedder.py`` (about two minutes on 2 cores), or
``--quick`` for a smoke run (the tiny model's loads, short timings, batches 1 and 8).
Cold loads run in fresh processes; "first" also hashes the checkpoint for its name, "again"
finds the hash in the cache's sidecar.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from gcsemb.model.embedder import TINY_MODEL, load_embedder, save_random_checkpoint

COLD = """
import json, sys, time
t0 = time.perf_counter()
from gcsemb.model.embedder import load_embedder
t1 = time.perf_counter()
load_embedder(sys.argv[1], sys.argv[2], device="cpu")
t2 = time.perf_counter()
load_embedder(sys.argv[1], sys.argv[2], device="cpu")
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "cold": t2 - t1, "cached": t3 - t2}))
"""


def cold_load(model: str, ckpt: str, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", COLD, model, ckpt], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def rate(fn, n_images: int, min_seconds: float = 3.0) -> float:
    fn()  # warm-up
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < min_seconds:
        fn()
        runs += 1
    return runs * n_images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: short and small")
    args = parser.parse_args()
    min_seconds = 0.3 if args.quick else 3.0
    models = [(TINY_MODEL, "tiny-clip")] + ([] if args.quick else [("ViT-B-32", "ViT-B-32")])
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GCSEMB_CACHE": os.path.join(tmp, "cache")}
        os.environ["GCSEMB_CACHE"] = env["GCSEMB_CACHE"]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
        print(
            "| model | checkpoint | import | cold load (first) | cold load (again) | cached load |"
        )
        print("|---|---|---|---|---|---|")
        for model, label in models:
            ckpt = save_random_checkpoint(tmp, model)
            size = os.path.getsize(ckpt) / 2**20
            first, again = cold_load(model, str(ckpt), env), cold_load(model, str(ckpt), env)
            cells = [f"{size:.0f} MiB", f"{again['import']:.2f} s", f"{first['cold']:.2f} s"]
            cells += [f"{again['cold']:.2f} s", f"{again['cached'] * 1e6:.0f} µs"]
            print(f"| {label} | {' | '.join(cells)} |")

        ckpt = os.path.join(tmp, "ViT-B-32-random-seed0.pt")
        if not os.path.exists(ckpt):  # --quick skipped its cold loads
            save_random_checkpoint(ckpt, "ViT-B-32")
        embedder = load_embedder("ViT-B-32", ckpt, device="cpu")
        print(f"\n{embedder!r}\n")
        print("| ViT-B-32, CPU | batch | images/s |")
        print("|---|---|---|")
        for batch in (1, 8) if args.quick else (1, 8, 32, 64):
            tensors = torch.randn(batch, 3, 224, 224)
            speed = rate(lambda t=tensors: embedder.embed_tensors(t), batch, min_seconds)
            print(f"| embed_tensors | {batch} | {speed:.1f} |")
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))] * 32
        speed = rate(lambda: [embedder.preprocess(im) for im in images], 32, min(1.0, min_seconds))
        print(f"| preprocess only (640x480 PIL) | 32 | {speed:.1f} |")
        speed = rate(lambda: embedder.embed_images(images), 32, min_seconds)
        print(f"| embed_images (640x480 PIL) | 32 | {speed:.1f} |")


if __name__ == "__main__":
    main()
