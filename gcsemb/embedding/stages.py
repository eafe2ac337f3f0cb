"""The stages of a run, as plain functions on a plain record: plan, fetch, decode, outcome.

Any engine can drive them: the local torchdata graph (:mod:`gcsemb.embedding.graph`) and the Ray
Data engine (:mod:`gcsemb.embedding.ray_engine`) both do. An :class:`Item` carries one image through
the stages; each stage fills in its part and records a :class:`Failure` instead of raising, so one
bad image never ends a run. Identical bytes (the same md5) are fetched and embedded once:
:func:`plan` links a later twin to the first item with those bytes, and the twin takes that item's
outcome.

Example:
    >>> items = list(plan(objects, done={}, counts=Counts()))  # doctest: +SKIP
    >>> fetch(src_store, items[:32])  # doctest: +SKIP
    >>> decode(items[0], embedder.preprocess, embedder.image_size)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gcsemb.errors import AuthError, GcsembError
from gcsemb.explore.dataset import is_done
from gcsemb.images.decode import PixelBudget, decode_image, decoder_versions
from gcsemb.storage import ObjectInfo, Store, explain

DEDUPE_WINDOW = 20_000  # identical bytes farther apart than this many images are embedded twice


@dataclass(frozen=True)
class Failure:
    """Why an image has no embedding.

    Attributes:
        stage: ``plan`` (too large to fetch), ``fetch``, ``decode`` or ``preprocess``.
        error: The reason, in words.
        environmental: The cause is this machine or a moment (a decoder missing, out of memory,
            a fetch error), not the bytes: the next run tries again.
        decoders: For decode failures, the decoder versions that failed (JSON).
    """

    stage: str
    error: str
    environmental: bool = False
    decoders: str | None = None


@dataclass(frozen=True)
class Embedded:
    """An image's embedding and its full size (after EXIF orientation)."""

    vector: Any
    width: int
    height: int


Outcome = Embedded | Failure


@dataclass
class Item:
    """One image on its way through the stages.

    Attributes:
        obj: What the listing said about it.
        md5: Its bytes' md5 (from the listing, else computed once fetched).
        twin: An earlier item with the same bytes: this one fetches nothing and takes its outcome.
        data: The fetched bytes, until decoded.
        held: Bytes of the fetch budget this item holds until its bytes are decoded.
        tensor: The preprocessed image (a CHW tensor), until embedded.
        width: Full width after EXIF orientation.
        height: Full height after EXIF orientation.
        failure: Why it has no embedding, once a stage failed.
        fatal: An error that ends the run (credentials refused), raised in the main thread.
        outcome: The final outcome, once written.
    """

    obj: ObjectInfo
    md5: str | None = None
    twin: Item | None = None
    data: bytes | None = None
    held: int = 0
    tensor: Any = None
    width: int = 0
    height: int = 0
    failure: Failure | None = None
    fatal: GcsembError | None = None
    outcome: Outcome | None = None


@dataclass
class Counts:
    """What planning saw: images listed and images DST already holds."""

    seen: int = 0
    skipped: int = 0
    to_fetch_bytes: int = 0


def plan(
    objects: Iterable[ObjectInfo],
    done: dict[str, Any],
    counts: Counts,
    max_object_bytes: int | None = None,
    window: int = DEDUPE_WINDOW,
) -> Iterator[Item]:
    """Drop what DST already holds, refuse what is too large, link identical bytes.

    Args:
        objects: The listing.
        done: :func:`gcsemb.explore.dataset.done_index` merged with the failures not to try again.
        counts: Updated as objects go by.
        max_object_bytes: Objects larger than this (per the listing) become a ``too large``
            failure without any download.
        window: Identical bytes are recognised among this many recent images.
    """
    recent: OrderedDict[str, Item] = OrderedDict()
    for obj in objects:
        counts.seen += 1
        if is_done(obj, done):
            counts.skipped += 1
            continue
        item = Item(obj, md5=obj.md5)
        if max_object_bytes is not None and obj.size > max_object_bytes:
            item.failure = Failure(
                "plan",
                f"too large: {obj.size / 2**20:.0f} MiB exceeds the "
                f"{max_object_bytes / 2**20:.0f} MiB limit (max_object_bytes); not downloaded",
            )
        elif obj.md5 is not None:
            item.twin = recent.get(obj.md5)
            recent[obj.md5] = item.twin or item
            recent.move_to_end(obj.md5)
            if len(recent) > window:
                recent.popitem(last=False)
        if item.twin is None and item.failure is None:
            counts.to_fetch_bytes += obj.size
        yield item


