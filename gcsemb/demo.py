"""The embedded default: the whole job on a local GCS emulator with sample photographs.

Example:
    >>> from gcsemb.demo import run_demo
    >>> run_demo(n_images=50)  # doctest: +SKIP
"""

from __future__ import annotations

import time

from gcsemb.emulator import Emulator
from gcsemb.samples import broken_images, sample_images

DEMO_BUCKET = "gcsemb-demo"


def upload_samples(fs: object, bucket: str = DEMO_BUCKET, n_images: int = 300) -> int:
    """Upload ``n_images`` sample photographs plus a few broken files; return how many objects."""
    objects = {f"{bucket}/{name}": data for name, data in sample_images(n_images)}
    objects.update({f"{bucket}/{name}": data for name, data in broken_images().items()})
    fs.pipe(objects)  # type: ignore[attr-defined]  # concurrent uploads
    return len(objects)


def run_demo(n_images: int = 300) -> None:
    """Start the emulator, upload sample images and list them, printing what happens."""
    from gcsemb.storage import list_images

    print("Starting a local GCS emulator (fake-gcs-server): no account or internet needed.")
    with Emulator(buckets=[DEMO_BUCKET]) as gcs:
        started = time.perf_counter()
        count = upload_samples(gcs.filesystem(), n_images=n_images)
        print(
            f"Uploaded {count} objects to gs://{DEMO_BUCKET}/photos in "
            f"{time.perf_counter() - started:.1f} s ({gcs.url})."
        )
        started = time.perf_counter()
        listed = list(list_images(f"gs://{DEMO_BUCKET}/photos"))
        total = sum(o.size for o in listed)
        print(
            f"Listed {len(listed)} images ({total / 1e6:.1f} MB) in "
            f"{time.perf_counter() - started:.2f} s. First three:"
        )
        for obj in listed[:3]:
            print(f"  {obj.uri}  {obj.size} bytes  md5={obj.md5}  generation={obj.generation}")
