"""``gcsemb index``: build or update the neighbour index kept beside a dataset."""

from __future__ import annotations

import argparse
import sys
import time

from gcsemb.cli.common import Command, add_credentials, store_of

DESCRIPTION = """\
Build the neighbour index of DST in DST/_index/<model-tag>/ (plain .npy files:
an IVF index of the embeddings), or bring it up to date: only the shards written
since the last call are indexed; a shard changed or removed since then makes it
rebuild. search, near-duplicates and UMAP's neighbours then use it beyond
100,000 rows. Index files are read with numpy's plain loader only (never
unpickled); an unreadable index is rebuilt.

prints: one line on stdout: rows, shards covered, segments, seconds."""


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of ``gcsemb index``."""
    p.add_argument("dst", help="the embeddings folder written by gcsemb embed")
    p.add_argument("--model-tag", help="the model column value to index, when DST holds several")
    p.add_argument("--rebuild", action="store_true", help="build anew (e.g. after tenfold growth)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_credentials(p)


def run(args: argparse.Namespace) -> int:
    """Build or update the index; say what it covers."""
    from gcsemb.explore.indexing import build_index

    start = time.perf_counter()
    index = build_index(
        store_of(args, args.dst),
        model_tag=args.model_tag,
        rebuild=args.rebuild,
        progress=not args.no_progress,
    )
    print(
        f"{index.url}: {len(index.keys):,} rows of {index.model_tag}, "
        f"{len(index.manifest['shards'])} shards, {len(index.segments)} segments, "
        f"{time.perf_counter() - start:.1f} s",
        file=sys.stdout,
    )
    return 0


COMMAND = Command(
    name="index",
    summary="build or update the neighbour index beside a dataset",
    description=DESCRIPTION,
    examples=(
        ("gcsemb index gs://my-bucket/embeddings", "index every shard, or only the new ones"),
        ("gcsemb index ./embeddings --rebuild", "build anew"),
    ),
    exit_status="0 when the index is up to date; 1 on an error (one line on stderr).",
    configure=configure,
    run=run,
)
