"""``gcsemb demo``: the whole job offline, on a local GCS emulator and sample photographs."""

from __future__ import annotations

import argparse

from gcsemb.cli.common import Command

DESCRIPTION = """\
Start a local GCS emulator (fake-gcs-server), upload sample photographs to
gs://gcsemb-demo/photos, embed them with random weights (nothing to download),
run again to show that nothing is embedded twice, and print the dataset and
the recorded failures. Needs no account and no internet.

prints: what it does, the run's summary, the failures, and where the copy is.
writes: a copy of the parquet dataset to ./demo-output/embeddings."""


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of ``gcsemb demo``."""
    p.add_argument("--images", type=int, default=300, help="how many sample images (default 300)")
    p.add_argument("--model", help="open_clip architecture (default: a tiny CLIP, fast on CPU)")


def run(args: argparse.Namespace) -> int:
    """Run the main job on the embedded default: local GCS, sample photographs."""
    from gcsemb.demo.job import run_demo

    run_demo(n_images=args.images, model=args.model)
    return 0


COMMAND = Command(
    name="demo",
    summary="the whole job offline: local GCS emulator, sample photos",
    description=DESCRIPTION,
    examples=(
        ("gcsemb demo", "everything offline, on a local emulator"),
        ("gcsemb demo --images 20", "a quicker run on 20 photographs"),
        ("gcsemb demo --model ViT-B-32", "a real architecture (still random weights)"),
    ),
    exit_status="0 when the demo ran; 1 on an error (e.g. the emulator could not start).",
    configure=configure,
    run=run,
)
