"""The Ray engine against the local engine on this machine: same images, same model, images/s.

Run: ``.venv/bin/python benchmarks/bench_ray.py [--images 300] [--model tiny|ViT-B-32]``
(``--quick``: 40 images, one run each, a smoke run). Offline: fake-gcs-server (reached through
``Emulator.store`` handles, which travel to Ray's workers), scikit-image's photographs, seeded
random weights. Each engine runs ``--repeat`` times into empty destinations (Ray's first run also
starts its worker processes; every Ray run starts a new model actor), then Ray runs once more
where everything is done. Each run's stage report follows its line. Wall-clock numbers move with
other work on the machine: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import time

from bench_pipeline import vary  # benchmarks/ is on sys.path when run as a script

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def stages(summary: object) -> None:
    """One line per stage of the run's report (busy s, items, capacity), then bound and hint."""
    report = summary.to_dict()
    if not report["stages"]:
        print("    (no stage report from this engine)")
        return
    for name, st in report["stages"].items():
        cap = st["items_per_second"]
        print(
            f"    {name:<7}{st['seconds']:8.2f} s busy {st['items']:6} items "
            f"x{st['workers']:<3}{(f'{cap:.1f}' if cap is not None else '-'):>10} images/s"
        )
    print(f"    bound: {report['bound']}; {report['hint']}")


def main() -> None:
    """Upload, then time each engine twice."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="40 images, one run per engine")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--fetch-cpus", type=float, help="CPUs per Ray fetch task")
    parser.add_argument("--repeat", type=int, default=3, help="runs per engine")
    parser.add_argument(
        "--copies", type=int, default=1, help="byte-distinct copies, one folder each"
    )
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeat = min(args.images, 40), 1

    import ray

    import gcsemb.embedding.ray_engine
    from gcsemb.demo.emulator import Emulator
    from gcsemb.demo.job import demo_checkpoint, upload_samples
    from gcsemb.embedding.config import RayEngine
    from gcsemb.embedding.job import embed
    from gcsemb.model.embedder import TINY_MODEL

    if args.fetch_cpus:
        gcsemb.embedding.ray_engine.FETCH_CPUS = args.fetch_cpus
    model = TINY_MODEL if args.model == "tiny" else args.model
    ckpt = str(demo_checkpoint(model))
    with Emulator(buckets=["bench"]) as gcs:
        fs = gcs.filesystem()
        count = upload_samples(fs, "bench", args.images)
        samples = {p: fs.cat(p) for p in fs.find("bench/photos")}
        for k in range(1, args.copies):
            fs.pipe(
                {
                    p.replace("photos/", f"photos/set{k:02d}/", 1): vary(d, str(k))
                    for p, d in samples.items()
                }
            )
            count += len(samples)
        kw = dict(model=model, pretrained=ckpt, progress=False)
        src = gcs.store("gs://bench/photos")  # DST URLs below are reached with its access
        print(f"{count} objects, model {args.model}, load {os.getloadavg()[0]:.1f}")
        for i in range(args.repeat):
            s = embed(src, f"gs://bench/local{i}", **kw)
            print(f"local run {i + 1}: {s.seconds:6.1f} s  {s.images_per_second:6.1f} images/s")
            stages(s)
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        print(f"ray.init:    {time.perf_counter() - started:6.1f} s")
        for i in range(args.repeat):
            s = embed(src, f"gs://bench/ray{i}", engine=RayEngine(), **kw)
            print(f"ray run {i + 1}:   {s.seconds:6.1f} s  {s.images_per_second:6.1f} images/s")
            stages(s)
        s = embed(src, "gs://bench/ray0", engine=RayEngine(), **kw)
        print(f"ray re-run:  {s.seconds:6.1f} s  ({s.skipped} skipped)")
        ray.shutdown()
        print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
