"""The embedding pipeline: list → skip → fetch → decode → batch → embed → write, all at once.

The stages are plain functions on a plain record (:class:`Item`); this module alone wires them
into a ``torchdata.nodes`` graph, so another engine (Ray Data) can drive the same functions::

    plan (skip done, spot identical bytes) ─ Batcher ─ ParallelMapper(fetch, threads: many
    requests in flight) ─ Unbatcher ─ ParallelMapper(decode + preprocess, threads) ─ Batcher ─
    Prefetcher ─ Loader ─ embed (main thread: the accelerator) ─ ShardWriter

Queues between stages are bounded, so memory does not grow with the bucket.

Example:
    >>> import gcsemb
    >>> summary = gcsemb.embed("gs://my-bucket/photos", "gs://my-bucket/emb")  # doctest: +SKIP
    >>> summary.embedded, summary.images_per_second  # doctest: +SKIP
    (10234, 412.5)
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gcsemb.check import write_probe
from gcsemb.checkpoints import DEFAULT_MODEL, DEFAULT_PRETRAINED, model_tag
from gcsemb.dataset import ShardWriter, done_index, failed_index, is_done
from gcsemb.decode import decode_image
from gcsemb.errors import AuthError, BadURL, GcsembError
from gcsemb.storage import (
    IMAGE_EXTENSIONS,
    ObjectInfo,
    Store,
    cat_many,
    explain,
    list_images,
    open_store,
    protocols,
)

if TYPE_CHECKING:
    from gcsemb.embedder import Embedder

DEDUPE_WINDOW = 20_000  # identical bytes farther apart than this many images are embedded twice
log = logging.getLogger(__name__)
BATCH_SIZE = {"cpu": 32, "cuda": 256}  # default images per forward pass, by device type


def default_batch_size(device_type: str) -> int:
    """Images per forward pass when none is given: 32 on a CPU, 256 on a GPU.

    On a CPU, larger batches spill the caches and run slower per image (ViT-B-32 on 2 cores:
    20.7 images/s at 32, 18.7 at 64); a GPU wants enough images to fill it.
    """
    return BATCH_SIZE.get(device_type, BATCH_SIZE["cpu"])


@dataclass(frozen=True)
class EmbedConfig:
    """How to run: stored with a run and hashable, so settings travel as one value.

    Attributes:
        model: open_clip architecture name or model-config JSON path.
        pretrained: open_clip weights tag, local or gs:// checkpoint (``None``: random weights).
        batch_size: Images per forward pass (``None``: :func:`default_batch_size` of the device).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16``.
        fetch_batch: Objects fetched by one concurrent request group.
        io_workers: Fetch groups in flight at once.
        decode_workers: Threads decoding and preprocessing.
        rows_per_shard: Rows per parquet shard.
        seconds_per_shard: Write a shard at least this often.
    """

    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    batch_size: int | None = None
    device: str = "auto"
    precision: str = "auto"
    fetch_batch: int = 32
    io_workers: int = 4
    decode_workers: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))
    rows_per_shard: int = 5000
    seconds_per_shard: float = 60.0


@dataclass
class Item:
    """One image on its way through the stages."""

    obj: ObjectInfo
    md5: str | None = None
    alias: bool = False  # same bytes as an earlier image: reuse its result, fetch nothing
    data: bytes | None = None
    tensor: Any = None
    width: int = 0
    height: int = 0
    stage: str | None = None
    error: str | None = None
    fatal: GcsembError | None = (
        None  # stops the run (refused credentials), raised in the main thread
    )


@dataclass
class EmbedSummary:
    """What a run did. Printed by the CLI, shown as a table in notebooks."""

    src: str
    dst: str
    model: str = ""
    seen: int = 0
    embedded: int = 0
    skipped: int = 0
    duplicates: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def done(self) -> int:
        """Images with an outcome: embedded, identical to another, failed or done before."""
        return self.embedded + self.duplicates + self.failed + self.skipped

    @property
    def images_per_second(self) -> float:
        """Images embedded (or reused) per second of the run."""
        return (self.embedded + self.duplicates) / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return (
            f"{self.seen} images seen under {self.src}: {self.embedded} embedded, "
            f"{self.skipped} skipped as already done, {self.duplicates} identical to another, "
            f"{self.failed} failed; {self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
            f" -> {self.dst}"
        )

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>"
            for k, v in [
                ("source", self.src),
                ("destination", self.dst),
                ("model", self.model),
                ("seen", self.seen),
                ("embedded", self.embedded),
                ("skipped (done before)", self.skipped),
                ("identical bytes", self.duplicates),
                ("failed", self.failed),
                ("images/s", f"{self.images_per_second:.1f}"),
            ]
        )
        return f"<table>{rows}</table>"


def plan(
    objects: Iterable[ObjectInfo], done: dict[str, Any], summary: EmbedSummary
) -> Iterator[Item]:
    """Drop what ``dst`` already holds; mark identical bytes (same md5) as aliases."""
    recent: OrderedDict[str, None] = OrderedDict()
    for obj in objects:
        summary.seen += 1
        if is_done(obj, done):
            summary.skipped += 1
            continue
        alias = obj.md5 is not None and obj.md5 in recent
        if obj.md5 is not None:
            _remember(recent, obj.md5, None)
        yield Item(obj, md5=obj.md5, alias=alias)


def _remember(lru: OrderedDict[str, Any], key: str, value: Any) -> None:
    """Insert or refresh ``key``; plan and write keep identical LRU states this way."""
    if key in lru:
        lru.move_to_end(key)
        return
    lru[key] = value
    if len(lru) > DEDUPE_WINDOW:
        lru.popitem(last=False)


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def fetch(store: Store, items: list[Item]) -> list[Item]:
    """Download a group of objects concurrently, by exact name; a failure is recorded on its item.

    An object the identity may not read (403: a per-object ACL, a CMEK key it may not use) or
    one gone since the listing becomes a failure row and the run goes on; only credentials that
    Google rejects (401) stop the run.
    """
    todo = [it for it in items if not it.alias]
    results = cat_many(store, [store.fs._strip_protocol(it.obj.uri) for it in todo])
    for it, got in zip(todo, results, strict=True):
        if isinstance(got, BaseException):
            err = explain(got, it.obj.uri, store, "read")
            if isinstance(err, AuthError):
                it.fatal = err
            it.stage, it.error = "fetch", str(err)
            continue
        md5 = _md5(got)
        if it.md5 is not None and md5 != it.md5:
            it.stage, it.error = "fetch", "corrupted download: md5 does not match the listing"
            continue
        it.md5, it.data = md5, got
    return items


def decode(item: Item, embedder: Embedder, min_side: int) -> Item:
    """Decode and preprocess one fetched image (thread-safe); failures are recorded."""
    if item.data is None:
        return item
    decoded = decode_image(item.data, min_side=min_side)
    item.data = None  # free the bytes early
    if not decoded.ok:
        item.stage, item.error = "decode", decoded.error
        return item
    try:
        item.tensor = embedder.preprocess(decoded.image)
    except Exception as e:  # a model transform that cannot take this image
        item.stage, item.error = "preprocess", f"{type(e).__name__}: {e}"
        return item
    item.width, item.height = decoded.width, decoded.height
    return item


def _graph(items: Iterator[Item], src: Store, embedder: Embedder, cfg: EmbedConfig) -> Any:
    from torchdata import nodes

    min_side = embedder.image_size
    node: Any = nodes.IterableWrapper(items)
    node = nodes.Batcher(node, cfg.fetch_batch, drop_last=False)
    node = nodes.ParallelMapper(
        node,
        lambda group: fetch(src, group),
        num_workers=cfg.io_workers,
        method="thread",
        in_order=True,
    )
    node = nodes.Unbatcher(node)
    node = nodes.ParallelMapper(
        node,
        lambda it: decode(it, embedder, min_side),
        num_workers=cfg.decode_workers,
        method="thread",
        in_order=True,
    )
    batch_size = cfg.batch_size or default_batch_size(embedder.device.type)
    node = nodes.Batcher(node, batch_size, drop_last=False)
    node = nodes.Prefetcher(node, prefetch_factor=2)
    return nodes.Loader(node)


def write(
    batch: list[Item],
    embedder: Embedder,
    writer: ShardWriter,
    results: OrderedDict[str, Any],
    summary: EmbedSummary,
) -> None:
    """Embed the ready images of a batch and hand every item's outcome to the writer."""
    import torch

    for it in batch:
        if it.fatal is not None:
            raise it.fatal
    ready = [it for it in batch if it.tensor is not None]
    vectors = iter(
        embedder.embed_tensors(torch.stack([it.tensor for it in ready])) if ready else ()
    )
    for it in batch:
        if it.tensor is not None:
            outcome: tuple[Any, ...] = ("ok", next(vectors).copy(), it.width, it.height)
            summary.embedded += 1
        elif it.alias and it.md5 in results:
            outcome = results[it.md5]
            summary.duplicates += outcome[0] == "ok"
        else:
            outcome = ("error", it.stage or "fetch", it.error or "no result")
        if it.md5 is not None:
            _remember(results, it.md5, outcome)
        if outcome[0] == "ok":
            writer.add(it.obj, it.md5, outcome[2], outcome[3], outcome[1])
        else:
            summary.failed += 1
            writer.add_error(it.obj, it.md5, outcome[1], outcome[2])
        it.tensor = None


