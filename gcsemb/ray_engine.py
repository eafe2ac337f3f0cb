"""The same job on Ray Data, for buckets larger than one machine (``embed(..., engine="ray")``).

Every stage reuses the local engine's functions on the same records; Ray only places them::

    driver: one delimiter listing of SRC (its folders) + the done index of DST, split by folder
    listing   Ray tasks, one per folder: list_images + plan (skip done, fold identical bytes)
    fetch     Ray Data tasks (a quarter CPU each: mostly waiting on the network)   pipeline.fetch
    decode    Ray Data tasks (one CPU each): decode, resize, crop -> uint8 pixels pipeline.decode
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
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any, NoReturn

import numpy as np
import pyarrow as pa

from gcsemb import errors
from gcsemb.dataset import ShardWriter, done_index, failed_index
from gcsemb.errors import GcsembError
from gcsemb.pipeline import (
    DEDUPE_WINDOW,
    EmbedConfig,
    EmbedSummary,
    Item,
    check_writable,
    decode,
    default_batch_size,
    fetch,
    open_stores,
    plan,
)
from gcsemb.storage import (
    IMAGE_EXTENSIONS,
    ZB_HNS_ENV,
    ObjectInfo,
    Store,
    _from_resource,
    _info_to_object,
    explain,
    glob_base,
    list_images,
    normalize_extensions,
)

BLOCK_ROWS = 1024  # images per listing block: the unit a fetch/decode task takes
FETCH_CPUS = 0.25  # fetch, listing and write tasks mostly wait on the network: four per core
DECODE_MEMORY = 1024**3  # a decode worker: torch + open_clip (~0.5 GB) and one full-size image
FORWARDED_ENV = (ZB_HNS_ENV,)  # sent to workers when gcsemb starts Ray itself
RAY_EXTRA = "The Ray engine needs Ray Data: pip install 'gcsemb[ray]'"

_OBJECT_FIELDS = [f.name for f in fields(ObjectInfo)]
OBJECT_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("md5", pa.string()),
        pa.field("crc32c", pa.string()),
        pa.field("generation", pa.int64()),
        pa.field("content_type", pa.string()),
        pa.field("updated", pa.timestamp("us", tz="UTC")),
        pa.field("aliases", pa.binary()),  # pickled ObjectInfos with the same bytes, or empty
    ]
)


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        if e.name in ("ray", "ray.data"):
            raise ImportError(RAY_EXTRA) from e
        raise ImportError(f"{RAY_EXTRA} (installed, but importing it failed: {e})") from e
    return ray


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
    Quacks like :class:`gcsemb.embedder.Embedder` for :func:`gcsemb.pipeline.decode`.

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

    Same configuration path as :func:`gcsemb.embedder.load_embedder` (the weights tag's mean, std
    and resize mode), in a tenth of a second and no memory, once per worker process.
    """
    import open_clip
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
    from torchvision.transforms import Compose, Normalize, ToTensor

    from gcsemb.checkpoints import cache_dir
    from gcsemb.embedder import _architecture

    arch = _architecture(model)
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
    size = cfg["size"]
    transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    pre = Preprocessor(transform, int(min(size) if isinstance(size, tuple | list) else size))
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
    fs, path, gcs = src.fs, src.path, src.gcs
    base, regex = glob_base(path)
    if regex is None:
        base = path.rstrip("/") or path
    elif not base:  # a glob in the bucket name (list_images explains it) or at a local root
        return [Part(src.url, done=done)], None
    try:
        entries = fs.ls(base, detail=True, refresh=True) if gcs else fs.ls(base, detail=True)
    except FileNotFoundError:  # no such folder: list_images tells a bucket from a prefix
        return [Part(src.url, done=done)], None
    except Exception as e:
        raise explain(e, src.url, src, "list") from e
    exts = normalize_extensions(extensions)
    folders, top = [], []
    for info in entries:
        name = info["name"].rstrip("/")
        if info.get("type") == "directory":
            folders.append(name)
        elif (exts and os.path.splitext(name)[1].lower() not in exts) or (
            regex and not regex.match(name)
        ):
            continue
        elif gcs:
            bucket, _, key = name.partition("/")
            top.append(_from_resource(bucket, key, info))
        else:
            top.append(_info_to_object(fs, info))
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
    extensions: frozenset[str] | None,
    limit: int | None,
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

    counts = EmbedSummary("", "")
    window: list[tuple[ObjectInfo, list[ObjectInfo]]] = []  # rows, each with its twins
    firsts: dict[str, list[ObjectInfo]] = {}  # md5 -> the twins list of its row in the window
    rows = 0
    for item in plan(listed(), part.done or {}, counts):
        if item.alias and item.md5 in firsts:
            firsts[item.md5].append(item.obj)
            continue
        twins: list[ObjectInfo] = []
        window.append((item.obj, twins))
        if item.md5 is not None:
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