GROUP_BYTES = 32 << 20
"""A fetch group holds at most this many bytes (and ``fetch_batch`` objects): groups of large
photos stay small, so the first images reach the decoders early and memory stays even."""


def fetch_groups(
    items: Iterable[Item], size: int, max_bytes: int = GROUP_BYTES
) -> Iterator[list[Item]]:
    """Items in groups of at most ``size`` objects and ``max_bytes`` bytes (one may be bigger).

    The first groups hold 1, 2, 4, ... objects: decoding starts once the first object is in,
    not a whole group of photos later (32 MiB at a time would keep the decoders idle for the
    first 0.1-0.2 s of every run).

    Example:
        >>> objects = [ObjectInfo(f"gs://b/{i}.jpg", size=10) for i in range(40)]
        >>> [len(group) for group in fetch_groups(map(Item, objects), 8)]
        [1, 2, 4, 8, 8, 8, 8, 1]
    """
    group: list[Item] = []
    nbytes, limit = 0, 1
    for it in items:
        if group and (len(group) >= limit or nbytes + it.obj.size > max_bytes):
            yield group
            group, nbytes, limit = [], 0, min(size, limit * 2)
        group.append(it)
        nbytes += it.obj.size if it.twin is None and it.failure is None else 0
    if group:
        yield group


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _intact(data: bytes, obj: ObjectInfo) -> bool:
    """Whether the bytes match the listing's checksum (objects listed with none pass).

    CRC32C where listed (in hardware: 0.3 ms for a 12 MP photo), else MD5 (5 ms).
    """
    if obj.crc32c:
        try:
            import google_crc32c
        except ImportError:  # a dependency of gcsfs's google-cloud-storage, normally present
            google_crc32c = None
        if google_crc32c is not None:
            crc = google_crc32c.value(data).to_bytes(4, "big")
            return base64.b64encode(crc).decode() == obj.crc32c
    return obj.md5 is None or _md5(data) == obj.md5


def fetch(store: Store, items: list[Item], budget: PixelBudget | None = None) -> list[Item]:
    """Download a group of objects concurrently, by exact name; a failure is recorded on its item.

    An object the identity may not read (403: a per-object ACL, a CMEK key it may not use) or
    one gone since the listing becomes a failure and the run goes on; only credentials that
    Google rejects (401) stop the run. With a ``budget``, the group's bytes are taken from it
    before downloading (each item holds its part until :func:`decode` frees it). No object is
    read beyond its listed size: one that grew since it was listed fails (the next run retries).
    """
    todo = [it for it in items if it.twin is None and it.failure is None]
    if budget is not None and todo:
        budget.acquire(sum(it.obj.size for it in todo))
        for it in todo:
            it.held = it.obj.size
    paths = [store.fs._strip_protocol(it.obj.uri) for it in todo]
    results = store.read_many(paths, [it.obj.size for it in todo])  # no more than listed
    for it, got in zip(todo, results, strict=True):
        if isinstance(got, BaseException):
            err = explain(got, it.obj.uri, store, "read")
            if isinstance(err, AuthError):
                it.fatal = err
            it.failure = Failure("fetch", str(err), environmental=True)
            continue
        if not _intact(got, it.obj):
            it.failure = Failure(
                "fetch", "corrupted download: the checksum does not match the listing", True
            )
            continue
        it.md5 = it.md5 or _md5(got)  # local files and composite objects have none listed
        it.data = got
    for it in todo:
        if it.data is None:  # failed: nothing will be decoded, give its bytes back now
            release(it, budget)
    return items