def embed(
    src: str | Store,
    dst: str | Store,
    *,
    model: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    token: Any = None,
    project: str | None = None,
    requester_pays: bool | str = False,
    endpoint: str | None = None,
    limit: int | None = None,
    extensions: frozenset[str] | None = IMAGE_EXTENSIONS,
    progress: bool = True,
    config: EmbedConfig | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0,
    **overrides: Any,
) -> EmbedSummary:
    """Embed every image under ``src`` into a parquet dataset at ``dst``.

    Safe to stop and run again: a re-run embeds only new or changed images (decided from the
    listing's md5, without downloading the others), and a run killed at any point leaves only
    whole shards, so the next run ends with exactly one row per image.

    Args:
        src: ``gs://bucket/prefix``, a glob, a local folder, or any fsspec URL (or a
            :class:`~gcsemb.storage.Store`).
        dst: Destination folder (``gs://`` or local, or a Store); when a URL, it is reached
            with ``src``'s access.
        model: open_clip architecture name or model-config JSON path.
        pretrained: Weights tag, local or gs:// checkpoint; ``None`` for random weights.
        token: Credentials for ``src``, ``dst`` and a gs:// checkpoint (see :mod:`gcsemb.auth`).
        project: Google Cloud project (requester-pays billing).
        requester_pays: Bill reads to ``project``.
        endpoint: Another GCS endpoint, e.g. an emulator (see :func:`gcsemb.open_store`).
        limit: Consider only the first N images of the listing.
        extensions: File endings counted as images.
        progress: Show a progress bar (tqdm.auto: a widget in notebooks).
        config: Pipeline settings (:class:`EmbedConfig`).
        engine: ``"local"`` (this machine) or ``"ray"`` (a Ray cluster, :mod:`gcsemb.ray_engine`;
            needs ``pip install 'gcsemb[ray]'``).
        address: Ray only: the cluster (``auto``, ``ray://host:10001``, ``vertex_ray://...``).
        workers: Ray only: embedding actors (default: one per ``gpus_per_worker`` GPUs).
        gpus_per_worker: Ray only: GPUs per embedding actor (0: embed on CPU).
        **overrides: Single fields of the config to replace, e.g. ``batch_size=32``.

    Returns:
        What the run did (seen, embedded, skipped, duplicates, failed, images/s).

    Raises:
        AccessDenied: The identity may not list ``src`` or write ``dst``: the run stops at once
            (one image it may not read is recorded as a failure instead).
        AuthError: No credentials, or Google rejects them.

    Example:
        >>> summary = embed("gs://my-bucket/photos", "gs://my-bucket/emb")  # doctest: +SKIP
        >>> print(summary)  # doctest: +SKIP
        306 images seen under gs://my-bucket/photos: 306 embedded, 0 skipped ...
    """
    from dataclasses import replace

    from tqdm.auto import tqdm

    cfg = replace(config or EmbedConfig(model=model, pretrained=pretrained), **overrides)
    if engine == "ray":
        from gcsemb.ray_engine import embed_ray  # only here: the local engine never imports ray

        return embed_ray(
            src,
            dst,
            config=cfg,
            token=token,
            project=project,
            requester_pays=requester_pays,
            endpoint=endpoint,
            limit=limit,
            extensions=extensions,
            progress=progress,
            address=address,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
        )
    if engine != "local":
        raise ValueError(f"engine={engine!r}: use 'local' or 'ray'.")
    started = time.perf_counter()
    src_store, dst_store = open_stores(
        src, dst, token=token, project=project, requester_pays=requester_pays, endpoint=endpoint
    )
    summary = EmbedSummary(src_store.url, dst_store.url)
    summary.model = model_tag(cfg.model, cfg.pretrained, token=src_store)
    listing = list_images(src_store, extensions=extensions, limit=limit)
    objects = _Prefetched(listing)  # the source is listed while DST's index is read
    try:
        with ThreadPoolExecutor(2) as pool:
            failed = pool.submit(failed_index, dst_store, summary.model)
            done = done_index(dst_store, summary.model)
            done.update(failed.result())
    except Exception as e:
        objects.close()
        raise explain(e, dst_store.url, dst_store, "index") from e
    items = plan(objects, done, summary)
    first = next(items, None)
    if first is None:  # nothing new: no model loaded, no fetch, no shard
        summary.seconds = time.perf_counter() - started
        return summary
    check_writable(dst_store)  # before any model is loaded or any image fetched
    from gcsemb.embedder import load_embedder

    embedder = load_embedder(
        cfg.model, cfg.pretrained, device=cfg.device, precision=cfg.precision, token=src_store
    )
    writer = ShardWriter(
        dst_store,
        embedder.name,
        embedder.dim,
        rows_per_shard=cfg.rows_per_shard,
        seconds_per_shard=cfg.seconds_per_shard,
    )
    results: OrderedDict[str, Any] = OrderedDict()
    # no total until the listing ends (it runs alongside); then a percentage and a time left
    bar = tqdm(desc="embedding", unit="img", disable=not progress, dynamic_ncols=True)
    tuner = ThreadTuner(enabled=embedder.device.type == "cpu")
    try:
        for batch in _graph(_chain(first, items), src_store, embedder, cfg):
            busy = time.perf_counter()
            write(batch, embedder, writer, results, summary)
            tuner.step(time.perf_counter() - busy)
            if bar.total is None and objects.count is not None:  # the listing is complete
                bar.total = objects.count
            bar.update(summary.done - bar.n)
            bar.set_postfix(failed=summary.failed, skipped=summary.skipped, refresh=False)
        bar.update(summary.done - bar.n)  # skipped after the last batch of the listing
        bar.total = bar.n  # 100% even if the last batch came before the listing's end was seen
    finally:
        tuner.restore()
        objects.close()
        bar.close()
        writer.flush()  # keep what is done, even on Ctrl-C
        summary.seconds = time.perf_counter() - started
    return summary


