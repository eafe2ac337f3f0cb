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

Workers never receive a live filesystem (gcsfs sessions are neither picklable nor fork-safe) nor
any secret: they get :class:`~gcsemb.storage.Store` handles, which pickle as the URL and the recipe
of the credentials (a key file path, ``adc``, ``metadata``, ``anon``) and open their own.

Example:
    >>> import gcsemb
    >>> gcsemb.embed("gs://b/photos", "gs://b/emb", engine="ray", address="auto",
    ...              gpus_per_worker=1, workers=8, batch_size=256)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import re
import sys
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import pyarrow as pa

from gcsemb import errors
from gcsemb.embedding.config import RayEngine, default_batch_size
from gcsemb.embedding.run import Run, run_metadata
from gcsemb.embedding.stages import DEDUPE_WINDOW, Counts, Failure, Item, decode, fetch, plan
from gcsemb.embedding.writer import ShardWriter
from gcsemb.errors import GcsembError
from gcsemb.extras import require
from gcsemb.storage import (
    IMAGE_EXTENSIONS,
    OBJECT_FIELDS,
    ObjectInfo,
    Store,
    explain,
    glob_base,
    list_images,
    normalize_extensions,
    object_schema,
)
from gcsemb.storage.gcs import ZB_HNS_ENV

BLOCK_ROWS = 1024  # images per listing block: the unit a fetch/decode task takes
FETCH_CPUS = 0.25  # fetch, listing and write tasks mostly wait on the network: four per core
DECODE_MEMORY = 1024**3  # a decode worker: torch + open_clip (~0.5 GB) and one full-size image
FORWARDED_ENV = (ZB_HNS_ENV,)  # sent to workers when gcsemb starts Ray itself

OBJECT_SCHEMA = pa.schema(
    [
        *object_schema(),
        pa.field("aliases", pa.binary()),  # pickled ObjectInfos with the same bytes, or empty
        pa.field("stage", pa.string()),  # a failure already at listing: too large to fetch
        pa.field("error", pa.string()),
    ]
)
FAILURE_COLUMNS = {  # how a Failure travels between the stages' tasks
    "stage": pa.string(),
    "error": pa.string(),
    "environmental": pa.bool_(),
    "decoders": pa.string(),
}


def _ray() -> Any:
    require("ray.data", "ray", "The Ray engine", package="Ray Data")
    return sys.modules["ray"]


@dataclass(frozen=True)
class Part:
    """One listing task: a folder to list (or none) plus objects the driver already listed."""

    url: str | None
    objects: tuple[ObjectInfo, ...] = ()
    done: dict[str, Any] | None = None


@dataclass
class Preprocessor:
    """The model's own open_clip transform without its weights, split for shipping.

    Decode tasks run the geometric steps (resize, crop) and ship uint8 pixels, a quarter of the
    bytes of the float tensor; the model's actor converts and normalises them (on its GPU) with
    torchvision's arithmetic, so the model sees exactly what :meth:`transform` would give it.
    Quacks like :class:`gcsemb.model.embedder.Embedder` for :func:`gcsemb.embedding.stages.decode`.

    Attributes:
        transform: The full transform (PIL image -> normalised CHW float tensor).
        image_size: The shorter side the model takes.
        pixels: The steps before ``ToTensor`` (PIL -> PIL), or ``None`` if the transform does not
            end in ``ToTensor, Normalize`` (then floats are shipped).
        mean: ``Normalize``'s mean.
        std: ``Normalize``'s std.
    """

    transform: Callable[[Any], Any]
    image_size: int
    pixels: Callable[[Any], Any] | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def preprocess(self, image: Any) -> np.ndarray:
        """What a decode task ships: uint8 HWC pixels (float CHW without a split)."""
        if self.pixels is None:
            return self.transform(image).numpy()
        return np.array(self.pixels(image), dtype=np.uint8)  # a writable copy for torch

    def model_input(self, batch: np.ndarray, device: Any = "cpu") -> Any:
        """A batch of :meth:`preprocess` outputs as the model's input tensor, on ``device``."""
        import torch

        x = torch.from_numpy(batch)
        if self.pixels is None:
            return x
        x = x.to(device).permute(0, 3, 1, 2).contiguous().float().div(255)  # as ToTensor
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x.sub_(mean).div_(std)  # as Normalize