def _objects_table(chunk: list[tuple[ObjectInfo, list[ObjectInfo]]]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in OBJECT_SCHEMA.names}
    for obj, aliases in chunk:
        for name in _OBJECT_FIELDS:
            cols[name].append(getattr(obj, name))
        cols["aliases"].append(pickle.dumps(aliases) if aliases else b"")
    return pa.table(cols, schema=OBJECT_SCHEMA)


def _objects(batch: pa.Table) -> list[ObjectInfo]:
    columns = batch.select(_OBJECT_FIELDS).to_pydict()
    return [ObjectInfo(*values) for values in zip(*columns.values(), strict=True)]


def _aliases(blob: bytes | None) -> list[ObjectInfo]:
    return pickle.loads(blob) if blob else []


# ---- the per-batch stages: the local engine's functions on rows ---------------------------------


def fetch_rows(batch: pa.Table, src: Store) -> pa.Table:
    """Fetch stage: :func:`gcsemb.pipeline.fetch` on a batch of listed objects."""
    items = [Item(obj, md5=obj.md5) for obj in _objects(batch)]
    fetch(src, items)
    for it in items:
        if it.fatal is not None:  # refused credentials end the run, as in the local engine
            raise it.fatal
    batch = batch.set_column(batch.schema.get_field_index("md5"), "md5", _strings(items, "md5"))
    return (
        batch.append_column("data", pa.array([it.data for it in items], pa.binary()))
        .append_column("stage", _strings(items, "stage"))
        .append_column("error", _strings(items, "error"))
    )


def decode_rows(batch: pa.Table, model: str, pretrained: str | None) -> pa.Table:
    """Decode stage: :func:`gcsemb.pipeline.decode` (decode + the model's preprocess) per image.

    The preprocessed pixels travel as raw bytes (``tensor``); failures keep it empty.
    """
    pre = preprocessor(model, pretrained)
    objects = _objects(batch)
    cols = batch.select(["md5", "data", "stage", "error"]).to_pydict()
    tensors, widths, heights, stages, errors = [], [], [], [], []
    for obj, md5, data, stage, error in zip(objects, *cols.values(), strict=True):
        item = Item(obj, md5=md5, data=data, stage=stage, error=error)
        it = decode(item, pre, pre.image_size)  # type: ignore[arg-type]  (duck-typed Embedder)
        ok = it.tensor is not None
        tensors.append(np.ascontiguousarray(it.tensor).tobytes() if ok else b"")
        widths.append(it.width)
        heights.append(it.height)
        stages.append(None if ok else it.stage or "fetch")
        errors.append(None if ok else it.error or "no result")
    out = batch.drop_columns(["data", "stage", "error"])
    for name, values, kind in [
        ("width", widths, pa.int32()),
        ("height", heights, pa.int32()),
        ("stage", stages, pa.string()),
        ("error", errors, pa.string()),
        ("tensor", tensors, pa.binary()),
    ]:
        out = out.append_column(name, pa.array(values, kind))
    return out


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
        device: str,
        precision: str,
        access: Store,
        tag: str,
    ) -> None:
        from gcsemb.embedder import load_embedder

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


def write_rows(batch: pa.Table, dst: Store, model: str) -> pa.Table:
    """Write stage: one :class:`~gcsemb.dataset.ShardWriter` flush per batch (atomic shards).

    Returns one row of counts (embedded, duplicates, failed) for the driver's summary.
    """
    emb = batch.column("embedding").combine_chunks()
    dim = emb.type.list_size
    matrix = emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    writer = ShardWriter(
        dst, model, dim, rows_per_shard=batch.num_rows + 1, seconds_per_shard=float("inf")
    )
    counts = {"embedded": 0, "duplicates": 0, "failed": 0}
    cols = batch.select(["md5", "width", "height", "stage", "error", "aliases"]).to_pydict()
    for i, (obj, md5, width, height, stage, error, blob) in enumerate(
        zip(_objects(batch), *cols.values(), strict=True)
    ):
        twins = _aliases(blob)
        counts["duplicates"] += len(twins)
        for one in (obj, *twins):
            if stage is None:
                writer.add(one, md5, width, height, matrix[i])
            else:
                writer.add_error(one, md5, stage, error or "no result")
                counts["failed"] += 1
        counts["embedded"] += stage is None
    writer.flush()
    return pa.table({k: [v] for k, v in counts.items()})


def _strings(items: list[Item], name: str) -> pa.Array:
    return pa.array([getattr(it, name) for it in items], pa.string())


# ---- the driver ---------------------------------------------------------------------------------


