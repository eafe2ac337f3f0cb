"""JPEG decoding on the CPU: the reduced-size (draft) fast path, and threads against processes.

(1) ``gcsemb.images.decode.decode_image`` on JPEGs, with and without ``min_side`` (PIL's ``draft``:
    the JPEG decoder itself decodes at 1/2, 1/4 or 1/8 size), one thread, median of ``runs``.
(2) What a decode worker does per image for a 224-pixel model (ViT-B-32) on 12 MP photos:
    ``decode_image(data, min_side=224)`` plus open_clip's preprocess (bicubic resize, centre
    crop, normalise), bytes in and the float32 ``3x224x224`` array out, run by a
    ``ThreadPoolExecutor`` and by a ``ProcessPoolExecutor`` (``forkserver``; the bytes are
    pickled to the workers and the arrays back, as a process-based decode stage would) with 1 and
    2 workers, or ``--workers``. It prints images/s, the parent's CPU per image, the scaling from
    one worker, the share of its time one decode worker holds the GIL (a pure-Python probe
    thread's slowdown beside it: the bound on how far threads can scale) and which pool wins
    here (issue 15: on hosts with many cores, choose by measurement, e.g. ``--workers 1 8 16``).

Run: ``nice .venv/bin/python benchmarks/bench_decode.py [runs] [--quick] [--workers 1 2 4]``
(about a minute on 2 cores; the first run also makes the 12 MP photos, shared with
bench_pipeline.py's cache). Wall-clock rates move with other work on the machine: the load average
is printed.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import statistics
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image

from gcsemb.images.decode import decode_image

MIN_SIDE = 224  # ViT-B-32's input side


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


def bench_draft(runs: int) -> None:
    """(1) decode_image with and without the reduced-size decode, one thread."""
    print(f"(1) decode_image, one thread, median of {runs} runs\n")
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


# ---------------------------------------------------------------- (2) threads against processes

_TRANSFORM: Any = None


def init_worker() -> None:
    """In every worker (thread pool: once, in this process): the model's preprocess, 1 thread.

    torch gets one intra-op thread per process, as the pipeline's decode workers would want: with
    more, each small normalise spins threads that fight the other workers for the cores.
    """
    global _TRANSFORM
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2

    torch.set_num_threads(1)
    if _TRANSFORM is None:
        _TRANSFORM = image_transform_v2(PreprocessCfg(size=MIN_SIDE), is_train=False)


def work(data: bytes) -> np.ndarray:
    """One decode worker's job: JPEG bytes in, the model's ``3x224x224`` float32 array out."""
    decoded = decode_image(data, min_side=MIN_SIDE, name="photo.jpg")
    if not decoded.ok:
        raise RuntimeError(decoded.error)
    return _TRANSFORM(decoded.image).numpy()


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed_pass(pool: Executor, datas: list[bytes]) -> tuple[float, float]:
    """Seconds of one ``pool.map(work, datas)`` pass, and this process's CPU seconds in it."""
    c, start = cpu_seconds(), time.perf_counter()
    out = list(pool.map(work, datas))
    wall = time.perf_counter() - start
    assert all(a.shape == (3, MIN_SIDE, MIN_SIDE) for a in out)
    return wall, cpu_seconds() - c