@functools.cache
def preprocessor(model: str, pretrained: str | None) -> Preprocessor:
    """The preprocess of ``(model, pretrained)``, built on torch's meta device (no weights).

    Same configuration path as :func:`gcsemb.model.embedder.load_embedder` (the weights tag's mean,
    std and resize mode), in a tenth of a second and no memory, once per worker process.
    """
    import open_clip
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
    from torchvision.transforms import Compose, Normalize, ToTensor

    from gcsemb.model.embedder import architecture, image_size
    from gcsemb.storage.cache import cache_dir

    arch = architecture(model)
    tag_cfg = (open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}) or {}
    with torch.device("meta"), _quiet_root_logger():
        net = open_clip.create_model(
            arch,
            pretrained=None,
            device="meta",
            precision="fp32",
            pretrained_text=False,
            force_preprocess_cfg=merge_preprocess_dict({}, tag_cfg),
            cache_dir=str(cache_dir() / "open_clip"),
        )
    cfg = net.visual.preprocess_cfg
    transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    pre = Preprocessor(transform, image_size(cfg))
    steps = getattr(transform, "transforms", [])
    if len(steps) >= 2 and isinstance(steps[-2], ToTensor) and isinstance(steps[-1], Normalize):
        pre.pixels = Compose(steps[:-2])
        pre.mean, pre.std = tuple(steps[-1].mean), tuple(steps[-1].std)
    return pre


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip warns on the root logger that the weights are random: here that is the point."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# ---- listing: one delimiter listing on the driver, one task per folder --------------------------


def fan_out(
    src: Store, extensions: frozenset[str] | None, done: dict[str, Any]
) -> tuple[list[Part], str | None]:
    """Split ``src`` into listing parts: one per top-level folder, plus the top-level images.

    One delimiter listing (``fs.ls``) names the folders; each folder is then listed by its own
    task, with the slice of the done index under it (so no task holds the whole index).

    Returns:
        The parts and the glob pattern (a regex source) every listed name must match, if any.
    """
    path = src.path
    base, regex = glob_base(path)
    if regex is None:
        base = path.rstrip("/") or path
    elif not base:  # a glob in the bucket name (list_images explains it) or at a local root
        return [Part(src.url, done=done)], None
    try:
        folders, objects = src.backend.children(base)
    except FileNotFoundError:  # no such folder: list_images tells a bucket from a prefix
        return [Part(src.url, done=done)], None
    except Exception as e:
        raise explain(e, src.url, src, "list") from e
    exts = normalize_extensions(extensions)
    top = []
    for obj in objects:  # regular files only: never a pipe, a device, a broken link
        name = src.fs._strip_protocol(obj.uri)
        if (exts and os.path.splitext(name)[1].lower() not in exts) or (
            regex and not regex.match(name)
        ):
            continue
        top.append(obj)
    base_uri = src.uri(base)
    by_folder: dict[str, dict[str, Any]] = defaultdict(dict)  # the done index, split by folder
    for uri, row in done.items():
        if uri.startswith(base_uri + "/"):
            by_folder[uri[len(base_uri) + 1 :].split("/", 1)[0]][uri] = row
    parts = [
        Part(src.uri(name), done=by_folder.get(name.rsplit("/", 1)[-1], {}))
        for name in sorted(folders)
    ]
    if top:
        parts.insert(0, Part(None, tuple(top), {o.uri: done[o.uri] for o in top if o.uri in done}))
    return parts, regex.pattern if regex else None


