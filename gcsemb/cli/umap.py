"""``gcsemb umap``: a dataset's UMAP map, with image thumbnails, as a PNG."""

from __future__ import annotations

import argparse
import sys

from gcsemb.cli.common import Command, add_credentials, save_figure, store_of, use_agg
from gcsemb.explore.umap_backends import BACKENDS, MIN_DIST, N_NEIGHBORS

DESCRIPTION = """\
Project the embeddings under DST to 2-D with UMAP (cosine, on all cores) and
draw them, coloured by a column, with thumbnails of images from the densest
areas. UMAP runs on cuML when it is installed and a GPU is present, else on
umap-learn (--backend chooses). The projection is saved as
DST/_umap/<model>.parquet (when DST may be written), with each image's
neighbours for Apple's Embedding Atlas
(embedding-atlas DST/_umap/<model>.parquet --x x --y y --neighbors neighbors),
and reused while the images and the parameters stay the same.

writes: the PNG at --out (a local path or a gs:// URL).
prints: on stdout, when it computes, one line: the points and the backend;
  on stderr, one line: the PNG's size, images and thumbnails drawn, and
  whether the projection was reused or computed (with which backend, and how
  long it took)."""


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of ``gcsemb umap``."""
    p.add_argument("dst", help="the embeddings folder written by gcsemb embed")
    p.add_argument("--out", required=True, help="PNG to write (local path or gs:// URL)")
    p.add_argument(
        "--thumbnails", type=int, default=50, help="images drawn over their points (default 50)"
    )
    p.add_argument(
        "--color-by",
        default="folder",
        help="column to colour by: folder (default), width, height, size, ... or none",
    )
    p.add_argument(
        "--n-neighbors",
        type=int,
        default=N_NEIGHBORS,
        help=f"UMAP neighbourhood (default {N_NEIGHBORS})",
    )
    p.add_argument(
        "--min-dist", type=float, default=MIN_DIST, help=f"UMAP min_dist (default {MIN_DIST})"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=-1,
        help="layout seed for a repeatable map, computed on one core (default -1: all cores)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto (default): cuML on a GPU when installed, else umap-learn",
    )
    p.add_argument("--recompute", action="store_true", help="ignore a saved projection")
    p.add_argument("--title", help="plot title (default: UMAP of N images)")
    p.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    p.add_argument("--model-tag", help="the model column value to plot, when DST holds several")
    add_credentials(p)


def run(args: argparse.Namespace) -> int:
    """Project a dataset with UMAP and save the scatter plot, with thumbnails, as a PNG."""
    use_agg()
    from gcsemb.explore.projection import umap_project
    from gcsemb.view.viz import THUMBNAIL_GID, plot_projection

    dataset = store_of(args, args.dst)  # credentials resolved once
    coords = umap_project(
        dataset,
        model_tag=args.model_tag,
        n_neighbors=args.n_neighbors,
        min_dist=args.min_dist,
        seed=None if args.seed < 0 else args.seed,
        backend=args.backend,
        reuse=not args.recompute,
    )
    info = coords.attrs["umap"]
    color_by = None if args.color_by.lower() == "none" else args.color_by
    ax = plot_projection(coords, color_by=color_by, thumbnails=args.thumbnails, title=args.title)
    drawn = sum(1 for a in ax.artists if a.get_gid() == THUMBNAIL_GID)
    width, height = save_figure(ax.figure, args.out, args.dpi, dataset)
    how = "reused from" if info["reused"] else "saved to"
    print(
        f"{args.out}: {width}x{height} px, {len(coords):,} images, {drawn} thumbnails; "
        f"{info['backend']} projection {how} {info['path'] or '(not saved)'} "
        f"in {info['seconds']:.1f} s",
        file=sys.stderr,
    )
    return 0


COMMAND = Command(
    name="umap",
    summary="plot a dataset's UMAP map (with image thumbnails) as a PNG",
    description=DESCRIPTION,
    examples=(
        (
            "gcsemb umap gs://my-bucket/embeddings --out umap.png --thumbnails 80",
            "a map with 80 thumbnails, coloured by folder",
        ),
        (
            "gcsemb umap ./embeddings --out gs://my-bucket/umap.png --color-by width",
            "coloured by image width, the PNG written to the bucket",
        ),
        (
            "gcsemb umap ./embeddings --out umap.png --seed 42 --recompute",
            "recompute the projection with a fixed seed (repeatable, one core)",
        ),
        (
            "gcsemb umap ./embeddings --out umap.png --backend umap-learn",
            "use umap-learn even where cuML and a GPU are present",
        ),
    ),
    exit_status="0 when the PNG was written; 1 on an error (no dataset at DST, no access, "
    "umap-learn not installed: one line on stderr).",
    configure=configure,
    run=run,
)
