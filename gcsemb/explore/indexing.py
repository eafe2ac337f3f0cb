"""Building and updating the neighbour index of a dataset (``DST/_index/<model-tag>/``).

:func:`build_index` indexes every shard the first time and, later, only the shards written since:
a segment of their own on the same centroids, merged with the other small ones when there are
more than :data:`MAX_SEGMENTS`. Shards are streamed a segment at a time (:func:`segment_rows`),
so memory stays bounded whatever the dataset's size. The layout and how an index is opened and
checked are in :mod:`gcsemb.explore.index`.

Example:
    >>> index = build_index("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> index  # doctest: +SKIP
    Index('gs://my-bucket/embeddings', ViT-B-32/laion2b_s34b_b79k: 1,000,000 rows, 200 shards)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from gcsemb.explore import ivf
from gcsemb.explore.index import (
    ARRAYS,
    FORMAT,
    Index,
    changes,
    index_url,
    load_index,
    open_index,
    row_keys,
    saved_segments,
    shard_listing,
)
from gcsemb.storage import Store, open_store

log = logging.getLogger(__name__)

MAX_SEGMENTS = 4
"""Small segments (an update's new shards) in a row before they are merged into one."""
SEGMENT_BYTES = 1 << 30
"""Vectors per segment, in bytes of float32: a build holds one segment (twice) in memory."""
SAMPLE_PER_LIST = 40
"""Rows per list the k-means of a new index learns from."""


def build_index(
    dst: str | Store,
    *,
    model_tag: str | None = None,
    rebuild: bool = False,
    progress: bool = True,
    token: Any = None,
) -> Index:
    """Build or update the neighbour index of ``dst`` (``DST/_index/<model-tag>/``).

    The first call indexes every shard; later calls index only the shards written since (a
    segment of their own) and merge segments when there are more than :data:`MAX_SEGMENTS`.
    A shard changed or removed since the index was built makes it rebuild.

    Args:
        dst: The dataset (a URL or a :class:`~gcsemb.storage.Store`).
        model_tag: The model whose rows to index; required when the dataset holds several.
        rebuild: Build anew even if the index is up to date (e.g. after the dataset grew
            tenfold: new centroids fit the new rows better).
        progress: Show progress bars.
        token: Credentials for ``gs://``.

    Returns:
        The opened, up-to-date :class:`Index`.

    Example:
        >>> build_index("gs://my-bucket/embeddings")  # doctest: +SKIP
        Index('gs://my-bucket/embeddings/_index/ViT-B-32_laion2b_s34b_b79k', ...)
    """
    from gcsemb.explore.dataset import parquet_files
    from gcsemb.explore.shards import plan

    store = open_store(dst, token=token)
    files = parquet_files(store)
    model_tag = model_tag or plan(store, None, files).model_tag
    listing = shard_listing(store, files)
    index = None if rebuild else open_index(store, model_tag, fresh=False)
    state, new = changes(index, listing) if index is not None else ("stale", [])
    if state == "same":
        return index
    started = time.perf_counter()
    if state == "stale":
        index = None
        new = sorted(listing)
    by_name = {os.path.basename(f): f for f in files}
    added = _add_segment(
        store, model_tag, index, [by_name[n] for n in new], listing, progress=progress
    )
    log.info("indexed %d shards in %.1f s", len(new), time.perf_counter() - started)
    return added


def _add_segment(
    store: Store,
    model_tag: str,
    index: Index | None,
    files: list[str],
    listing: dict[str, dict[str, Any]],
    *,
    progress: bool,
) -> Index:
    """Index ``files`` as new segments (on new centroids when ``index`` is None); save; open.

    The shards are streamed in groups of :func:`segment_rows` rows, each saved as a segment
    before the next is read: memory stays bounded whatever the dataset's size. The manifest is
    written last: until then the old index stays whole.
    """
    from gcsemb.explore.shards import plan

    path = store.fs._strip_protocol(index_url(store, model_tag))
    try:
        read = plan(store, model_tag, files)
    except FileNotFoundError:  # no readable shard among them
        read = None
    if index is None and (read is None or not len(read.df)):
        raise FileNotFoundError(f"No rows of {model_tag} under {store.url} to index.")
    manifest = dict(index.manifest) if index else {"format": FORMAT, "model": model_tag}
    old = set(saved_segments(store, model_tag))  # a rebuild's too: removed once replaced
    parts: list[_Part] = [_Part(n, s, k) for n, s, k in _parts(index)]
    rows: dict[str, int] = {}
    if read is not None and len(read.df):
        if index is None:
            nlist = ivf.nlist_for(len(read.df))
            centroids = ivf.kmeans(_sample(read, SAMPLE_PER_LIST * nlist), nlist)
            _save_array(store, f"{path}/centroids.npy", centroids)
        else:
            centroids = np.asarray(index.segments[0].centroids)
        base = len(index.keys) if index else 0
        for x, keys in _groups(read, progress):
            segment = ivf.build(x, centroids, base + np.arange(len(x)))
            base += len(x)
            del x
            _append(store, path, parts, _Part(_segment_name(), segment, keys))
        rows = {os.path.basename(f): len(r) for f, r in zip(read.files, read.rows, strict=True)}
    covered = [
        {"name": n, **listing[n], "rows": rows.get(n, 0)} for n in map(os.path.basename, files)
    ]
    manifest["shards"] = [*(manifest.get("shards") or []), *covered]
    manifest["segments"] = [p.name for p in parts]
    store.write(f"{path}/manifest.json", json.dumps(manifest, indent=1).encode())
    for name in old - set(manifest["segments"]):
        try:
            store.fs.rm(f"{path}/{name}", recursive=True)
        except OSError as e:  # a leftover folder costs space, not correctness
            log.debug("cannot remove %s: %s", name, e)
    return load_index(store, model_tag)


@dataclass
class _Part:
    """A segment being written: its name, its arrays (dropped once saved whole) and keys."""

    name: str
    segment: ivf.IVF | None
    keys: np.ndarray | None

    @property
    def small(self) -> bool:
        """Whether it may still be merged with the segments after it."""
        seg = self.segment
        return seg is not None and len(seg) < segment_rows(seg.dim) // 2


def segment_rows(dim: int) -> int:
    """Rows per segment: :data:`SEGMENT_BYTES` of float32 vectors (524,288 at 512-d)."""
    return max(SEGMENT_BYTES // (4 * max(dim, 1)), 1)


def _append(store: Store, path: str, parts: list[_Part], new: _Part) -> None:
    """Save ``new`` as a segment, merged with the small ones before it when they are many.

    Only a trailing run of small segments (an update's few new shards each) is merged, so a
    merge never holds more than about ``MAX_SEGMENTS / 2`` segments' worth of rows.
    """
    tail = 0
    while tail < len(parts) and parts[-1 - tail].small:
        tail += 1
    if new.small and tail >= MAX_SEGMENTS:
        merged = parts[-tail:] + [new]
        keys = np.concatenate([p.keys for p in merged])
        new = _Part(new.name, ivf.merge([p.segment for p in merged]), keys)
        del parts[-tail:]
    for a in ARRAYS:
        array = new.keys if a == "keys" else getattr(new.segment, a)
        _save_array(store, f"{path}/{new.name}/{a}.npy", array)
    parts.append(new if new.small else _Part(new.name, None, None))


def _groups(read: Any, progress: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(matrix, row keys)`` of consecutive shards, :func:`segment_rows` rows at most each."""
    from gcsemb.explore.shards import iter_shards

    buffer: np.ndarray | None = None
    keys: list[np.ndarray] = []
    at = 0
    shards = iter_shards(read)
    if progress:
        from tqdm.auto import tqdm

        shards = tqdm(shards, total=len(read.files), desc="indexing shards", unit="shard")
    for rows, x in shards:
        if buffer is None:
            size = min(segment_rows(x.shape[1]), len(read.df))
            buffer = np.empty((size, x.shape[1]), np.float32)
        if at and at + len(x) > len(buffer):
            yield buffer[:at], np.concatenate(keys)
            keys, at = [], 0
        if len(x) > len(buffer):  # one shard larger than a segment: a segment of its own
            yield x, row_keys(rows)
            continue
        buffer[at : at + len(x)] = x
        keys.append(row_keys(rows))
        at += len(x)
    if at:
        yield buffer[:at], np.concatenate(keys)


def _sample(read: Any, size: int, seed: int = 0) -> np.ndarray:
    """``size`` random rows of the plan's embeddings (all when fewer), read shard by shard."""
    from gcsemb.explore.shards import iter_shards

    n = len(read.df)
    pick = np.sort(np.random.default_rng(seed).choice(n, min(n, size), replace=False))
    parts = []
    for rows, x in iter_shards(read):
        start = int(rows.index[0])  # the plan's rows are numbered 0..n-1
        lo, hi = np.searchsorted(pick, [start, start + len(x)])
        parts.append(x[pick[lo:hi] - start])
    return np.concatenate(parts)


def _segment_name() -> str:
    return f"seg-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.urandom(3).hex()}"


def _parts(index: Index | None) -> list[tuple[str, ivf.IVF, np.ndarray]]:
    """``(name, segment, keys)`` of each segment of ``index``."""
    if index is None:
        return []
    bounds = np.cumsum([0, *(len(s) for s in index.segments)])
    names = index.manifest["segments"]
    return [
        (name, seg, index.keys[bounds[i] : bounds[i + 1]])
        for i, (name, seg) in enumerate(zip(names, index.segments, strict=True))
    ]


def _save_array(store: Store, path: str, array: np.ndarray) -> None:
    """``np.save`` straight into the store's file (streamed: no copy of a large array)."""
    with store.output(path) as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