def embed_ray(
    src: str | Store,
    dst: str | Store,
    *,
    config: EmbedConfig,
    token: Any = None,
    project: str | None = None,
    requester_pays: bool | str = False,
    endpoint: str | None = None,
    limit: int | None = None,
    extensions: frozenset[str] | None = IMAGE_EXTENSIONS,
    progress: bool = True,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0,
) -> EmbedSummary:
    """Embed every image under ``src`` into ``dst`` on a Ray cluster (see the module docs).

    Called by :func:`gcsemb.embed` with ``engine="ray"``; arguments as there, plus:

    Args:
        src: ``gs://bucket/prefix``, a glob, a local folder (local only to a one-node cluster).
        dst: Destination folder that every node can write.
        config: Pipeline settings; ``batch_size`` is the GPU batch, ``fetch_batch`` the fetch
            and decode batch, ``rows_per_shard`` the rows of one written shard.
        token: Credentials; workers get only their recipe (see :class:`gcsemb.storage.Store`),
            so each node must be able to use it: a key path present on every node, or
            application default credentials (workload identity, the node's service account).
        project: Google Cloud project (requester-pays billing).
        requester_pays: Bill reads to ``project``.
        endpoint: Another GCS endpoint (see :func:`gcsemb.open_store`).
        limit: At most this many images listed per folder, and embedded in all.
        extensions: File endings counted as images.
        progress: Show Ray Data's progress bars.
        address: Ray cluster to join (``auto``, ``ray://host:10001``, ``vertex_ray://...``);
            ``None`` joins the Ray already initialised, else starts a local one.
        workers: Embedding actors (default: one per ``gpus_per_worker`` GPUs, else 1).
        gpus_per_worker: GPUs per embedding actor (0: embed on CPU).

    Returns:
        The run's summary, as the local engine's.

    Raises:
        ImportError: Ray Data is not installed (``pip install 'gcsemb[ray]'``).
        AccessDenied: The identity may not list ``src`` or write ``dst``.
        AuthError: The credentials cannot be sent to workers (a key given as a dict or text).
    """
    from gcsemb.checkpoints import model_tag

    ray = _ray()
    started = time.perf_counter()
    source, target = open_stores(
        src, dst, token=token, project=project, requester_pays=requester_pays, endpoint=endpoint
    )
    pickle.dumps((source, target))  # credentials that cannot travel fail here, not in a worker
    summary = EmbedSummary(source.url, target.url)
    summary.model = model_tag(config.model, config.pretrained, token=source)
    try:
        done = failed_index(target, summary.model)
        done.update(done_index(target, summary.model))
    except Exception as e:
        raise explain(e, target.url, target, "index") from e
    parts, pattern = fan_out(source, extensions, done)
    del done
    check_writable(target)

    ours = not ray.is_initialized()
    if ours:
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        local = address is None and not os.environ.get("RAY_ADDRESS")
        ray.init(
            address=address,
            runtime_env={"env_vars": env} if env else None,
            **({"include_dashboard": False} if local else {}),
        )
    try:
        return _run(
            ray,
            parts,
            pattern,
            source,
            target,
            config,
            summary,
            started,
            limit=limit,
            extensions=extensions,
            progress=progress,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
        )
    finally:
        if ours:
            ray.shutdown()


def _run(
    ray: Any,
    parts: list[Part],
    pattern: str | None,
    source: Store,
    target: Store,
    cfg: EmbedConfig,
    summary: EmbedSummary,
    started: float,
    *,
    limit: int | None,
    extensions: frozenset[str] | None,
    progress: bool,
    workers: int | None,
    gpus_per_worker: float,
) -> EmbedSummary:
    lister = ray.remote(num_returns="streaming", num_cpus=FETCH_CPUS)(list_part)
    blocks: list[Any] = []
    try:
        for generator in [lister.remote(p, source, pattern, extensions, limit) for p in parts]:
            refs = list(generator)
            counts = ray.get(refs[-1])
            summary.seen += counts["seen"]
            summary.skipped += counts["skipped"]
            if counts["rows"]:
                blocks.extend(refs[:-1])
    except Exception as e:
        _reraise(e)
    if not blocks:  # nothing new: no model loaded, no fetch, no shard
        summary.seconds = time.perf_counter() - started
        return summary
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars
    context.enable_progress_bars = progress
    try:
        ds = ray.data.from_arrow_refs(blocks)
        if limit is not None:
            ds = ds.limit(limit)
        if workers is None:
            gpus = ray.cluster_resources().get("GPU", 0)
            workers = max(1, int(gpus // gpus_per_worker)) if gpus_per_worker else 1
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
        ds = ds.map_batches(
            write_rows,
            batch_size=cfg.rows_per_shard,
            batch_format="pyarrow",
            num_cpus=FETCH_CPUS,
            fn_kwargs={"dst": target, "model": summary.model},
        )
        for row in ds.iter_rows():
            summary.embedded += row["embedded"]
            summary.duplicates += row["duplicates"]
            summary.failed += row["failed"]
    except Exception as e:
        _reraise(e)
    finally:
        context.enable_progress_bars = saved
        summary.seconds = time.perf_counter() - started
    return summary


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
