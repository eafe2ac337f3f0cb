"""Time gcsemb.storage.list_images on the embedded GCS emulator, and the cost of importing gcsemb.

Run: ``.venv/bin/python benchmarks/bench_listing.py [--sizes 10000 50000] [--backend filesystem]``
(about 7 minutes on 2 idle cores, 15 on busy ones; ``--sizes 10000 20000`` takes about 4).

Per bucket size it reports the listing's wall time, objects/s, HTTP requests (counted by wrapping
``gcsfs.core.GCSFileSystem._request``), the client's own CPU time (gcsemb + gcsfs), and the peak
Python memory of a second, tracemalloc-traced pass (flat across sizes = the listing streams). The
smallest size also times the CLI end to end (``gcsemb list gs://bench --format jsonl``).

Wall times are mostly fake-gcs-server's, and both its backends scale badly
(https://github.com/fsouza/fake-gcs-server/issues/2357). ``memory`` (the Emulator's default)
scans the whole bucket on every upload, so uploads are quadratic: 20k objects took 4-9 minutes,
100k would take hours. ``filesystem`` (the default here) uploads in linear time but walks and
stats the whole bucket for every 1000-object listing page, so listing is quadratic: 50k objects
list in a minute or more, 100k in about 10 minutes per pass.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

UPLOAD_CHUNK = 2000
IMPORT_RUNS = 5
CLI_RUNS = 3
HEAVY = ("gcsfs", "fsspec", "aiohttp", "google.auth", "torch", "numpy", "pandas", "pyarrow")


def object_path(i: int) -> str:
    return f"bench/{i // 1000:03d}/img {i:06d}.jpg"


# --- imports ---------------------------------------------------------------------------------


def run_python(code: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", code], env=env, capture_output=True, text=True
    )


def import_medians(modules: tuple[str, ...], env: dict[str, str]) -> dict[str, float]:
    """Median wall time of ``python -c 'import M'`` per module (``"pass"`` for none), runs
    interleaved so that drifting machine load hits all of them alike."""
    codes = ["pass", *(f"import {m}" for m in modules)]
    times: dict[str, list[float]] = {code: [] for code in codes}
    for _ in range(IMPORT_RUNS):
        for code in codes:
            start = time.perf_counter()
            out = run_python(code, env)
            times[code].append(time.perf_counter() - start)
            if out.returncode:
                print(f"  `python -c {code!r}` failed: {out.stderr.strip()[-300:]}")
    return {code.removeprefix("import "): statistics.median(t) for code, t in times.items()}


def importtime_rows(code: str, env: dict[str, str]) -> list[tuple[int, int, str]]:
    """``(cumulative_us, self_us, module)`` per line of ``python -X importtime -c code``."""
    err = run_python(code, env, "-X", "importtime").stderr
    rows = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (.*)$", line)
        if m:
            rows.append((int(m[2]), int(m[1]), m[3].rstrip()))
    return rows


def in_process_ms(module: str, env: dict[str, str]) -> float:
    """Median of ``perf_counter`` around ``import module`` in fresh processes (less noisy)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return statistics.median(
        float(run_python(code, env).stdout or "nan") * 1000 for _ in range(IMPORT_RUNS)
    )


def bench_imports() -> None:
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    modules = ("gcsemb", "gcsemb.storage")
    medians = import_medians(modules, env)
    bare = medians["pass"]
    print(f"Import time: median of {IMPORT_RUNS} fresh processes")
    print(f"  bare interpreter start (`python -c pass`): {bare * 1000:.1f} ms")
    print(f"  {'':<22}{'wall - bare':>12}{'in-process':>12}  heavy modules loaded")
    for module in modules:
        probe = f"import sys, {module}; print(*[m for m in {HEAVY!r} if m in sys.modules])"
        heavy = run_python(probe, env).stdout.split() or ["none"]
        print(
            f"  {'import ' + module:<22}{(medians[module] - bare) * 1000:9.1f} ms"
            f"{in_process_ms(module, env):9.1f} ms  {', '.join(heavy)}"
        )
    at_start = {name.strip() for _, _, name in importtime_rows("pass", env)}
    for module in modules:
        rows = [r for r in importtime_rows(f"import {module}", env) if r[2].strip() not in at_start]
        print(
            f"  python -X importtime -c 'import {module}': top 5 by cumulative time "
            "(modules the bare interpreter imports left out)"
        )
        print(f"    {'cumulative':>10} {'self':>8}  module")
        for cumulative, self_us, name in sorted(rows, reverse=True)[:5]:
            print(f"    {cumulative / 1000:8.1f}ms {self_us / 1000:6.1f}ms  {name}")
    print()


# --- listing ---------------------------------------------------------------------------------


