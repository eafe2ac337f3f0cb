"""``gcsemb embed``: every image under SRC, embedded into a parquet dataset at DST."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gcsemb.cli.common import Command, add_credentials, add_field, store_of
from gcsemb.embedding.config import DECODES, MIB, PRECISIONS, EmbedConfig, RayEngine, field_default
from gcsemb.errors import READ_ROLE, WRITE_ROLE

THROUGHPUT = ("batch_size", "io_workers", "fetch_batch", "decode_workers", "rows_per_shard")

DESCRIPTION = f"""\
Embed every image under SRC with a CLIP model (open_clip) and write parquet
shards to DST, one row per image: uri, md5, size, generation, width, height,
model and the L2-normalised embedding; pandas.read_parquet(DST) reads them.
An image that fails is recorded under DST/_errors/ with the stage and the
reason, and never stops the run. Safe to stop and run again: a re-run embeds
only new or changed images, decided from the listing's md5 without downloading
the others.

prints: a progress bar and one estimate on stderr (images and GB to do, time
  left), then two lines on stdout:
    1. the summary: images seen, embedded, skipped as already done, identical
       to another, failed; seconds, images/s, device (precision) -> DST
    2. which stage bounds the run (list, fetch, decode, model or write), its
       rate, and what to try, e.g. "fetch bounds this run: about 40 images/s
       (9 MB/s) from storage; more requests in flight help: --io-workers 16
       --fetch-batch 64"
  With --format json, one JSON object on stdout instead (for scripts): the
  counts, images_per_second, per-stage stats, "bound" and "hint".

failures: a failure caused by this machine (a missing decoder, out of memory)
  is tried again by the next run, one caused by the bytes is not (until the
  decoders change); --retry-failed tries every recorded failure again.
one run per DST: a run holds a lease in DST/_lease/ while it writes. Another
  live run there stops this one at once, naming it; --wait SECONDS waits for it
  instead. A run that died is taken over (with a warning).
decoding: --decode auto decodes JPEGs in batches on the GPU (nvJPEG) when the
  model runs on CUDA, everything else with CPU threads; cpu or gpu force it.
throughput: the flags of that group set the requests in flight, the decode
  threads and the batch; change the one the second line names.
engines: local (this machine) or ray (a Ray cluster: --address, --workers,
  --gpus-per-worker).
access: reading SRC needs {READ_ROLE}, writing DST needs
  {WRITE_ROLE} (`gcsemb check DST` tells)."""


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of ``gcsemb embed``."""
    p.add_argument("src", help="gs://bucket/prefix, a glob, or a local folder")
    p.add_argument("dst", help="destination folder: gs://bucket/embeddings or a local path")
    _model_options(p.add_argument_group("model"))
    p.add_argument("--limit", type=int, help="only the first N images of the listing")
    _throughput_options(
        p.add_argument_group("throughput (the run's final line names the stage that limited it)")
    )
    _run_options(p)
    _engine_options(p.add_argument_group("engine"))
    add_credentials(p)


def _model_options(group: Any) -> None:
    add_field(group, "--model", EmbedConfig)
    add_field(group, "--pretrained", EmbedConfig)
    add_field(group, "--device", EmbedConfig)
    add_field(group, "--precision", EmbedConfig, choices=("auto", *PRECISIONS))
    add_field(group, "--decode", EmbedConfig, choices=DECODES)


def _throughput_options(group: Any) -> None:
    # default None: only the flags given are passed on (the config's defaults apply, and the
    # batch size and decode threads depend on the machine)
    for flag in THROUGHPUT:
        add_field(group, "--" + flag.replace("_", "-"), EmbedConfig, type=int, default=None)
    add_field(
        group,
        "--max-object-mb",
        EmbedConfig,
        name="max_object_bytes",
        type=float,
        default=field_default(EmbedConfig, "max_object_bytes") / MIB,
    )


def _run_options(p: argparse.ArgumentParser) -> None:
    add_field(p, "--retry-failed", EmbedConfig, action="store_true")
    add_field(p, "--wait", EmbedConfig, name="wait_for_lease", type=float, metavar="SECONDS")
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object on stdout at the end (counts, stages, bound stage)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _engine_options(group: Any) -> None:
    group.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="local: this machine; ray: a Ray cluster (pip install 'gcsemb[ray]')",
    )
    add_field(group, "--address", RayEngine)
    add_field(group, "--workers", RayEngine, type=int)
    add_field(group, "--gpus-per-worker", RayEngine, type=float)


def engine_of(args: argparse.Namespace) -> Any:
    """``"local"``, or the :class:`~gcsemb.embedding.config.RayEngine` the ray flags describe."""
    if args.engine != "ray":
        return "local"
    return RayEngine(args.address, args.workers, args.gpus_per_worker)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line (the others keep their defaults)."""
    given = {name: getattr(args, name) for name in THROUGHPUT if getattr(args, name) is not None}
    return {
        **given,
        "device": args.device,
        "precision": args.precision,
        "decode": args.decode,
        "retry_failed": args.retry_failed,
        "wait_for_lease": args.wait,
        "max_object_bytes": int(args.max_object_mb * MIB),
    }


def run(args: argparse.Namespace) -> int:
    """Embed every image under SRC into a parquet dataset at DST."""
    from gcsemb.embedding.job import embed

    pretrained = None if args.pretrained.lower() in ("none", "random") else args.pretrained
    summary = embed(
        store_of(args, args.src),
        args.dst,
        model=args.model,
        pretrained=pretrained,
        limit=args.limit,
        progress=not args.no_progress,
        engine=engine_of(args),
        **settings_of(args),
    )
    if args.format == "json":
        print(json.dumps(summary.to_dict(), ensure_ascii=False))
    else:
        print(summary)
    return 0


COMMAND = Command(
    name="embed",
    summary="embed every image under SRC into parquet at DST",
    description=DESCRIPTION,
    examples=(
        (
            "gcsemb embed gs://my-bucket/photos gs://my-bucket/embeddings",
            "ViT-B-32 (laion2b_s34b_b79k weights), on the GPU when there is one",
        ),
        (
            "gcsemb embed photos/ emb/ --model ViT-L-14 --pretrained datacomp_xl_s13b_b90k",
            "another open_clip model and its weights, local folders",
        ),
        (
            "gcsemb embed gs://b/photos gs://b/emb --format json --wait 600",
            "in a scheduled job: a JSON summary; wait up to 10 min for another run",
        ),
        (
            "gcsemb embed gs://b/photos gs://b/emb \\\n"
            "    --engine ray --address auto --gpus-per-worker 1",
            "on a Ray cluster, one GPU per embedding actor",
        ),
    ),
    exit_status="0 when the run finished, also when some images failed (they are in "
    "DST/_errors/ and in the summary); 1 on an error (no access, another run writing to DST, "
    "a model that cannot load: one line on stderr); 130 when interrupted (the shards written "
    "so far stay; run again to go on).",
    configure=configure,
    run=run,
)
