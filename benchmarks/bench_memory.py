"""Peak memory against image size, kind and count (issue 14): one decode, and a whole run.

(decode) ``gcsemb.images.decode.decode_image``: each case runs in a fresh subprocess that first
reads its files, then decodes; the table shows how far the peak resident set (``ru_maxrss``) rose
above the resident set just before decoding, next to the bytes PIL stores for the decoded pixels
("decoded"). ``--baseline REV`` also runs the single-image cases with ``gcsemb/images/decode.py`` as
of a git revision (e.g. one before issue 14).

(e2e) The run issue 14 reported (2.8 GB peak on 2 cores before the work): 40 sample photos plus a
9000x9000 16-bit PNG, an 8000x8000 float32 TIFF and a 300 MB object named ``.jpg`` (random
bytes), in a local folder, embedded by ``gcsemb embed`` (the CLI's own ``main``, tiny model with
seeded random weights) in a fresh process per case: with the default settings, with smaller
``max_bytes_in_flight`` / ``decode_memory`` budgets, and with the object-size cap raised above
300 MB (so the big object is downloaded). The child reports its ``ru_maxrss`` and ``VmHWM``.
``--baseline REV`` also runs the defaults case with the whole ``gcsemb`` package of REV.

Run: nice .venv/bin/python benchmarks/bench_memory.py [--only decode|e2e] [--baseline e4ea344]
[--cache DIR]. Inputs are generated once into the cache (default: $TMPDIR/gcsemb-bench-memory),
~1 minute; the e2e cases take about 20 s each on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
from bench_pipeline import baseline_tree  # benchmarks/ is on sys.path when run as a script
from PIL import Image

MB = 1e6


def gradient_u16(width: int, height: int) -> np.ndarray:
    """A smooth 16-bit diagonal ramp with ripples, built row block by row block."""
    out = np.empty((height, width), np.uint16)
    x = np.arange(width, dtype=np.float32)
    for top in range(0, height, 512):
        y = np.arange(top, min(height, top + 512), dtype=np.float32)[:, None]
        v = (x + y) / (width + height) * 60000 + 2000 * np.sin(x / 97) * np.cos(y / 61)
        out[top : top + len(y)] = np.clip(v, 0, 65535)
    return out


def photo_rgb(width: int, height: int) -> Image.Image:
    """Smooth colour gradients plus mild noise: compresses and decodes like a photo."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    rgb += 40 * np.sin(x / 37.0)[..., None] + rng.normal(0, 8, rgb.shape).astype(np.float32)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def float_tiles(width: int, height: int) -> np.ndarray:
    """Float32 in [-1000, 2900]: tiles of 40 levels, so deflate keeps the file small."""
    out = np.empty((height, width), np.float32)
    x = np.arange(width) // 50
    for top in range(0, height, 512):
        y = np.arange(top, min(height, top + 512))[:, None] // 50
        out[top : top + len(y)] = ((x + y) % 40) * 100.0 - 1000.0
    return out


IMAGES = {  # file name -> (description, maker)
    "photo-12mp.jpg": ("12 MP JPEG (4000x3000)", lambda: (photo_rgb(4000, 3000), {"quality": 90})),
    "gray16-9000.png": (
        "9000x9000 16-bit PNG",
        lambda: (Image.fromarray(gradient_u16(9000, 9000)), {"compress_level": 1}),
    ),
    "float-8000.tif": (
        "8000x8000 float TIFF",
        lambda: (Image.fromarray(float_tiles(8000, 8000)), {"compression": "tiff_deflate"}),
    ),
    "rgb-8000x6000.png": (
        "8000x6000 RGB PNG",
        lambda: (photo_rgb(8000, 6000), {"compress_level": 1}),
    ),
}