def open_stores(
    src: str | Store,
    dst: str | Store,
    *,
    token: Any = None,
    project: str | None = None,
    requester_pays: bool | str = False,
    endpoint: str | None = None,
) -> tuple[Store, Store]:
    """The handles of a run: ``dst`` is reached with ``src``'s access (credentials resolved once).

    Raises:
        BadURL: ``dst`` lies inside ``src`` (its shards would be listed as images).
    """
    src_store = open_store(
        src, token=token, project=project, requester_pays=requester_pays, endpoint=endpoint
    )
    dst_store = open_store(dst, token=src_store)
    src_uri = src_store.uri(src_store.path).rstrip("/")
    dst_uri = dst_store.uri(dst_store.path).rstrip("/")
    inside = dst_uri == src_uri or dst_uri.startswith(src_uri + "/")
    if inside and not any(c in src_uri for c in "*["):
        raise BadURL(
            f"The destination {dst_store.url} is inside the source {src_store.url}: choose a "
            "folder outside it, e.g. a sibling like gs://bucket/embeddings."
        )
    return src_store, dst_store


def check_writable(dst: Store) -> None:
    """Write (and delete) a probe object in ``dst``, or stop the run with the fix.

    Raises:
        AccessDenied: The identity may not write there; the message names the role it needs.
    """
    try:
        if "file" in protocols(dst.fs):
            dst.fs.makedirs(dst.path, exist_ok=True)
        note = write_probe(dst)
    except Exception as e:
        raise explain(e, dst.url, dst, "write") from e
    if note:
        log.warning("write check: %s", note)