def release(item: Item, budget: PixelBudget | None) -> None:
    """Give back the fetch budget an item holds (its bytes are gone)."""
    if budget is not None and item.held:
        budget.release(item.held)
    item.held = 0


def decode(
    item: Item,
    preprocess: Callable[[Any], Any],
    min_side: int,
    pixels: PixelBudget | None = None,
    fetched: PixelBudget | None = None,
) -> Item:
    """Decode and preprocess one fetched image (thread-safe); failures are recorded.

    Args:
        item: The item, with its bytes.
        preprocess: The model's transform (PIL image -> tensor or array).
        min_side: The shorter side the model needs: JPEGs decode at a reduced size down to it.
        pixels: The budget of decoded pixels in flight (see
            :class:`gcsemb.images.decode.PixelBudget`).
        fetched: The fetch budget, given back once the bytes are decoded.
    """
    if item.data is None:
        release(item, fetched)
        return item
    decoded = decode_image(item.data, min_side=min_side, name=item.obj.uri, budget=pixels)
    item.data = None  # free the bytes early
    release(item, fetched)
    if not decoded.ok:
        versions = json.dumps(decoder_versions(), sort_keys=True)
        item.failure = Failure("decode", decoded.error or "", decoded.environmental, versions)
        return item
    try:
        item.tensor = preprocess(decoded.image)
    except Exception as e:  # a model transform that cannot take this image
        item.failure = Failure("preprocess", f"{type(e).__name__}: {e}")
        return item
    item.width, item.height = decoded.width, decoded.height
    return item


JPEG_MAGIC = b"\xff\xd8\xff"


def defer_jpeg(item: Item) -> bool:
    """Whether an item's bytes are a JPEG, left for :func:`decode_on_device` (GPU decode)."""
    return item.data is not None and item.data[:3] == JPEG_MAGIC


def decode_on_device(
    batch: list[Item],
    preprocess_cfg: Any,
    device: Any,
    *,
    min_side: int,
    cpu_preprocess: Callable[[Any], Any],
    fetched: PixelBudget | None = None,
) -> int:
    """Decode a batch's deferred JPEGs together on ``device`` (nvJPEG on CUDA); return how many.

    Images the tensor path refuses (CMYK, 12-bit, truncated, anything its decoder raises on) are
    decoded one at a time by the CPU path (:func:`decode`), so one odd file never fails a batch.
    """
    from gcsemb.images.tensor_decode import decode_batch

    todo = [it for it in batch if it.data is not None and it.failure is None]
    if not todo:
        return 0
    out = decode_batch([it.data for it in todo], preprocess_cfg, device)
    for row, (index, size) in enumerate(zip(out.indices, out.sizes, strict=True)):
        it = todo[index]
        it.tensor, (it.width, it.height), it.data = out.pixels[row], size, None
        release(it, fetched)
    for index in out.fallback:
        decode(todo[index], cpu_preprocess, min_side, fetched=fetched)
    return len(todo)


def outcomes(batch: list[Item], embed: Callable[[list[Any]], Any]) -> list[Outcome]:
    """Embed the ready images of a batch; every item gets its outcome (twins their twin's).

    Args:
        batch: Items in listing order (a twin always comes after the item it copies).
        embed: Embeds a list of preprocessed tensors, returning one vector per tensor.

    Raises:
        GcsembError: An item carries a fatal error (credentials refused).
    """
    for it in batch:
        if it.fatal is not None:
            raise it.fatal
    ready = [it for it in batch if it.tensor is not None]
    vectors = iter(embed([it.tensor for it in ready]) if ready else ())
    out: list[Outcome] = []
    for it in batch:
        if it.tensor is not None:
            it.outcome = Embedded(next(vectors).copy(), it.width, it.height)
        elif it.twin is not None and it.twin.outcome is not None:
            it.md5 = it.twin.md5
            it.outcome = it.twin.outcome
        else:
            it.outcome = it.failure or Failure("fetch", "no result")
        it.tensor = None
        out.append(it.outcome)
    return out