def list_part(
    part: Part,
    src: Store,
    pattern: str | None,
    *,
    extensions: frozenset[str] | None,
    limit: int | None,
    max_object_bytes: int | None = None,
    block_rows: int = BLOCK_ROWS,
) -> Iterator[pa.Table | dict[str, int]]:
    """List one part, drop what is done, fold identical bytes; yield blocks, then the counts.

    Runs as a Ray streaming-generator task: each block becomes its own object for Ray Data, and
    the last item is ``{"seen": ..., "skipped": ..., "rows": ...}``.
    """
    fs = src.fs
    regex = re.compile(pattern, re.DOTALL) if pattern else None

    def listed() -> Iterator[ObjectInfo]:
        count = 0
        objects: Iterable[ObjectInfo] = part.objects
        if part.url is not None:
            objects = list_images(src.at(part.url), extensions=extensions)
        for obj in objects:
            if regex and not regex.match(fs._strip_protocol(obj.uri)):
                continue
            yield obj
            count += 1
            if limit is not None and count >= limit:
                return

    counts = Counts()
    window: list[tuple[Item, list[ObjectInfo]]] = []  # rows, each with its twins
    firsts: dict[str, list[ObjectInfo]] = {}  # md5 -> the twins list of its row in the window
    rows = 0
    for item in plan(listed(), part.done or {}, counts, max_object_bytes):
        if item.twin is not None and item.md5 in firsts:
            firsts[item.md5].append(item.obj)
            continue
        twins: list[ObjectInfo] = []
        window.append((item, twins))
        if item.md5 is not None and item.failure is None:
            firsts[item.md5] = twins
        if len(window) >= DEDUPE_WINDOW:
            for start in range(0, len(window), block_rows):
                rows += min(block_rows, len(window) - start)
                yield _objects_table(window[start : start + block_rows])
            window, firsts = [], {}
    for start in range(0, len(window), block_rows):
        rows += min(block_rows, len(window) - start)
        yield _objects_table(window[start : start + block_rows])
    yield {"seen": counts.seen, "skipped": counts.skipped, "rows": rows}


def _objects_table(chunk: list[tuple[Item, list[ObjectInfo]]]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in OBJECT_SCHEMA.names}
    for item, aliases in chunk:
        for name in list(OBJECT_FIELDS):
            cols[name].append(getattr(item.obj, name))
        cols["aliases"].append(pickle.dumps(aliases) if aliases else b"")
        cols["stage"].append(item.failure.stage if item.failure else None)
        cols["error"].append(item.failure.error if item.failure else None)
    return pa.table(cols, schema=OBJECT_SCHEMA)


def _items(batch: pa.Table, **columns: list[Any]) -> list[Item]:
    """Items of a batch of rows, with the failure the rows carry."""
    names = [n for n in FAILURE_COLUMNS if n in batch.column_names]
    failures = batch.select(names).to_pylist()
    items = []
    for obj, failure in zip(_objects(batch), failures, strict=True):
        it = Item(obj, md5=obj.md5)
        if failure.get("stage"):
            it.failure = Failure(
                failure["stage"],
                failure.get("error") or "no result",
                bool(failure.get("environmental")),
                failure.get("decoders"),
            )
        items.append(it)
    return items


def _with_failures(batch: pa.Table, items: list[Item]) -> pa.Table:
    """``batch`` with its failure columns set from ``items``."""
    batch = batch.drop_columns([n for n in FAILURE_COLUMNS if n in batch.column_names])
    for name, kind in FAILURE_COLUMNS.items():
        values = [getattr(it.failure, name) if it.failure else None for it in items]
        batch = batch.append_column(name, pa.array(values, kind))
    return batch


def _objects(batch: pa.Table) -> list[ObjectInfo]:
    columns = batch.select(list(OBJECT_FIELDS)).to_pydict()
    return [ObjectInfo(*values) for values in zip(*columns.values(), strict=True)]


def _aliases(blob: bytes | None) -> list[ObjectInfo]:
    return pickle.loads(blob) if blob else []


# ---- the per-batch stages: the local engine's functions on rows ---------------------------------


def fetch_rows(batch: pa.Table, src: Store) -> pa.Table:
    """Fetch stage: :func:`gcsemb.embedding.stages.fetch` on a batch of listed objects."""
    items = _items(batch)
    fetch(src, items)
    for it in items:
        if it.fatal is not None:  # refused credentials end the run, as in the local engine
            raise it.fatal
    md5s = pa.array([it.md5 for it in items], pa.string())
    batch = batch.set_column(batch.schema.get_field_index("md5"), "md5", md5s)
    batch = batch.append_column("data", pa.array([it.data for it in items], pa.binary()))
    return _with_failures(batch, items)