class ThreadTuner:
    """On a CPU, give torch every core only when the model needs them.

    The model runs in the main thread while decode threads share the same cores, and torch's
    idle threads spin: a model that is not the bottleneck still starves the decoders if it has
    every core. The tuner watches the main thread. While it never has to wait for a batch, the
    model is the bottleneck and keeps all its threads. Once it waits, the input side is behind:
    the tuner gives torch one thread and measures, over ``trial`` batches, the share of wall
    time the main thread is then busy. At most ``target`` (the model keeps up with one thread)
    it stays at one thread, leaving the other cores to decoding; above, all threads come back.
    Measured with one thread, the share is not inflated by spinning threads fighting the
    decoders for cores. Only the trial batches of a model that needs every core run slower.

    Example:
        >>> tuner = ThreadTuner(enabled=True)  # doctest: +SKIP
        >>> for batch in batches:  # doctest: +SKIP
        ...     busy = time.perf_counter(); embed(batch); tuner.step(time.perf_counter() - busy)
        >>> tuner.threads  # doctest: +SKIP
        1
    """

    def __init__(
        self,
        enabled: bool,
        trial: int = 4,
        patience: int = 12,
        target: float = 0.8,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        import torch

        self._torch, self._clock = torch, clock
        self.original = self.threads = torch.get_num_threads()
        self.settled = not enabled or self.original == 1
        self.trial, self.patience, self.target = trial, patience, target
        self.seen, self.window, self.busy, self.wall = 0, -1, 0.0, 0.0
        self._last = clock()

    def step(self, busy: float) -> None:
        """Account a batch that kept the main thread busy ``busy`` seconds since the last call."""
        now = self._clock()
        wall, self._last = now - self._last, now
        if self.settled:
            return
        self.seen += 1
        if self.window < 0:  # watching, with every thread
            if self.seen > 1 and _waited(wall - busy, busy):  # (the first batch had to wait)
                self.window = 0
                self._set(1)
            elif self.seen > self.patience:  # never waited: the model is the bottleneck
                self._settle(1.0)
            return
        self.window += 1
        self.busy, self.wall = self.busy + busy, self.wall + wall
        if self.window == self.trial:
            self._settle(self.busy / self.wall)

    def _set(self, threads: int) -> None:
        self.threads = threads
        self._torch.set_num_threads(threads)

    def _settle(self, share: float) -> None:
        self._set(1 if share <= self.target else self.original)
        self.settled = True
        log.debug("main thread busy %.0f%%: %d torch threads", share * 100, self.threads)

    def restore(self) -> None:
        """Give the process its thread count back."""
        self._torch.set_num_threads(self.original)


class _Prefetched:
    """An iterator run in a background thread, ``size`` items ahead; errors surface in order.

    ``count`` is how many items there are in all, once the producer has seen the last one.
    """

    _END = object()

    def __init__(self, iterator: Iterator[Any], size: int = 2000) -> None:
        import queue
        import threading

        self._queue: queue.Queue[Any] = queue.Queue(size)
        self._full = queue.Full
        self._stop = threading.Event()
        self.count: int | None = None
        threading.Thread(target=self._produce, args=(iterator,), daemon=True).start()

    def _produce(self, iterator: Iterator[Any]) -> None:
        try:
            produced = 0
            for item in iterator:
                if not self._put(item):
                    return
                produced += 1
            self.count = produced
            self._put(self._END)
        except BaseException as e:  # handed to the consumer
            self._put(e)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except self._full:
                continue
        return False

    def __iter__(self) -> _Prefetched:
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is self._END:
            self._queue.put(item)  # later calls end too
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the producer thread (the run ended early)."""
        self._stop.set()


def _waited(wait: float, busy: float) -> bool:
    """Whether the main thread waited for a batch long enough to say the input is behind.

    Over 2 ms and a tenth of the batch's own work: a hiccup in a slow model's stream is not.
    """
    return wait >= 0.002 + 0.1 * busy


def _chain(first: Item, rest: Iterator[Item]) -> Iterator[Item]:
    yield first
    yield from rest