def ensure_images(cache: Path) -> dict[str, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (_, make) in IMAGES.items():
        path = paths[name] = cache / name
        if not path.exists():
            print(f"generating {path} ...", file=sys.stderr, flush=True)
            im, params = make()
            im.save(tmp := path.with_suffix(".part"), Image.registered_extensions()[path.suffix],
                    **params)  # fmt: skip
            tmp.rename(path)
    return paths


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(spec: dict) -> dict:
    """In a fresh process: read the files, decode them, report the rise of the peak RSS."""
    if spec.get("module"):
        loader = importlib.util.spec_from_file_location("decode_under_test", spec["module"])
        module = sys.modules[loader.name] = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        import gcsemb.images.decode as module
    datas = [Path(p).read_bytes() for p in spec["paths"]]
    kwargs: dict = {"min_side": spec["min_side"]}
    if "budget" in module.decode_image.__kwdefaults__:
        limit = spec.get("budget")
        kwargs["budget"] = module.PixelBudget(int(limit)) if limit else None
    before = max(rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    start = time.perf_counter()
    with ThreadPoolExecutor(spec.get("threads", 1)) as pool:
        decoded = list(pool.map(lambda d: module.decode_image(d, **kwargs), datas))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    errors = [d.error for d in decoded if not d.ok]
    return {"rise": peak - before, "peak": peak, "seconds": seconds, "errors": errors}


def measure(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"worker failed for {spec}:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def decoded_size(path: Path) -> int:
    from gcsemb.images.decode import decoded_bytes

    with Image.open(path) as im:
        return decoded_bytes(im.size, im.mode)


def bench_decode(args: argparse.Namespace, paths: dict[str, Path]) -> None:
    """(decode) Peak RSS rise of decode_image by image size, kind and thread count."""
    baseline = None
    if args.baseline:
        src = subprocess.run(
            ["git", "show", f"{args.baseline}:gcsemb/images/decode.py"],
            capture_output=True,
            check=True,
            cwd=REPO,
        ).stdout
        baseline = Path(tempfile.mkdtemp(), "decode_baseline.py")
        baseline.write_bytes(src)

    gray16 = str(paths["gray16-9000.png"])
    cases = [  # (label, files, min_side, threads, budget bytes or None)
        *(
            (f"{IMAGES[name][0]}, {label}", [str(paths[name])], side, 1, None)
            for name in IMAGES
            for side, label in ((224, "min_side 224"), (None, "full size"))
        ),
        ("4 x 16-bit PNG, 2 threads, no budget", [gray16] * 4, 224, 2, 0),
        ("4 x 16-bit PNG, 2 threads, 1 GiB budget", [gray16] * 4, 224, 2, 2**30),
        ("4 x 16-bit PNG, 2 threads, 200 MiB budget", [gray16] * 4, 224, 2, 200 * 2**20),
    ]
    print("(decode) rise = peak RSS - RSS after reading the files\n")
    head = f"{'case':<46}{'file MB':>8}{'decoded MB':>11}{'rise MB':>9}{'rise/decoded':>13}{'s':>6}"
    print(head + ("  baseline: rise MB, rise/decoded, s" if baseline else ""))
    for label, files, side, threads, budget in cases:
        spec = {"paths": files, "min_side": side, "threads": threads, "budget": budget}
        got = measure(spec)
        assert not got["errors"], got["errors"]
        size = sum(decoded_size(Path(p)) for p in files[:threads])  # the most that can be in flight
        file_mb = sum(Path(p).stat().st_size for p in files) / MB
        line = (
            f"{label:<46}{file_mb:>8.0f}{size / MB:>11.0f}{got['rise'] / MB:>9.0f}"
            f"{got['rise'] / size:>13.2f}{got['seconds']:>6.1f}"
        )
        if baseline and not budget:  # the baseline has no budget
            old = measure({**spec, "module": str(baseline)})
            line += f"  {old['rise'] / MB:>9.0f}{old['rise'] / size:>13.2f}{old['seconds']:>6.1f}"
        print(line, flush=True)
    print("\ndecoded MB: PIL's storage of the full-size pixels (of the 2 in flight for 2 threads)")


# ------------------------------------------------------------------------------ (e2e) a whole run

REPO = Path(__file__).resolve().parents[1]
HUGE_BYTES = 300_000_000
ISSUE_PEAK_MB = 2800  # issue 14: `gcsemb embed` of this folder before the work, 2 cores

CLI_CHILD = """
import json, resource, sys, time
overrides = json.loads(sys.argv[1])
import gcsemb, gcsemb.embedding.job
if overrides:  # settings the CLI has no flag for: passed on to embed() as keyword overrides
    _embed = gcsemb.embedding.job.embed
    gcsemb.embedding.job.embed = lambda *a, **k: _embed(*a, **{**k, **overrides})
from gcsemb.cli import main
started = time.perf_counter()
rc = main(sys.argv[2:])
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
got = {
    "rc": rc,
    "seconds": time.perf_counter() - started,
    "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "vmhwm_kib": hwm,
    "package": gcsemb.__file__,
}
try:  # after the measurement: which files failed, and why
    errors = gcsemb.read_errors(sys.argv[4])
    got["errors"] = [
        [uri.rsplit("/", 1)[-1], stage, error]
        for uri, stage, error in zip(errors["uri"], errors["stage"], errors["error"])
    ]
except Exception as e:
    got["errors"] = [["?", "?", f"read_errors: {type(e).__name__}: {e}"]]
try:  # the settings the run recorded in its shards: the overrides did reach it
    import glob, pyarrow.parquet as pq
    shard = sorted(glob.glob(sys.argv[4] + "/*.parquet"))[0]
    got["config"] = json.loads(pq.read_schema(shard).metadata[b"gcsemb.config"])
except Exception:
    got["config"] = None
print("GCSEMB-BENCH " + json.dumps(got), file=sys.stderr)
sys.exit(rc)
"""


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link to ``src`` at ``dst`` (a copy across filesystems): no second copy on disk."""
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copyfile(src, dst)


def ensure_e2e(cache: Path, paths: dict[str, Path]) -> Path:
    """The folder of issue 14's run: 40 photos, the 16-bit PNG, the float TIFF, 300 MB .jpg."""
    from gcsemb.demo.samples import sample_images

    folder = cache / "e2e"
    photos = folder / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for name, data in sample_images(40):
        path = photos / name.removeprefix("photos/").replace("/", "-")
        if not path.exists():
            path.write_bytes(data)
    link_or_copy(paths["gray16-9000.png"], folder / "gray16-9000.png")
    link_or_copy(paths["float-8000.tif"], folder / "float-8000.tif")
    huge = folder / "video-renamed.jpg"
    if not huge.exists() or huge.stat().st_size != HUGE_BYTES:
        print(f"generating {huge} ...", file=sys.stderr, flush=True)
        tmp = huge.with_suffix(".part")
        rng = np.random.default_rng(0)
        with open(tmp, "wb") as f:
            for _ in range(HUGE_BYTES // 10_000_000):
                f.write(rng.bytes(10_000_000))
        tmp.rename(huge)
    return folder


FLOOR_CHILD = """
import json, resource
import gcsemb.cli, gcsemb.embedding.job
from gcsemb.demo.job import demo_checkpoint
from gcsemb.model.embedder import TINY_MODEL, load_embedder
ckpt = str(demo_checkpoint(TINY_MODEL))
load_embedder(TINY_MODEL, ckpt)
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"model": TINY_MODEL, "ckpt": ckpt, "vmhwm_kib": hwm,
                  "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def floor() -> dict:
    """A fresh process's memory once gcsemb's CLI, torch and the tiny model are loaded (no
    image yet); also the tiny model's config path and checkpoint, so that this process never
    imports torch (a child's ``ru_maxrss`` starts from its parent's resident set)."""
    out = subprocess.run(
        [sys.executable, "-c", FLOOR_CHILD], capture_output=True, text=True, cwd=REPO
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_cli(
    src: Path,
    overrides: dict,
    flags: list[str],
    model: tuple[str, str],
    tree: Path | None = None,
) -> dict:
    """``gcsemb embed SRC DST`` (tiny model) in a fresh process: its peak memory and outcome."""
    with tempfile.TemporaryDirectory(prefix="gcsemb-bench-e2e-") as dst:
        argv = ["embed", str(src), dst, "--model", model[0], "--pretrained", model[1]]
        argv += ["--no-progress", *flags]
        if tree is None:  # an older gcsemb's CLI may have no --format json: its text is parsed
            argv += ["--format", "json"]
        env, cwd = dict(os.environ), str(REPO)
        if tree is not None:  # python -c puts the working directory first on sys.path
            env["PYTHONPATH"], cwd = str(tree), str(tree)
        out = subprocess.run(
            [sys.executable, "-c", CLI_CHILD, json.dumps(overrides), *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
        )
    marks = [line for line in out.stderr.splitlines() if line.startswith("GCSEMB-BENCH ")]
    if not marks:
        raise RuntimeError(f"gcsemb embed died (exit {out.returncode}):\n{out.stderr[-3000:]}")
    got = json.loads(marks[-1].removeprefix("GCSEMB-BENCH "))
    try:  # the summary: --format json's object, or the text line of an older gcsemb
        got["summary"] = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        text = out.stdout.strip()
        got["summary"] = {
            key: int(m[1])
            for key in ("embedded", "failed")
            if (m := re.search(rf"(\d+) {key}", text))
        }
    if got["rc"]:
        lines = [line for line in out.stderr.splitlines() if line.strip() and line not in marks]
        got["summary"]["text"] = f"exit {got['rc']}: " + (lines[-1][-200:] if lines else "")
    return got


def bench_e2e(args: argparse.Namespace, paths: dict[str, Path]) -> None:
    """(e2e) Peak RSS of `gcsemb embed` on issue 14's folder, by settings."""
    from gcsemb.embedding.config import EmbedConfig

    folder = ensure_e2e(args.cache, paths)
    base = floor()
    model = (base["model"], base["ckpt"])
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files) / MB
    defaults = EmbedConfig()
    mib = 2**20
    cases: list[tuple[str, dict, list[str], Path | None]] = [  # label, overrides, flags, tree
        ("the 40 photos alone (photos/), defaults", {}, [], None),
        ("defaults", {}, [], None),
        (
            f"max_bytes_in_flight {args.small_mib} MiB",
            {"max_bytes_in_flight": args.small_mib * mib},
            [],
            None,
        ),
        (
            f"max_bytes_in_flight and decode_memory {args.small_mib} MiB",
            {"max_bytes_in_flight": args.small_mib * mib, "decode_memory": args.small_mib * mib},
            [],
            None,
        ),
        (
            "--max-object-mb 512 (the 300 MB object is downloaded)",
            {},
            ["--max-object-mb", "512"],
            None,
        ),  # fmt: skip
    ]
    if args.baseline:
        tree = baseline_tree(args.baseline)
        cases.append((f"defaults, gcsemb of {args.baseline}", {}, [], tree))
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\n(e2e) `gcsemb embed` of {folder} ({len(files)} files, {total:.0f} MB), tiny model, "
        f"a fresh process each; defaults: max_object_bytes {defaults.max_object_bytes // mib} "
        f"MiB, max_bytes_in_flight {defaults.max_bytes_in_flight // mib} MiB, decode_memory "
        f"{defaults.decode_memory // mib} MiB, decode_workers {defaults.decode_workers}\n"
    )
    head = (
        f"{'case':<58}{'ru_maxrss MB':>13}{'VmHWM MB':>10}{'s':>6}{'embedded':>9}{'failed':>7}"
        "  failures"
    )
    print(head)
    print(
        f"{'floor: imports + tiny model loaded, no image':<58}"
        f"{base['ru_maxrss_kib'] / 1024:>13.0f}{base['vmhwm_kib'] / 1024:>10.0f}"
    )
    for label, overrides, flags, tree in cases:
        src = folder / "photos" if label.startswith("the 40 photos") else folder
        got = run_cli(src, overrides, flags, model, tree)
        recorded = got.get("config") or {}
        for name, value in overrides.items():
            if recorded.get(name) != value:
                raise RuntimeError(f"{label}: the run recorded {name}={recorded.get(name)}")
        summary = got["summary"]
        reasons = "; ".join(
            f"{name}: {stage}: {error[:70]}" for name, stage, error in got["errors"]
        )
        print(
            f"{label:<58}{got['ru_maxrss_kib'] / 1024:>13.0f}{got['vmhwm_kib'] / 1024:>10.0f}"
            f"{got['seconds']:>6.1f}{summary.get('embedded', '?')!s:>9}"
            f"{summary.get('failed', '?')!s:>7}  {reasons or summary.get('text', '')}",
            flush=True,
        )
    print(
        f"\nissue 14 measured a {ISSUE_PEAK_MB} MB peak for this run before the work. The floor "
        "is what importing torch (a CUDA build) and open_clip costs before any image. "
        "ru_maxrss: the child's own, which Linux starts from the parent's resident set at fork "
        f"(this process: {parent:.0f} MiB); VmHWM: the high-water mark of the child's own "
        "address space after exec. MB here are MiB."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir(), "gcsemb-bench-memory")
    )
    ap.add_argument(
        "--baseline", help="git revision to compare with (its decode.py; its package for e2e)"
    )
    ap.add_argument("--only", choices=("decode", "e2e"), help="one section (default: both)")
    ap.add_argument(
        "--small-mib", type=int, default=64, help="the smaller budgets of (e2e), MiB (64)"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    paths = ensure_images(args.cache)
    print(
        f"Pillow {PIL.__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
    )
    if args.only in (None, "decode"):
        bench_decode(args, paths)
    if args.only in (None, "e2e"):
        bench_e2e(args, paths)


if __name__ == "__main__":
    main()