class RequestCounter:
    """Counts ``GCSFileSystem._request`` calls (every HTTP request gcsfs sends)."""

    def __init__(self) -> None:
        self.count = 0
        self._original: Callable[..., Any] | None = None

    def install(self) -> None:
        from gcsfs.core import GCSFileSystem

        original = self._original = GCSFileSystem._request
        counter = self

        async def counting(fs: Any, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return await original(fs, *args, **kwargs)

        GCSFileSystem._request = counting

    def uninstall(self) -> None:
        from gcsfs.core import GCSFileSystem

        if self._original is not None:
            GCSFileSystem._request = self._original


def upload(fs: Any, start: int, stop: int) -> float:
    began = time.perf_counter()
    for lo in range(start, stop, UPLOAD_CHUNK):
        hi = min(lo + UPLOAD_CHUNK, stop)
        fs.pipe({object_path(i): b"\xff\xd8\xff\xd9" for i in range(lo, hi)})
    return time.perf_counter() - began


def list_count(url: str) -> int:
    from gcsemb.storage import list_images

    n = 0
    for _obj in list_images(url):
        n += 1
    return n


def time_listing(url: str, counter: RequestCounter) -> dict[str, float]:
    counter.count = 0
    wall, cpu = time.perf_counter(), time.process_time()
    n = list_count(url)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"listed": n, "wall": wall, "cpu": cpu, "requests": counter.count}


def traced_peak(url: str) -> tuple[int, float]:
    """Peak Python allocation (bytes) above the starting point during one listing pass."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    began = time.perf_counter()
    list_count(url)
    elapsed = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak, elapsed


def time_cli(url: str) -> float:
    exe = Path(sys.executable).with_name("gcsemb")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gcsemb.cli"]
    times = []
    for _ in range(CLI_RUNS):
        start = time.perf_counter()
        out = subprocess.run(
            [*cmd, "list", url, "--format", "jsonl"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),  # carries STORAGE_EMULATOR_HOST (emulator_env)
        )
        times.append(time.perf_counter() - start)
        if out.returncode:
            print(f"  gcsemb list failed ({out.returncode}): {out.stderr.strip()[-300:]}")
    return statistics.median(times)


@contextlib.contextmanager
def emulator_env(url: str) -> Iterator[None]:
    """``STORAGE_EMULATOR_HOST`` pointing at ``url`` in this process and the CLI's (the Emulator
    itself changes nothing process-wide), restored afterwards."""
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved


def bench_listing(sizes: list[int], backend: str) -> None:
    from gcsemb.demo.emulator import Emulator

    counter = RequestCounter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gcsemb-bench-") as tmp:
        root = tmp if backend == "filesystem" else None
        with Emulator(buckets=["bench"], root=root) as gcs, emulator_env(gcs.url):
            fs = gcs.filesystem()
            counter.install()  # after the Emulator has imported gcsfs with its settings
            print(f"Listing gs://bench on fake-gcs-server ({backend} backend) at {gcs.url}")
            have = 0
            for size in sorted(sizes):
                took = upload(fs, have, size)
                print(
                    f"  uploaded objects {have:>6}..{size - 1:<6} in {took:6.1f} s "
                    f"({(size - have) / took:5.0f} objects/s, fs.pipe in chunks of {UPLOAD_CHUNK})",
                    flush=True,
                )
                have = size
                row = time_listing("gs://bench", counter)
                print(f"  listed {row['listed']} objects in {row['wall']:.1f} s", flush=True)
                row["size"], row["upload"] = size, took
                row["peak"], row["traced_wall"] = traced_peak("gs://bench")
                row["cli"] = time_cli("gs://bench") if size == min(sizes) else None
                rows.append(row)
    counter.uninstall()
    print()
    print(
        f"{'objects':>8} {'listed':>8} {'list s':>7} {'objects/s':>10} {'requests':>9} "
        f"{'client CPU s':>13} {'peak KiB':>9} {'CLI jsonl s':>12}"
    )
    for r in rows:
        cli = f"{r['cli']:12.2f}" if r["cli"] is not None else f"{'-':>12}"
        print(
            f"{r['size']:>8} {r['listed']:>8} {r['wall']:7.2f} {r['listed'] / r['wall']:10.0f} "
            f"{r['requests']:>9} {r['cpu']:13.2f} {r['peak'] / 1024:9.0f} {cli}"
        )
    print(
        "\npeak KiB: tracemalloc peak of a second listing pass above its starting point "
        "(that pass took "
        + ", ".join(f"{r['traced_wall']:.1f} s" for r in rows)
        + ").\nCLI jsonl s: `gcsemb list gs://bench --format jsonl > /dev/null`, median of "
        f"{CLI_RUNS}, process start included."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10_000, 50_000],
        help="bucket sizes to list (default: 10000 50000; 100000 takes over 25 minutes)",
    )
    parser.add_argument(
        "--backend",
        choices=("filesystem", "memory"),
        default="filesystem",
        help="fake-gcs-server storage backend (memory makes uploads quadratic)",
    )
    parser.add_argument("--skip-imports", action="store_true")
    args = parser.parse_args()
    print(
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"gcsfs {importlib.metadata.version('gcsfs')}, load average "
        + " ".join(f"{x:.1f}" for x in os.getloadavg())
        + "\n"
    )
    if not args.skip_imports:
        bench_imports()
    bench_listing(args.sizes, args.backend)


if __name__ == "__main__":
    main()
