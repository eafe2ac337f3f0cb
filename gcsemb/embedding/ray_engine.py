"""The same job on Ray Data, for buckets larger than one machine (``embed(..., engine="ray")``).

Every stage reuses the local engine's functions on the same records; Ray only places them::

    driver: one delimiter listing of SRC (its folders) + the done index of DST, split by folder
    listing   Ray tasks, one per folder: list_images + plan (skip done, fold identical bytes)
    fetch     Ray Data tasks (a quarter CPU each: mostly waiting on the network)   stages.fetch
    decode    Ray Data tasks (one CPU each): decode, resize, crop -> uint8 pixels stages.decode
    embed     Ray Data actors (``workers`` of them, ``gpus_per_worker`` GPUs each): load_embedder,
              normalise on the device, embed
    write     Ray Data tasks: one ShardWriter per ``rows_per_shard`` rows -> atomic parquet shards

The output is the local engine's dataset contract: same columns and parquet metadata, failures in
``DST/_errors/`` with stage and reason, and a re-run skips what DST already holds. Identical bytes
are fetched and embedded once when they are listed by the same folder's task (within
``DEDUPE_WINDOW`` images); twins in different folders are embedded once each (rows stay exact).

The stages live in :mod:`~gcsemb.embedding.ray_listing` (listing tasks),
:mod:`~gcsemb.embedding.ray_tasks` (fetch, decode, embed, write) and
:mod:`~gcsemb.embedding.ray_rows` (how an image travels between them); this module is the driver.

Workers never receive a live filesystem (gcsfs sessions are neither picklable nor fork-safe) nor
any secret: they get :class:`~gcsemb.storage.Store` handles, which pickle as the URL and the recipe
of the credentials (a key file path, ``adc``, ``metadata``, ``anon``) and open their own.

Example:
    >>> import gcsemb
    >>> gcsemb.embed("gs://b/photos", "gs://b/emb", engine="ray", address="auto",
    ...              gpus_per_worker=1, workers=8, batch_size=256)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from typing import Any, NoReturn

from gcsemb import errors
from gcsemb.embedding.config import RayEngine, default_batch_size
from gcsemb.embedding.ray_listing import Part, fan_out, list_part
from gcsemb.embedding.ray_tasks import Embed, decode_rows, fetch_rows, write_rows
from gcsemb.embedding.run import Run, run_metadata
from gcsemb.errors import GcsembError
from gcsemb.extras import require
from gcsemb.storage import IMAGE_EXTENSIONS
from gcsemb.storage.gcs import ZB_HNS_ENV

FETCH_CPUS = 0.25  # fetch, listing and write tasks mostly wait on the network: four per core
DECODE_MEMORY = 1024**3  # a decode worker: torch + open_clip (~0.5 GB) and one full-size image
FORWARDED_ENV = (ZB_HNS_ENV,)  # sent to workers when gcsemb starts Ray itself


def _ray() -> Any:
    require("ray.data", "ray", "The Ray engine", package="Ray Data")
    return sys.modules["ray"]


def embed_ray(
    run: Run,
    engine: RayEngine,
    *,
    extensions: frozenset[str] | None = IMAGE_EXTENSIONS,
    limit: int | None = None,
    progress: bool = True,
) -> None:
    """Embed every image of ``run`` on a Ray cluster (see the module docs); fills its summary.

    Called by :func:`gcsemb.embed` with ``engine="ray"`` or a
    :class:`~gcsemb.embedding.config.RayEngine`, after the shared preamble
    (:func:`gcsemb.embedding.run.prepare`). The driver holds DST's lease for the whole run and reads
    DST's index under it.

    Args:
        run: The prepared run: handles (their credentials travel to the workers as a recipe,
            never a secret: a key path present on every node, or each node's application default
            credentials), settings (``batch_size`` is the GPU batch, ``fetch_batch`` the fetch
            and decode batch, ``rows_per_shard`` the rows of one written shard) and summary.
        engine: The cluster and its actors.
        extensions: File endings counted as images.
        limit: At most this many images listed per folder, and embedded in all.
        progress: Show Ray Data's progress bars.

    Raises:
        ImportError: Ray Data is not installed (``pip install 'gcsemb[ray]'``).
        AuthError: The credentials cannot be sent to workers (a key given as a dict or text).
    """
    ray = _ray()
    pickle.dumps((run.src, run.dst))  # credentials that cannot travel fail here, not in a worker
    run.begin_writing()  # the lease first: the index read under it is the one to trust
    parts, pattern = fan_out(run.src, extensions, run.done)
    ours = not ray.is_initialized()
    if ours:
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        local = engine.address is None and not os.environ.get("RAY_ADDRESS")
        ray.init(
            address=engine.address,
            runtime_env={"env_vars": env} if env else None,
            **({"include_dashboard": False} if local else {}),
        )
    try:
        blocks = _list(ray, parts, pattern, run, extensions=extensions, limit=limit)
        if blocks:  # else nothing new: no model loaded, no fetch, no shard
            _run(ray, blocks, run, engine, limit=limit, progress=progress)
    finally:
        if ours:
            ray.shutdown()


def _list(
    ray: Any,
    parts: list[Part],
    pattern: str | None,
    run: Run,
    *,
    extensions: frozenset[str] | None,
    limit: int | None,
) -> list[Any]:
    """List every part in its own task; the blocks of objects to embed."""
    lister = ray.remote(num_returns="streaming", num_cpus=FETCH_CPUS)(list_part)
    cap = run.config.max_object_bytes
    blocks: list[Any] = []
    try:
        for generator in [
            lister.remote(
                p, run.src, pattern, extensions=extensions, limit=limit, max_object_bytes=cap
            )
            for p in parts
        ]:
            refs = list(generator)
            counts = ray.get(refs[-1])
            run.summary.seen += counts["seen"]
            run.summary.skipped += counts["skipped"]
            if counts["rows"]:
                blocks.extend(refs[:-1])
    except Exception as e:
        _reraise(e)
    return blocks


def _run(
    ray: Any, blocks: list[Any], run: Run, engine: RayEngine, *, limit: int | None, progress: bool
) -> None:
    """Run fetch, decode, embed and write on Ray Data over the listed blocks; fills the summary.

    Args:
        ray: The ``ray`` module, initialised.
        blocks: References to the listing's Arrow blocks of objects to embed.
        run: The prepared run: its settings, source, destination and summary.
        engine: The cluster's actors: ``workers`` (None: one per ``gpus_per_worker`` GPUs of
            the cluster) and ``gpus_per_worker``.
        limit: At most this many images embedded in all.
        progress: Show Ray Data's progress bars (restored afterwards).

    Raises:
        GcsembError: The one a worker raised, out of Ray's wrappers (see :func:`_reraise`).
    """
    summary = run.summary
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars
    context.enable_progress_bars = progress
    try:
        ds = ray.data.from_arrow_refs(blocks)
        if limit is not None:
            ds = ds.limit(limit)
        ds = _stages(ray, ds, run, engine)
        for row in ds.iter_rows():
            summary.embedded += row["embedded"]
            summary.duplicates += row["duplicates"]
            summary.failed += row["failed"]
    except Exception as e:
        _reraise(e)
    finally:
        context.enable_progress_bars = saved


def _workers(ray: Any, engine: RayEngine) -> int:
    """The embedding actors: ``engine.workers``, else one per ``gpus_per_worker`` GPUs."""
    if engine.workers is not None:
        return engine.workers
    gpus_per_worker = engine.gpus_per_worker
    gpus = ray.cluster_resources().get("GPU", 0)
    return max(1, int(gpus // gpus_per_worker)) if gpus_per_worker else 1


def _stages(ray: Any, ds: Any, run: Run, engine: RayEngine) -> Any:
    """The dataset ``ds`` of objects through fetch, decode, embed and write: one row per shard.

    Args:
        ray: The ``ray`` module, initialised.
        ds: A Ray dataset of the objects to embed (rows of :data:`~.ray_rows.OBJECT_SCHEMA`).
        run: The prepared run: its settings, source, destination and summary.
        engine: The cluster's actors.

    Returns:
        The lazy Ray dataset of the write tasks' counts (``embedded``, ``duplicates``,
        ``failed``).
    """
    cfg, summary, source = run.config, run.summary, run.src
    gpus_per_worker = engine.gpus_per_worker
    workers = _workers(ray, engine)
    ds = ds.map_batches(
        fetch_rows,
        batch_size=cfg.fetch_batch,
        batch_format="pyarrow",
        num_cpus=FETCH_CPUS,
        fn_kwargs={"src": source},
    )
    ds = ds.map_batches(
        decode_rows,
        batch_size=cfg.fetch_batch,
        batch_format="pyarrow",
        fn_kwargs={"model": cfg.model, "pretrained": cfg.pretrained},
        # the memory one full-size image may take; it also keeps Ray Data from fusing these
        # tasks into the embedding actors (it fuses maps with equal resource requests), so
        # decoding stays spread over every CPU of the cluster
        memory=DECODE_MEMORY,
    )
    ds = ds.map_batches(
        Embed,
        batch_size=cfg.batch_size or default_batch_size("cuda" if gpus_per_worker else "cpu"),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={
            "model": cfg.model,
            "pretrained": cfg.pretrained,
            "device": cfg.device,
            "precision": cfg.precision,
            "access": source,
            "tag": summary.model,
        },
        **({"num_gpus": gpus_per_worker} if gpus_per_worker else {}),
    )
    return ds.map_batches(
        write_rows,
        batch_size=cfg.rows_per_shard,
        batch_format="pyarrow",
        num_cpus=FETCH_CPUS,
        fn_kwargs={
            "dst": run.dst,
            "model": summary.model,
            "metadata": run_metadata(source, cfg),
            "run": run.id,
        },
    )


def _reraise(exc: BaseException) -> NoReturn:
    """Raise the :class:`GcsembError` a worker raised, out of Ray's wrappers; else ``exc``."""
    cause = _cause(exc)
    if cause is exc:
        raise exc
    raise cause from exc


def _cause(exc: BaseException) -> BaseException:
    """The :class:`GcsembError` a worker raised, out of Ray's wrappers; else ``exc`` itself."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)  # a Ray task's own exception
        if isinstance(cause, GcsembError):
            return cause
        if isinstance(e, GcsembError):
            return e
        todo.extend(x for x in (e.__cause__, e.__context__, cause) if isinstance(x, BaseException))
    # Ray Data hands a UDF's exception back as text only (UserCodeException + its traceback)
    found = re.findall(r"^gcsemb\.errors\.(\w+): (.+)$", str(exc), re.MULTILINE)
    kind = getattr(errors, found[-1][0], None) if found else None
    if isinstance(kind, type) and issubclass(kind, GcsembError):
        return kind(found[-1][1])
    return exc
