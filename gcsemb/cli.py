"""The ``gcsemb`` command line: the same work as the notebooks, from a terminal.

Run ``gcsemb --help`` or ``gcsemb COMMAND --help``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from gcsemb.errors import GcsembError

EPILOG = """\
examples:
  gcsemb demo                                   everything offline, on a local emulator
  gcsemb list gs://my-bucket/photos             list the images under a prefix
  gcsemb list 'gs://my-bucket/**/*.jpg' --format jsonl --limit 10
  gcsemb list gs://my-bucket --token key.json   with a service-account key
  gcsemb check gs://my-bucket/embeddings        who am I, may I list/read/write there?
  gcsemb embed gs://my-bucket/photos gs://my-bucket/embeddings
  gcsemb embed ./photos ./embeddings --model ViT-L-14 --pretrained datacomp_xl_s13b_b90k
  gcsemb embed gs://b/photos gs://b/emb --engine ray --address auto --gpus-per-worker 1
  gcsemb umap gs://my-bucket/embeddings --out umap.png --thumbnails 80
  gcsemb search gs://my-bucket/embeddings "a dog on a beach" -k 8 --out dogs.png

credentials (--token): by default the application default credentials (gcloud auth
application-default login, GOOGLE_APPLICATION_CREDENTIALS, Colab, the VM's metadata server).
'anon' for public buckets, a key file path, 'metadata' or 'colab' to choose explicitly.
"""


def _add_auth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", help="credentials: key file path, 'anon', 'adc', 'metadata', 'colab'")
    p.add_argument("--project", help="Google Cloud project (billing for requester-pays buckets)")
    p.add_argument("--requester-pays", action="store_true", help="bill reads to --project")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def cmd_list(args: argparse.Namespace) -> int:
    """Print the images under a URL as a table, CSV or JSON lines."""
    from gcsemb.storage import ObjectInfo, list_images

    objects = list_images(
        args.url,
        token=args.token,
        project=args.project,
        requester_pays=args.requester_pays,
        limit=args.limit,
        extensions=None if args.all_files else args.extensions,
    )
    out = sys.stdout
    count, total, started = 0, 0, time.perf_counter()
    writer: Callable[[ObjectInfo], Any]
    if args.format == "jsonl":
        writer = lambda obj: out.write(json.dumps(obj.to_dict(), ensure_ascii=False) + "\n")  # noqa: E731
    elif args.format == "csv":
        fields = ["uri", "size", "md5", "crc32c", "generation", "content_type", "updated"]
        dict_writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        dict_writer.writeheader()
        writer = lambda obj: dict_writer.writerow(obj.to_dict())  # noqa: E731
    else:
        out.write(f"{'SIZE':>10}  {'UPDATED':<16}  URI\n")
        writer = lambda obj: out.write(  # noqa: E731
            f"{_human(obj.size):>10}  {obj.updated:%Y-%m-%d %H:%M}  {obj.uri}\n"
            if obj.updated
            else f"{_human(obj.size):>10}  {'':<16}  {obj.uri}\n"
        )
    for obj in objects:
        writer(obj)
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
        print(f"{count} images, {_human(total)}, listed in {elapsed:.1f} s", file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Say which identity is in use and whether it may list, read and write at URL."""
    from gcsemb.check import check

    report = check(
        args.url,
        token=args.token,
        write=not args.no_write,
        project=args.project,
        requester_pays=args.requester_pays,
    )
    print(report)
    return 0 if report.ok else 1


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed every image under SRC into a parquet dataset at DST."""
    from gcsemb.config import RayEngine
    from gcsemb.pipeline import embed

    pretrained = None if args.pretrained.lower() in ("none", "random") else args.pretrained
    engine = (
        RayEngine(args.address, args.workers, args.gpus_per_worker)
        if args.engine == "ray"
        else "local"
    )
    settings = {
        name: getattr(args, name)
        for name in ("batch_size", "io_workers", "fetch_batch", "decode_workers", "rows_per_shard")
        if getattr(args, name) is not None
    }
    summary = embed(
        args.src,
        args.dst,
        model=args.model,
        pretrained=pretrained,
        token=args.token,
        project=args.project,
        requester_pays=args.requester_pays,
        limit=args.limit,
        progress=not args.no_progress,
        engine=engine,
        device=args.device,
        precision=args.precision,
        decode=args.decode,
        retry_failed=args.retry_failed,
        wait_for_lease=args.wait,
        max_object_bytes=int(args.max_object_mb * 2**20),
        **settings,
    )
    if args.format == "json":
        print(json.dumps(summary.to_dict(), ensure_ascii=False))
    else:
        print(summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the main job on the embedded default: local GCS, sample photographs."""
    from gcsemb.demo import run_demo

    run_demo(n_images=args.images, model=args.model)
    return 0


def _save_figure(fig: Any, out: str, dpi: int, token: Any) -> tuple[int, int]:
    """Write a figure as PNG to a local path or a gs:// URL; return its pixel size."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    if "://" in out:
        from gcsemb.storage import open_store

        store = open_store(out, token=token)
        store.fs.pipe_file(store.path, data)
    else:
        with open(out, "wb") as f:
            f.write(data)
    return Image.open(io.BytesIO(data)).size


def cmd_umap(args: argparse.Namespace) -> int:
    """Project a dataset with UMAP and save the scatter plot, with thumbnails, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from gcsemb.projection import umap_project
    from gcsemb.storage import open_store
    from gcsemb.viz import THUMBNAIL_GID, plot_projection

    dataset = open_store(args.dst, token=args.token)  # credentials resolved once
    coords = umap_project(
        dataset,
        model=args.model_tag,
        n_neighbors=args.n_neighbors,
        min_dist=args.min_dist,
        seed=None if args.seed < 0 else args.seed,
        reuse=not args.recompute,
    )
    info = coords.attrs["umap"]
    color_by = None if args.color_by.lower() == "none" else args.color_by
    ax = plot_projection(coords, color_by=color_by, thumbnails=args.thumbnails, title=args.title)
    drawn = sum(1 for a in ax.artists if a.get_gid() == THUMBNAIL_GID)
    width, height = _save_figure(ax.figure, args.out, args.dpi, dataset)
    how = "reused from" if info["reused"] else "saved to"
    print(
        f"{args.out}: {width}x{height} px, {len(coords):,} images, {drawn} thumbnails; "
        f"projection {how} {info['path'] or '(not saved)'} in {info['seconds']:.1f} s",
        file=sys.stderr,
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Print the images of a dataset that best match a text (or an image), best first."""
    from gcsemb.search import embeddings_of, search_image, search_text

    if not args.query and not args.image:
        raise GcsembError('Give a text to search for ("a dog on a beach") or --image URI.')
    df, matrix, dataset = embeddings_of(args.dst, token=args.token, model=args.model_tag)
    options = dict(
        k=args.k,
        model=args.model,
        pretrained=args.pretrained,
        token=dataset,
        device=args.device,
    )
    if args.image:
        results = search_image((df, matrix), args.image, **options)
    else:
        results = search_text((df, matrix), args.query, **options)
    out = sys.stdout
    if args.format == "jsonl":
        for row in results.itertuples():
            record = {"uri": row.uri, "score": round(float(row.score), 6)}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        out.write(f"{'RANK':>4}  {'SCORE':>6}  URI\n")
        for rank, row in enumerate(results.itertuples(), 1):
            out.write(f"{rank:>4}  {row.score:6.3f}  {row.uri}\n")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        from gcsemb.viz import image_grid

        what = f"images like {args.image}" if args.image else f"\u201c{args.query}\u201d"
        fig = image_grid(results, title=f"Top {len(results)}: {what}")
        width, height = _save_figure(fig, args.out, args.dpi, dataset)
        print(f"{args.out}: {width}x{height} px, {len(results)} images", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    from gcsemb.storage import IMAGE_EXTENSIONS

    parser = argparse.ArgumentParser(
        prog="gcsemb",
        description="CLIP embeddings of the images in a Google Cloud Storage bucket, as parquet.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and gcsfs logs")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and gcsfs logs",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "list",
        parents=[common],
        help="list the images under a gs:// prefix, glob or local folder",
        description="List image objects with the metadata later stages use. "
        "Globs: * within a folder, ** across folders; quote them in the shell.",
    )
    p.add_argument("url", help="gs://bucket/prefix, gs://bucket/**/*.jpg, or a local folder")
    _add_auth(p)
    p.add_argument("--format", choices=("table", "csv", "jsonl"), default="table")
    p.add_argument("--limit", type=int, help="stop after N images")
    p.add_argument(
        "--extensions",
        nargs="+",
        default=sorted(IMAGE_EXTENSIONS),
        metavar="EXT",
        help="file endings counted as images (default: common formats)",
    )
    p.add_argument("--all-files", action="store_true", help="list every object, not only images")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "check",
        parents=[common],
        help="which identity is in use, and may it list, read and write at URL?",
        description="Answer in plain words who gcsemb is on this machine and whether it may list, "
        "read and write under URL (the write test puts a small object there and deletes it at "
        "once). Exit status 0 when all three work.",
    )
    p.add_argument("url", help="gs://bucket/prefix to test")
    _add_auth(p)
    p.add_argument("--no-write", action="store_true", help="do not test writing")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "embed",
        parents=[common],
        help="embed every image under SRC into parquet at DST",
        description="Embed every image under SRC with CLIP and write parquet shards to DST. "
        "Safe to stop and run again: a re-run embeds only new or changed images, and images "
        "that fail are recorded under DST/_errors/ with the reason.",
    )
    p.add_argument("src", help="gs://bucket/prefix, a glob, or a local folder")
    p.add_argument("dst", help="destination folder: gs://bucket/embeddings or a local path")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture or config JSON")
    p.add_argument(
        "--pretrained",
        default="laion2b_s34b_b79k",
        help="weights tag, checkpoint path or gs:// URL; 'random' for random weights",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per forward pass (default: 32 on a CPU, 256 on a GPU)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument(
        "--decode",
        default="auto",
        choices=("auto", "cpu", "gpu"),
        help="where JPEGs are decoded: auto (on the GPU with nvJPEG when the model runs on "
        "CUDA), cpu, gpu",
    )
    p.add_argument("--limit", type=int, help="only the first N images of the listing")
    tuning = p.add_argument_group(
        "throughput (the run's final line names the stage that limited it)"
    )
    tuning.add_argument("--io-workers", type=int, help="fetch groups in flight at once (default 4)")
    tuning.add_argument(
        "--fetch-batch", type=int, help="objects fetched together by one group (default 32)"
    )
    tuning.add_argument(
        "--decode-workers", type=int, help="CPU threads decoding (default: the CPU cores)"
    )
    tuning.add_argument("--rows-per-shard", type=int, help="rows per parquet shard (default 5000)")
    tuning.add_argument(
        "--max-object-mb",
        type=float,
        default=256,
        help="objects larger than this are recorded as too large, never downloaded (256)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="try every recorded failure again (by default: those with an environmental cause)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait this long while another run writes to DST (default: stop at once)",
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object on stdout at the end (counts, stages, bound stage)",
    )
    p.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="local: this machine; ray: a Ray cluster (pip install 'gcsemb[ray]')",
    )
    p.add_argument(
        "--address", help="ray: cluster to join (auto, ray://HOST:10001, vertex_ray://...)"
    )
    p.add_argument(
        "--workers", type=int, help="ray: embedding actors (default: one per --gpus-per-worker)"
    )
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0,
        help="ray: GPUs per embedding actor (0: embed on CPU)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_auth(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="the whole job offline: local GCS emulator, sample photos",
        description="Start a local GCS emulator, upload sample photographs and "
        "run the job on them. Needs no account and no internet.",
    )
    p.add_argument("--images", type=int, default=300, help="how many sample images (default 300)")
    p.add_argument("--model", help="open_clip architecture (default: a tiny CLIP, fast on CPU)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "umap",
        parents=[common],
        help="plot a dataset's UMAP map (with image thumbnails) as a PNG",
        description="Project the embeddings under DST to 2-D with UMAP (cosine, seed 42) and draw\n"
        "them, coloured by a column, with thumbnails of images from the densest areas. The\n"
        "projection is saved as DST/_umap/<model>.parquet and reused while the images and\n"
        "parameters stay the same.",
        epilog="example:\n  gcsemb umap gs://my-bucket/embeddings --out umap.png "
        "--thumbnails 80 --color-by folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    p.add_argument("--n-neighbors", type=int, default=15, help="UMAP neighbourhood (default 15)")
    p.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist (default 0.1)")
    p.add_argument(
        "--seed", type=int, default=42, help="layout seed; -1: faster (all cores), not repeatable"
    )
    p.add_argument("--recompute", action="store_true", help="ignore a saved projection")
    p.add_argument("--title", help="plot title (default: UMAP of N images)")
    p.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    p.add_argument("--model-tag", help="the model column value to plot, when DST holds several")
    p.add_argument("--token", help="credentials: key file path, 'anon', 'adc', 'metadata', 'colab'")
    p.set_defaults(func=cmd_umap)

    p = sub.add_parser(
        "search",
        parents=[common],
        help="find the images that best match a text (or an image)",
        description="Embed QUERY with the text tower of the model that embedded DST and print the\n"
        "K closest images, best first. The model is recovered from the dataset when it was an\n"
        "open_clip weights tag; for a checkpoint pass --pretrained PATH again.",
        epilog="examples:\n"
        '  gcsemb search gs://my-bucket/embeddings "a dog on a beach" -k 8\n'
        '  gcsemb search ./embeddings "a red car" --format jsonl --out cars.png\n'
        "  gcsemb search ./embeddings --image gs://my-bucket/photos/cat.jpg -k 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dst", help="the embeddings folder written by gcsemb embed")
    p.add_argument("query", nargs="?", help="what to look for, e.g. 'a dog on a beach'")
    p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--image", help="search by image: a dataset uri, another gs:// URL or a file")
    p.add_argument("--format", choices=("table", "jsonl"), default="table")
    p.add_argument("--out", help="also draw the results as an image grid PNG (path or gs://)")
    p.add_argument("--model", help="architecture given to gcsemb embed (default: the dataset's)")
    p.add_argument("--pretrained", help="weights given to gcsemb embed (needed for a checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dpi", type=int, default=150, help="grid PNG resolution (default 150)")
    p.add_argument("--model-tag", help="the model column value to search, when DST holds several")
    p.add_argument("--token", help="credentials: key file path, 'anon', 'adc', 'metadata', 'colab'")
    p.set_defaults(func=cmd_search)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gcsemb`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    if not args.debug:
        # gcsfs logs every failed request with a traceback before raising; we print one line.
        logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    try:
        return args.func(args)
    except GcsembError as e:
        if args.debug:
            raise
        print(f"gcsemb: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gcsemb: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `gcsemb list ... | head`
        return 0
    except Exception as e:
        if args.debug:
            raise
        print(
            f"gcsemb: error: {type(e).__name__}: {e} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