def bench_pools(args: argparse.Namespace) -> None:
    """(2) decode + preprocess of 12 MP photos in threads against processes."""
    from bench_pipeline import PHOTO_GRAIN, PHOTO_SIZE, photo_jpegs  # benchmarks/ is on sys.path

    folder = args.cache / f"photos-{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}-{args.photos}"
    paths = photo_jpegs(folder, args.photos, PHOTO_SIZE, PHOTO_GRAIN)
    distinct = [p.read_bytes() for p in paths]
    datas = [distinct[i % len(distinct)] for i in range(args.images)]
    megabytes = sum(map(len, distinct)) / len(distinct) / 1e6
    init_worker()  # the thread pool's workers share this process's transform
    context = get_context("forkserver")
    print(
        f"\n(2) {len(datas)} decodes of {len(distinct)} 12 MP JPEGs ({megabytes:.1f} MB each): "
        f"decode_image(min_side={MIN_SIDE}) + open_clip preprocess -> float32 3x{MIN_SIDE}x"
        f"{MIN_SIDE}; best of {args.repeats} interleaved passes per pool; load average "
        f"{load_average()}\n"
    )
    print(f"{'pool':<9}{'workers':>8}{'images/s':>10}{'vs 1 worker':>12}{'parent CPU ms/img':>19}")
    pools: dict[tuple[str, int], Executor] = {}
    for n in args.workers:  # all pools started and warm before any pass is timed
        pools["thread", n] = ThreadPoolExecutor(n)
        pools["process", n] = ProcessPoolExecutor(n, mp_context=context, initializer=init_worker)
    for pool in pools.values():
        list(pool.map(work, datas))
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for _ in range(args.repeats):  # interleaved rounds: drifting load hits every pool alike
        for key, pool in pools.items():
            wall, cpu = timed_pass(pool, datas)
            if key not in best or wall < best[key][0]:
                best[key] = (wall, cpu)
    for pool in pools.values():
        pool.shutdown()
    rates = {key: len(datas) / wall for key, (wall, _) in best.items()}
    for kind in ("thread", "process"):
        for n in args.workers:
            rate, cpu = rates[kind, n], best[kind, n][1] / len(datas)
            scale = rate / rates[kind, args.workers[0]]
            print(f"{kind:<9}{n:>8}{rate:>10.1f}{scale:>11.2f}x{cpu * 1e3:>19.1f}", flush=True)
    print()
    for n in args.workers:
        ratio = rates["process", n] / rates["thread", n]
        winner = (
            "processes" if ratio > 1.05 else "threads" if ratio < 0.95 else "neither (within 5%)"
        )
        print(f"{n} worker(s): processes / threads = {ratio:.2f} -> {winner}")
    top, low = args.workers[-1], args.workers[0]
    thread_scale = rates["thread", top] / rates["thread", low]
    process_scale = rates["process", top] / rates["process", low]
    ratio = rates["process", top] / rates["thread", top]
    held = gil_share(distinct, args.gil_seconds)
    cores = os.cpu_count() or 1
    print(
        f"\nGIL held by one decode worker: {held:.0%} of its time (a pure-Python probe thread "
        "runs that much slower beside it); by Amdahl's law threads could then scale to about "
        f"{1 / max(held, 0.01):.0f} workers before the GIL limits them."
    )
    if top > low and process_scale < 1.3 * top / low / 2:
        why = (
            f"Neither pool scaled from {low} to {top} workers ({thread_scale:.2f}x threads, "
            f"{process_scale:.2f}x processes): other work held a core (load average "
            f"{load_average()}), so only the same-size comparisons count. "
        )
    elif thread_scale >= 0.9 * process_scale:
        why = (
            f"Threads scale as well as processes ({thread_scale:.2f}x against "
            f"{process_scale:.2f}x from {low} to {top}): PIL releases the GIL while its C code "
            "decodes and resizes (ImagingSectionEnter) and torch while it normalises, so only "
            "the Python glue between those calls holds it. "
        )
    else:
        why = (
            f"Processes scale better ({process_scale:.2f}x against {thread_scale:.2f}x from "
            f"{low} to {top}): the GIL-held share limits threads at this core count. "
        )
    print(
        f"\n{why}Processes pay for pickling {megabytes:.1f} MB in and "
        f"{3 * MIN_SIDE * MIN_SIDE * 4 / 1e6:.1f} MB out per image (the parent's CPU column) and "
        "for their own copies of the libraries. "
        + (
            f"Threads win here ({cores} cores)."
            if ratio < 0.95
            else f"Processes win here ({cores} cores)."
            if ratio > 1.05
            else f"The two are even here ({cores} cores)."
        )
    )


def gil_share(datas: list[bytes], seconds: float) -> float:
    """The share of its time a decode worker holds the GIL, estimated with a probe thread.

    A pure-Python counting loop needs the GIL all the time: its rate beside one thread running
    :func:`work` in a loop, over its rate alone, is the share of the time the GIL was free. On a
    busy machine the probe also loses CPU time to other work, which inflates the estimate.
    """
    import threading

    def probe_rate(busy: bool) -> float:
        stop, done = threading.Event(), threading.Event()

        def worker() -> None:
            i = 0
            while not done.is_set():
                work(datas[i % len(datas)])
                i += 1

        background = threading.Thread(target=worker) if busy else None
        if background is not None:
            background.start()
            time.sleep(0.2)  # let it get going
        count, start = 0, time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(1000):
                count += 1
        rate = count / (time.perf_counter() - start)
        stop.set()
        done.set()
        if background is not None:
            background.join()
        return rate

    alone = max(probe_rate(False) for _ in range(2))
    beside = max(probe_rate(True) for _ in range(2))  # other work only ever slows the probe
    return max(0.0, 1 - beside / alone)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", type=int, help="runs per case in (1) (default 30)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer runs and images")
    parser.add_argument(
        "--workers", type=int, nargs="+", help="pool sizes in (2) (default: 1 and 2)"
    )
    parser.add_argument("--only", default="12", help="sections to run (default: 12)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir(), "gcsemb-bench-pipeline"),
        help="where the 12 MP photos are kept (shared with bench_pipeline.py)",
    )
    args = parser.parse_args()
    args.runs = args.runs or (5 if args.quick else 30)
    args.workers = sorted(args.workers or [1, 2])
    args.photos = 24  # the same photos as bench_pipeline.py --quick's (e)
    args.images = max(16 if args.quick else 48, 8 * args.workers[-1])
    args.repeats = 2 if args.quick else 5
    args.gil_seconds = 1.0 if args.quick else 3.0
    print(
        f"Pillow {PIL.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load_average()}\n"
    )
    if "1" in args.only:
        bench_draft(args.runs)
    if "2" in args.only:
        bench_pools(args)


if __name__ == "__main__":
    main()
