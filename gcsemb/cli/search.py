"""``gcsemb search``: the images of a dataset that best match a text or an image."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from gcsemb.cli.common import (
    Command,
    add_credentials,
    add_field,
    printable,
    save_figure,
    store_of,
    use_agg,
)
from gcsemb.errors import GcsembError
from gcsemb.model.dataset_embedder import ModelChoice

DESCRIPTION = """\
Embed QUERY with the text tower of the model that embedded DST (or, with
--image, an image with its image tower) and print the K closest images, best
first, by cosine similarity.

The model comes from the dataset: an open_clip weights tag is loaded as such.
A dataset embedded from a checkpoint file records the file and its sha256; it
is searched with that checkpoint when the file (or one in gcsemb's cache) still
has that hash, with no --pretrained needed. Otherwise pass --pretrained with
the checkpoint given to gcsemb embed: a gs:// or https:// location written in
a dataset is never fetched on the dataset's word.

prints: a table (RANK, SCORE, URI) or JSON lines ({"uri", "score"}) on stdout;
  with --out, a grid of the images as a PNG and one line about it on stderr."""


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of ``gcsemb search``."""
    p.add_argument("dst", help="the embeddings folder written by gcsemb embed")
    p.add_argument("query", nargs="?", help="what to look for, e.g. 'a dog on a beach'")
    p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--image", help="search by image: a dataset uri, another gs:// URL or a file")
    p.add_argument(
        "--format",
        choices=("table", "jsonl"),
        default="table",
        help="table (default) or jsonl: one {uri, score} object per line",
    )
    p.add_argument("--out", help="also draw the results as an image grid PNG (path or gs://)")
    for flag in ("--model", "--pretrained", "--device"):
        add_field(p, flag, ModelChoice)
    p.add_argument(
        "--method",
        choices=("auto", "exact", "index"),
        default="auto",
        help="exact (one pass over all rows), index (DST/_index/, see gcsemb index; built in "
        "memory when missing) or auto (default): exact up to 250,000 rows",
    )
    p.add_argument("--dpi", type=int, default=150, help="grid PNG resolution (default 150)")
    p.add_argument("--model-tag", help="the model column value to search, when DST holds several")
    add_credentials(p)


def print_results(results: Any, fmt: str, out: TextIO) -> None:
    """Write the results, best first, as a table or as JSON lines."""
    if fmt == "jsonl":
        for row in results.itertuples():
            record = {"uri": row.uri, "score": round(float(row.score), 6)}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    out.write(f"{'RANK':>4}  {'SCORE':>6}  URI\n")
    for rank, row in enumerate(results.itertuples(), 1):
        out.write(f"{rank:>4}  {row.score:6.3f}  {printable(row.uri)}\n")


def draw_results(results: Any, args: argparse.Namespace, dataset: Any) -> None:
    """Save the results as an image grid PNG at ``args.out``; say so on stderr."""
    use_agg()
    from gcsemb.view.viz import image_grid

    what = f"images like {args.image}" if args.image else f"\u201c{args.query}\u201d"
    fig = image_grid(results, title=f"Top {len(results)}: {what}")
    width, height = save_figure(fig, args.out, args.dpi, dataset)
    print(f"{args.out}: {width}x{height} px, {len(results)} images", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Print the images of a dataset that best match a text (or an image), best first."""
    from gcsemb.explore.inputs import embeddings_of
    from gcsemb.explore.search import search_image, search_text

    if not args.query and not args.image:
        raise GcsembError('Give a text to search for ("a dog on a beach") or --image URI.')
    df, matrix, dataset = embeddings_of(
        store_of(args, args.dst), model_tag=args.model_tag, lean=True
    )
    chosen = ModelChoice(args.model, args.pretrained, args.device)
    options = dict(k=args.k, embedder=chosen, token=dataset, method=args.method)
    if args.image:
        results = search_image((df, matrix), args.image, **options)
    else:
        results = search_text((df, matrix), args.query, **options)
    print_results(results, args.format, sys.stdout)
    if args.out:
        draw_results(results, args, dataset)
    return 0


COMMAND = Command(
    name="search",
    summary="find the images that best match a text (or an image)",
    description=DESCRIPTION,
    examples=(
        (
            'gcsemb search gs://my-bucket/embeddings "a dog on a beach" -k 8',
            "the 8 images closest to a text",
        ),
        (
            'gcsemb search ./embeddings "a red car" --format jsonl --out cars.png',
            "JSON lines for a script, and a grid of the images",
        ),
        (
            "gcsemb search ./embeddings --image gs://my-bucket/photos/cat.jpg -k 5",
            "the images most like this one (itself first, when it is in DST)",
        ),
    ),
    exit_status="0 when the results were printed; 1 on an error (no query, no dataset at "
    "DST, weights that cannot be recovered: one line on stderr naming the fix).",
    configure=configure,
    run=run,
)
