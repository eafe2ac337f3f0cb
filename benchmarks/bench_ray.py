"""The Ray engine against the local engine on this machine: same images, same model, images/s.

Run: ``.venv/bin/python benchmarks/bench_ray.py [--images 300] [--model tiny|ViT-B-32]``. Offline:
fake-gcs-server, scikit-image's photographs, seeded random weights. Each engine runs ``--repeat``
times into empty destinations (Ray's first run also starts its worker processes; every Ray run
starts a new model actor), then Ray runs once more where everything is done. Wall-clock numbers
move with other work on the machine: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import time

from bench_pipeline import vary  # benchmarks/ is on sys.path when run as a script

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def main() -> None:
    """Upload, then time each engine twice."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--fetch-cpus", type=float, help="CPUs per Ray fetch task")
    parser.add_argument("--repeat", type=int, default=3, help="runs per engine")
    parser.add_argument(
        "--copies", type=int, default=1, help="byte-distinct copies, one folder each"
    )
    args = parser.parse_args()

    import ray

    import gcsemb.ray_engine
    from gcsemb.demo import demo_checkpoint, upload_samples
    from gcsemb.embedder import TINY_MODEL
    from gcsemb.emulator import Emulator
    from gcsemb.pipeline import embed

    if args.fetch_cpus:
        gcsemb.ray_engine.FETCH_CPUS = args.fetch_cpus
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
        print(f"{count} objects, model {args.model}, load {os.getloadavg()[0]:.1f}")
        for i in range(args.repeat):
            s = embed("gs://bench/photos", f"gs://bench/local{i}", **kw)
            print(f"local run {i + 1}: {s.seconds:6.1f} s  {s.images_per_second:6.1f} images/s")
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        print(f"ray.init:    {time.perf_counter() - started:6.1f} s")
        for i in range(args.repeat):
            s = embed("gs://bench/photos", f"gs://bench/ray{i}", engine="ray", **kw)
            print(f"ray run {i + 1}:   {s.seconds:6.1f} s  {s.images_per_second:6.1f} images/s")
        s = embed("gs://bench/photos", "gs://bench/ray0", engine="ray", **kw)
        print(f"ray re-run:  {s.seconds:6.1f} s  ({s.skipped} skipped)")
        ray.shutdown()
        print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
