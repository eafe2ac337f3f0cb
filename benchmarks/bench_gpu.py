"""ViT-B-32 fp16 on one CUDA GPU: end to end from JPEGs, the bare model, decode alone (issue 15).

Issue 15's goal: >= 5,000 images/s end to end for ViT-B-32 (batch 256-512, fp16) on one
H100-class GPU with 640x480 JPEGs. Without CUDA this script says so and exits 0.

(1) The bare model: ``Embedder.embed_tensors`` on preprocessed tensors already on the GPU
    (autocast fp16, L2-normalised, copied back as the pipeline does), per batch size.
(2) Decode alone, the images already in memory: the CPU path (``decode_image(min_side=224)``
    plus open_clip's preprocess in ``decode_workers`` threads, as the pipeline's decode stage;
    with torch's default intra-op threads and with one) against
    ``gcsemb.images.tensor_decode.decode_batch`` on the GPU (nvJPEG, resize and crop on the device),
    and the same tensor path on the CPU for a few images.
(3) The pipeline, ``gcsemb.embed``, from fake-gcs-server on loopback (gcsemb's bundled
    binary, memory backend, the objects loaded at its start) and from a local folder, with
    ``decode="cpu"`` and ``decode="gpu"``: images/s and each run's stage report (busy seconds,
    capacity per stage, the bound stage).
    A warm-up run per decode mode (a few batches) comes first and is not counted.

The JPEGs are scikit-image's sample photographs cropped to 4:3 and resized to 640x480 (quality
90), each copy with its own bytes (a JPEG comment), so that no image is deduplicated.

Run (one command, about 4 minutes on a 16-core H100 host; ``--quick`` about 1.5)::

    python benchmarks/bench_gpu.py [--quick] [--images 16384] [--json results.json]

Dry run of the code paths on a CPU (tiny model, fp32, a few images; the GPU-decode pipeline
runs are skipped, the tensor decode path runs on the CPU)::

    python benchmarks/bench_gpu.py --device cpu --quick

Needs gcsemb's dependencies; ``--source local`` needs neither gcsfs nor fake-gcs-server.
``--budget-s`` (default 420) skips what would start after that many seconds, so the whole run
stays under 8 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_pipeline import torch_threads  # benchmarks/ is on sys.path when run as a script

GOAL = 5000.0  # images/s, issue 15
SIZE = (640, 480)
BUCKET = "gcsemb-bench-gpu"


class Bench:
    """The run's settings, clock, and the figures collected for the summary and ``--json``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.perf_counter()
        self.figures: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def has_time(self, what: str) -> bool:
        """Whether ``what`` may start within ``--budget-s``; else it is noted as skipped."""
        if self.elapsed() < self.args.budget_s:
            return True
        self.skipped.append(what)
        print(f"\n[skipped: {what}: {self.elapsed():.0f} s past, budget {self.args.budget_s} s]")
        return False

    def log(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {text}", flush=True)


# ------------------------------------------------------------------------------------- inputs


def jpegs(count: int) -> list[bytes]:
    """``count`` byte-distinct 640x480 JPEGs made from the sample photographs."""
    from PIL import Image

    from gcsemb.demo.samples import encode, sample_images

    bases = []
    for _, data in sample_images():
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
        w, h = rgb.size
        if w * 3 > h * 4:
            nw = h * 4 // 3
            rgb = rgb.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
        else:
            nh = w * 3 // 4
            rgb = rgb.crop((0, (h - nh) // 2, w, (h - nh) // 2 + nh))
        bases.append(encode(rgb.resize(SIZE, Image.Resampling.BICUBIC), "JPEG", quality=90))
    return [comment(bases[i % len(bases)], f"gcsemb-bench-gpu {i}") for i in range(count)]


def comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment holding ``text``: same pixels, other bytes (md5)."""
    t = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(t) + 2).to_bytes(2, "big") + t + jpeg[2:]


def names(count: int) -> list[str]:
    return [f"photos/{i // 1000:03d}/{i:06d}.jpg" for i in range(count)]


def write_folder(root: Path, datas: list[bytes]) -> Path:
    """The JPEGs as files under ``root/BUCKET/photos/``: the local source, and the emulator's
    initial data (``-data root``: a folder per bucket)."""
    for name, data in zip(names(len(datas)), datas, strict=True):
        path = root / BUCKET / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root / BUCKET / "photos"


@contextlib.contextmanager
def preloaded_emulator(data: Path, timeout: float = 600.0) -> Iterator[str]:
    """fake-gcs-server (gcsemb's bundled binary, memory backend) on loopback, started with the
    objects under ``data`` already in its buckets; yields its endpoint URL.

    Uploading 16k objects over HTTP takes minutes (the filesystem backend syncs each object,
    the memory backend rescans the bucket on each upload); loading them at start takes seconds.
    """
    from gcsemb.demo.emulator import _binary, _free_port  # a benchmark may use the private helpers

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"]
    cmd += ["-port", str(port), "-external-url", url, "-data", str(data), "-log-level", "error"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        from gcsemb.demo.emulator import stop_process

        stop_process(proc)


# ------------------------------------------------------------------------------------ timing


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn: Callable[[], int], min_seconds: float, device: Any, warmup: int = 2) -> float:
    """Items per second of ``fn`` (which returns how many items it did), after warm-up calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < min_seconds:
        done += fn()
    synchronize(device)
    return done / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------ sections


def bench_model(b: Bench, embedder: Any) -> None:
    """(1) The bare model on preprocessed tensors already on the device."""
    import torch

    args = b.args
    print(f"\n(1) bare model: {embedder!r}")
    print(f"    {'batch':>6}{'images/s':>11}{'ms/batch':>10}")
    best = 0.0
    for bs in args.batch_sizes:
        if not b.has_time(f"(1) batch {bs}"):
            break
        x = torch.randn(bs, 3, embedder.image_size, embedder.image_size, device=embedder.device)

        def step(x: Any = x) -> int:
            embedder.embed_tensors(x)  # returns a numpy array: synchronises, as in the pipeline
            return len(x)

        speed = rate(step, args.min_seconds, embedder.device, warmup=3)
        best = max(best, speed)
        b.figures[f"model_batch{bs}"] = round(speed, 1)
        print(f"    {bs:>6}{speed:>11.1f}{bs / speed * 1e3:>10.2f}", flush=True)
    b.figures["model_best"] = round(best, 1)


def bench_decode(b: Bench, embedder: Any, datas: list[bytes]) -> None:
    """(2) Decode alone: CPU threads (PIL) against decode_batch on the device."""
    from gcsemb.embedding.config import EmbedConfig
    from gcsemb.images.decode import decode_image
    from gcsemb.images.tensor_decode import decode_batch

    args = b.args
    workers = EmbedConfig().decode_workers
    side = embedder.image_size
    sample = datas[: args.decode_images]
    print(
        f"\n(2) decode + preprocess alone, {len(sample)} JPEGs of "
        f"{sum(map(len, sample)) / len(sample) / 1e3:.0f} kB in memory"
    )
    print(f"    {'path':<72}{'images/s':>10}")

    def cpu_one(data: bytes) -> Any:
        decoded = decode_image(data, min_side=side, name="x.jpg")
        assert decoded.ok, decoded.error
        return embedder.preprocess(decoded.image)

    def cpu_all() -> int:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(cpu_one, sample):
                pass
        return len(sample)

    import torch

    for threads in (None, 1):
        if not b.has_time("(2) CPU decode"):
            return
        label = f"CPU: decode_image + preprocess, {workers} threads, torch threads " + (
            f"{torch.get_num_threads()} (default)" if threads is None else str(threads)
        )
        with torch_threads(threads):
            speed = rate(cpu_all, args.min_seconds, embedder.device, warmup=1)
        b.figures["decode_cpu" if threads is None else "decode_cpu_torch1"] = round(speed, 1)
        print(f"    {label:<72}{speed:>10.1f}", flush=True)

    cfg = embedder.preprocess_cfg
    bs = args.batch_sizes[-1]
    devices = [embedder.device] if embedder.device.type == "cuda" else []
    import torch

    devices.append(torch.device("cpu"))
    for device in devices:
        if not b.has_time(f"(2) decode_batch on {device}"):
            return
        part = sample if device.type == "cuda" else sample[: args.cpu_tensor_images]

        def batched(part: list[bytes] = part, device: Any = device) -> int:
            n = 0
            for lo in range(0, len(part), bs):
                out = decode_batch(part[lo : lo + bs], cfg, device)
                assert not out.fallback, out.fallback
                n += len(out.indices)
            return n

        speed = rate(batched, args.min_seconds, device, warmup=1)
        what = "nvJPEG" if device.type == "cuda" else "libjpeg, per image"
        label = f"decode_batch on {device} ({what}), batches of {bs}, {len(part)} images"
        b.figures[f"decode_batch_{device.type}"] = round(speed, 1)
        print(f"    {label:<72}{speed:>10.1f}", flush=True)


def stage_report(summary: Any) -> dict[str, Any]:
    """Print a run's stage report; return ``summary.to_dict()``."""
    report = summary.to_dict()
    print(
        f"        {'stage':<7}{'busy s':>9}{'items':>8}{'workers':>8}{'capacity/s':>12}{'MB/s':>8}"
    )
    for name, st in report["stages"].items():
        cap = st["items_per_second"]
        mbps = st.get("bytes_per_second", 0) / 2**20
        print(
            f"        {name:<7}{st['seconds']:>9.2f}{st['items']:>8}{st['workers']:>8}"
            f"{(f'{cap:.0f}' if cap is not None else '-'):>12}{(f'{mbps:.0f}' if mbps else '-'):>8}"
        )
    print(f"        bound: {report['bound']}; {report['hint']}", flush=True)
    return report


def bench_pipeline(b: Bench, embedder: Any, sources: dict[str, Any], out: Path) -> None:
    """(3) gcsemb.embed end to end, decode on the CPU against on the GPU."""
    import gcsemb
    from gcsemb.images.tensor_decode import gpu_decode_available

    args = b.args
    gpu_ok = embedder.device.type == "cuda" and gpu_decode_available(str(embedder.device))
    modes = ["cpu", "gpu"]
    bs = args.batch_sizes[-1]
    common = dict(
        model=args.model,
        pretrained=None,
        device=str(embedder.device),
        precision=args.precision,
        batch_size=bs,
        progress=False,
    )
    runs: list[tuple[str, str, dict[str, Any]]] = []
    for source in sources:
        for mode in modes:
            runs.append((source, mode, {}))
        if source == "emulator" and not args.quick:
            runs.append((source, "gpu", {"io_workers": 16, "fetch_batch": 64}))
    print(
        f"\n(3) gcsemb.embed, {args.model}, {args.precision}, batch {bs}, {args.images} images"
        f" per run; sources: {', '.join(sources)}"
    )
    warmed: set[str] = set()
    k = 0
    for source, mode, extra in runs:
        label = f"{source}, decode={mode}" + (
            f", {', '.join(f'{a}={v}' for a, v in extra.items())}" if extra else ""
        )
        dry = mode == "gpu" and not gpu_ok and embedder.device.type == "cpu"
        if mode == "gpu" and not gpu_ok and not dry:
            print(f"\n    {label}: skipped (GPU decode needs torchvision's nvJPEG on CUDA)")
            b.skipped.append(label)
            continue
        if dry:
            label += " (dry run: the tensor decode path on the CPU)"
        if not b.has_time(f"(3) {label}"):
            continue
        k += 1
        with tensor_decode_on_cpu(dry):
            if mode not in warmed:  # kernels, nvJPEG's handles, the thread pools: not counted
                gcsemb.embed(sources[source], str(out / f"warm-{mode}"), decode=mode,
                             limit=2 * bs, **common)  # fmt: skip
                warmed.add(mode)
            started = time.perf_counter()
            summary = gcsemb.embed(
                sources[source], str(out / f"run{k}"), decode=mode, **common, **extra
            )
            wall = time.perf_counter() - started
        speed = summary.embedded / wall
        print(
            f"\n    {label}: {summary.embedded} embedded, {summary.failed} failed in {wall:.1f} s "
            f"= {speed:.0f} images/s (goal {GOAL:.0f}: {speed / GOAL:.2f})"
        )
        report = stage_report(summary)
        b.figures[f"pipeline {label}"] = {"images_per_second": round(speed, 1), **report}
        shutil.rmtree(out / f"run{k}", ignore_errors=True)


@contextlib.contextmanager
def tensor_decode_on_cpu(active: bool) -> Iterator[None]:
    """For the CPU dry run: let ``decode="gpu"`` take the batched tensor path on the CPU (what
    it does on CUDA, with libjpeg instead of nvJPEG), so that its code runs without a GPU."""
    import gcsemb.images.tensor_decode as td

    if not active:
        yield
        return
    original = td.resolve_decode
    td.resolve_decode = lambda decode, device: (
        "gpu" if decode == "gpu" else original(decode, device)
    )
    try:
        yield
    finally:
        td.resolve_decode = original


# ------------------------------------------------------------------------------------ main


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer images and shorter timings")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (dry run)")
    p.add_argument("--model", help="open_clip architecture (default: ViT-B-32; tiny on a CPU)")
    p.add_argument("--precision", help="fp16 (default on CUDA), bf16, fp32 (default on a CPU)")
    p.add_argument("--images", type=int, help="JPEGs per pipeline run (16384; quick 4096)")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="(1) batch sizes (256 512)")
    p.add_argument(
        "--source",
        choices=("both", "emulator", "local"),
        default="both",
        help="where (3) reads the JPEGs (default both: the emulator and a local folder)",
    )
    p.add_argument("--only", default="123", help="sections to run (default 123)")
    p.add_argument("--budget-s", type=float, default=420.0, help="start nothing after this")
    p.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = p.parse_args()
    cpu = args.device == "cpu"
    if cpu:
        from gcsemb.model.embedder import TINY_MODEL

        args.model = args.model or TINY_MODEL
        args.precision = args.precision or "fp32"
        args.images = args.images or (128 if args.quick else 1024)
        args.batch_sizes = args.batch_sizes or [32]
    else:
        args.model = args.model or "ViT-B-32"
        args.precision = args.precision or "fp16"
        args.images = args.images or (4096 if args.quick else 16384)
        args.batch_sizes = args.batch_sizes or [256, 512]
    args.batch_sizes = sorted(args.batch_sizes)
    args.min_seconds = 0.5 if args.quick else 2.0
    args.decode_images = min(args.images, 1024 if args.quick else 4096)
    args.cpu_tensor_images = 64 if args.quick else 256
    return args


def main() -> int:
    args = parse()
    try:
        import torch
    except ImportError:
        print("bench_gpu: skipped: torch is not installed")
        return 0
    if args.device != "cpu" and not torch.cuda.is_available():
        print(
            "bench_gpu: skipped: torch sees no CUDA GPU (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); "
            "`--device cpu --quick` runs the code paths on the CPU"
        )
        return 0
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # before gcsfs loads
    import torchvision

    import gcsemb
    from gcsemb.model.embedder import load_embedder

    b = Bench(args)
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (dry run)"
    print(
        f"GPU: {gpu}; {os.cpu_count()} CPUs; torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, gcsemb {gcsemb.__version__}, Python "
        f"{platform.python_version()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    b.figures["gpu"], b.figures["cpus"] = gpu, os.cpu_count()
    embedder = load_embedder(args.model, None, device=args.device, precision=args.precision)
    b.log(f"model loaded: {embedder!r}")
    with tempfile.TemporaryDirectory(prefix="gcsemb-bench-gpu-") as tmp:
        root = Path(tmp)
        datas = jpegs(args.images)
        b.log(f"{len(datas)} JPEGs made ({sum(map(len, datas)) / 1e6:.0f} MB)")
        if "1" in args.only:
            bench_model(b, embedder)
        if "2" in args.only:
            bench_decode(b, embedder, datas)
        if "3" in args.only and b.has_time("(3) pipeline"):
            with sources_for(b, root, datas) as sources:
                bench_pipeline(b, embedder, sources, root / "out")
    if device.type == "cuda":
        b.figures["max_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    summarize(b)
    if args.json:
        args.json.write_text(json.dumps(b.figures, indent=1, default=str))
    return 0


@contextlib.contextmanager
def sources_for(b: Bench, root: Path, datas: list[bytes]) -> Iterator[dict[str, Any]]:
    """The sources of (3): the JPEGs in a local folder, and served by the emulator."""
    from gcsemb.storage import open_store

    sources: dict[str, Any] = {}
    folder = write_folder(root / "data", datas)
    b.log(f"wrote {len(datas)} JPEGs under {folder}")
    with contextlib.ExitStack() as stack:
        if b.args.source in ("both", "emulator"):
            try:
                url = stack.enter_context(preloaded_emulator(root / "data"))
                sources["emulator"] = open_store(f"gs://{BUCKET}/photos", endpoint=url)
                b.log(f"fake-gcs-server holds the {len(datas)} objects at {url}")
            except (ImportError, OSError, RuntimeError) as e:  # no fake-gcs-server, gcsfs here
                print(f"\n    emulator unavailable ({type(e).__name__}: {e}): local folder only")
                b.skipped.append("emulator source")
        if b.args.source in ("both", "local") or not sources:
            sources["local"] = str(folder)
        yield sources


def summarize(b: Bench) -> None:
    f = b.figures
    print("\nsummary (images/s)\n")
    rows = [(k, v) for k, v in f.items() if k.startswith(("model_batch", "decode_"))]
    rows += [(k, v["images_per_second"]) for k, v in f.items() if k.startswith("pipeline ")]
    for key, value in rows:
        print(f"    {key:<72}{value:>10}")
    e2e = {k: v for k, v in f.items() if k.startswith("pipeline emulator")}
    if e2e:
        best_key = max(e2e, key=lambda k: e2e[k]["images_per_second"])
        best = e2e[best_key]
        verdict = "met" if best["images_per_second"] >= GOAL else "not met"
        if b.args.device == "cpu":
            verdict += " (a dry run on the CPU: the goal is for a GPU)"
        print(
            f"\n    goal: >= {GOAL:.0f} images/s end to end from the emulator: {verdict} "
            f"(best {best['images_per_second']:.0f}, {best_key.removeprefix('pipeline ')}; "
            f"bound by {best['bound']})"
        )
        f["goal_met"] = best["images_per_second"] >= GOAL
    if b.skipped:
        print(f"\n    skipped: {'; '.join(b.skipped)}")
    print(f"\n    total {b.elapsed():.0f} s")


if __name__ == "__main__":
    sys.exit(main())