def decode_rows(batch: pa.Table, model: str, pretrained: str | None) -> pa.Table:
    """Decode stage: :func:`~gcsemb.embedding.stages.decode` and the preprocess, per image.

    The preprocessed pixels travel as raw bytes (``tensor``); failures keep it empty.
    """
    pre = preprocessor(model, pretrained)
    items = _items(batch)
    md5s, datas = batch.column("md5").to_pylist(), batch.column("data").to_pylist()
    for it, md5, data in zip(items, md5s, datas, strict=True):
        it.md5, it.data = md5, data
        decode(it, pre.preprocess, pre.image_size)
        if it.tensor is None and it.failure is None:
            it.failure = Failure("fetch", "no result")
    tensors = [b"" if it.failure else np.ascontiguousarray(it.tensor).tobytes() for it in items]
    out = batch.drop_columns(["data"])
    out = out.append_column("width", pa.array([it.width for it in items], pa.int32()))
    out = out.append_column("height", pa.array([it.height for it in items], pa.int32()))
    out = out.append_column("tensor", pa.array(tensors, pa.binary()))
    return _with_failures(out, items)


class Embed:
    """Embed stage, a Ray Data actor: the model is loaded once, in ``__init__``.

    Args:
        model: open_clip architecture name or model-config JSON path.
        pretrained: Weights tag, checkpoint path or gs:// URL (must be readable on the worker).
        device: ``auto`` takes the actor's GPU when Ray gave it one.
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16``.
        access: The handle whose access reaches a gs:// checkpoint.
        tag: The model tag the driver computed; rows are written under it.
    """

    def __init__(
        self,
        model: str,
        pretrained: str | None,
        *,
        device: str,
        precision: str,
        access: Store,
        tag: str,
    ) -> None:
        from gcsemb.model.embedder import load_embedder

        self.embedder = load_embedder(
            model, pretrained, device=device, precision=precision, token=access
        )
        if self.embedder.name != tag:
            raise GcsembError(
                f"The worker loaded {self.embedder.name} but the driver expected {tag}: give "
                "every node the same checkpoint (a gs:// URL or a weights tag)."
            )
        from PIL import Image

        self.pre = preprocessor(model, pretrained)
        sample = self.pre.preprocess(Image.new("RGB", (8, 8)))
        self.shape, self.dtype = sample.shape, sample.dtype

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Embed the rows that decoded; the others get a zero vector and keep their error."""
        blobs = batch.column("tensor").to_pylist()
        ok = [i for i, blob in enumerate(blobs) if blob]
        emb = np.zeros((batch.num_rows, self.embedder.dim), np.float32)
        if ok:
            stacked = np.stack([np.frombuffer(blobs[i], self.dtype) for i in ok])
            pixels = stacked.reshape(len(ok), *self.shape)
            emb[ok] = self.embedder.embed_tensors(
                self.pre.model_input(pixels, self.embedder.device)
            )
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
        return batch.drop_columns(["tensor"]).append_column("embedding", vectors)


def write_rows(
    batch: pa.Table, dst: Store, model: str, metadata: dict[str, str], run: str
) -> pa.Table:
    """Write stage: one :class:`~.writer.ShardWriter` flush per batch (atomic shards).

    Shards are named ``part-<run>-<task>-00000.parquet``: the run's id, then this task's own
    suffix (tasks run at once on many machines, so each needs its own name).

    Returns one row of counts (embedded, duplicates, failed) for the driver's summary.
    """
    emb = batch.column("embedding").combine_chunks()
    dim = emb.type.list_size
    matrix = emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    writer = ShardWriter(
        dst,
        model,
        dim,
        rows_per_shard=batch.num_rows + 1,
        seconds_per_shard=float("inf"),
        metadata=metadata,
        run=f"{run}-{uuid.uuid4().hex[:8]}",
    )
    counts = {"embedded": 0, "duplicates": 0, "failed": 0}
    cols = batch.select(["md5", "width", "height", "aliases"]).to_pydict()
    for i, (it, md5, width, height, blob) in enumerate(
        zip(_items(batch), *cols.values(), strict=True)
    ):
        twins = _aliases(blob)
        counts["duplicates"] += len(twins) if it.failure is None else 0
        for one in (it.obj, *twins):
            if it.failure is None:
                writer.add(one, md5, width, height, matrix[i])
            else:
                f = it.failure
                writer.add_error(
                    one, md5, f.stage, f.error, environmental=f.environmental, decoders=f.decoders
                )
                counts["failed"] += 1
        counts["embedded"] += it.failure is None
    writer.flush()
    return pa.table({k: [v] for k, v in counts.items()})


# ---- the driver ---------------------------------------------------------------------------------


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
        ds: A Ray dataset of the objects to embed (:data:`OBJECT_SCHEMA`).
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
