"""``gcsemb list``: the images under a URL, as a table, CSV or JSON lines."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from gcsemb.cli.common import Command, add_credentials, human_size, printable, store_of

DESCRIPTION = """\
List the image objects under a gs:// prefix, a glob or a local folder, with the
metadata later stages use (size, md5, generation). Globs: * within a folder, **
across folders; quote them in the shell.

prints: one line per image on stdout: a table (SIZE, UPDATED, URI), CSV with a
  header, or JSON lines (uri, size, md5, crc32c, generation, content_type,
  updated); for a table, a count and the total size on stderr."""


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of ``gcsemb list``."""
    from gcsemb.storage import IMAGE_EXTENSIONS

    p.add_argument("url", help="gs://bucket/prefix, gs://bucket/**/*.jpg, or a local folder")
    add_credentials(p)
    p.add_argument(
        "--format",
        choices=("table", "csv", "jsonl"),
        default="table",
        help="table (default), csv, or jsonl: one JSON object per line",
    )
    p.add_argument("--limit", type=int, help="stop after N images")
    p.add_argument(
        "--extensions",
        nargs="+",
        default=sorted(IMAGE_EXTENSIONS),
        metavar="EXT",
        help="file endings counted as images (default: common formats)",
    )
    p.add_argument("--all-files", action="store_true", help="list every object, not only images")


def row_writer(out: TextIO, fmt: str) -> Callable[[Any], Any]:
    """A function writing one ObjectInfo to ``out`` in ``fmt``; writes the header first."""
    if fmt == "jsonl":
        return lambda obj: out.write(json.dumps(obj.to_dict(), ensure_ascii=False) + "\n")
    if fmt == "csv":
        from gcsemb.storage import OBJECT_FIELDS

        writer = csv.DictWriter(out, fieldnames=OBJECT_FIELDS, lineterminator="\n")
        writer.writeheader()
        return lambda obj: writer.writerow(obj.to_dict())
    out.write(f"{'SIZE':>10}  {'UPDATED':<16}  URI\n")

    def table_row(obj: Any) -> None:
        updated = f"{obj.updated:%Y-%m-%d %H:%M}" if obj.updated else ""
        out.write(f"{human_size(obj.size):>10}  {updated:<16}  {printable(obj.uri)}\n")

    return table_row


def run(args: argparse.Namespace) -> int:
    """Print the images under a URL as a table, CSV or JSON lines."""
    from gcsemb.storage import list_images

    objects = list_images(
        store_of(args, args.url),
        limit=args.limit,
        extensions=None if args.all_files else args.extensions,
    )
    write = row_writer(sys.stdout, args.format)
    count, total, started = 0, 0, time.perf_counter()
    for obj in objects:
        write(obj)
        count += 1
        total += obj.size
    elapsed = time.perf_counter() - started
    if count == 0:
        print(
            f"No images under {args.url} (extensions: {', '.join(sorted(args.extensions))}; "
            "use --all-files to list everything).",
            file=sys.stderr,
        )
    elif args.format == "table":
        print(f"{count} images, {human_size(total)}, listed in {elapsed:.1f} s", file=sys.stderr)
    return 0


COMMAND = Command(
    name="list",
    summary="list the images under a gs:// prefix, glob or local folder",
    description=DESCRIPTION,
    examples=(
        ("gcsemb list gs://my-bucket/photos", "the images under a prefix, as a table"),
        (
            "gcsemb list 'gs://my-bucket/**/*.jpg' --format jsonl --limit 10",
            "the first ten JPEGs in any folder, as JSON lines",
        ),
        ("gcsemb list gs://my-bucket --token key.json --all-files", "every object, with a key"),
    ),
    exit_status="0, also when nothing matches (a line on stderr says so); 1 on an error "
    "(a missing bucket, denied access: one line on stderr).",
    configure=configure,
    run=run,
)
