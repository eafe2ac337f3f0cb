"""The neighbour index kept next to a dataset: ``DST/_index/<model-tag>/``.

An :mod:`IVF <gcsemb.explore.ivf>` index of one model's embeddings, in plain ``.npy`` files::

    DST/_index/<model-tag>/manifest.json       the shards covered (name, size, version, rows)
    DST/_index/<model-tag>/centroids.npy       the lists' centroids
    DST/_index/<model-tag>/<segment>/{offsets,ids,vectors,second,keys}.npy

:func:`build_index` (``gcsemb index DST``) indexes what is new: the first call every shard, later
calls only the shards written since, as a segment of their own on the same centroids. A shard
changed or removed under the index makes it stale: it is rebuilt. Index files are only ever read
with ``np.load(allow_pickle=False)`` (memory-mapped; from a cached local copy for ``gs://``), and
their shapes checked, so a file crafted by someone else is rebuilt over, never unpickled or
trusted. The rows of an index map to the rows of :func:`gcsemb.read_embeddings` through a hash of
each row's ``uri`` and ``updated`` (an older version of an image, superseded by a later shard,
maps to nothing).

Example:
    >>> index = build_index("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> index  # doctest: +SKIP
    Index('gs://my-bucket/embeddings', ViT-B-32/laion2b_s34b_b79k: 1,000,000 rows, 200 shards)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gcsemb.explore import ivf
from gcsemb.storage import Store, open_store

log = logging.getLogger(__name__)

INDEX_DIR = "_index"
FORMAT = 1
ARRAYS = ("offsets", "ids", "vectors", "second", "keys")
MAX_SEGMENTS = 4
"""Small segments (an update's new shards) in a row before they are merged into one."""
SEGMENT_BYTES = 1 << 30
"""Vectors per segment, in bytes of float32: a build holds one segment (twice) in memory."""
SAMPLE_PER_LIST = 40
"""Rows per list the k-means of a new index learns from."""


def index_url(store: Store, model_tag: str) -> str:
    """The folder of ``model_tag``'s index under the dataset.

    Example:
        >>> index_url(open_store("/data/emb"), "ViT-B-32/laion2b_s34b_b79k")
        '/data/emb/_index/ViT-B-32_laion2b_s34b_b79k'
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_tag).strip("._") or "model"
    return f"{store.url.rstrip('/')}/{INDEX_DIR}/{safe}"


def row_keys(df: Any) -> np.ndarray:
    """A uint64 key per row from its ``uri`` and ``updated``: one image version, one key."""
    import pandas as pd

    keys = pd.util.hash_array(df["uri"].to_numpy(object), categorize=False)
    if "updated" in df:
        when = df["updated"]
        if getattr(when.dtype, "tz", None) is not None:
            when = when.dt.tz_convert("UTC").dt.tz_localize(None)
        micros = when.to_numpy().astype("datetime64[us]").view(np.int64).astype(np.uint64)
        keys = keys ^ (micros * np.uint64(0x9E3779B97F4A7C15))
    return keys


@dataclass
class Index:
    """An opened index: its segments (memory-mapped) and the key of every indexed row.

    Attributes:
        store: The dataset.
        url: Where it lives (``DST/_index/<tag>``).
        model_tag: The model of its rows.
        manifest: The covered shards and the segments.
        segments: One :class:`~gcsemb.explore.ivf.IVF` per segment (ids global over all segments).
        keys: The :func:`row_keys` of row id ``i`` at ``keys[i]``.
    """

    store: Store = field(repr=False)
    url: str
    model_tag: str
    manifest: dict[str, Any] = field(repr=False)
    segments: list[ivf.IVF] = field(repr=False)
    keys: np.ndarray = field(repr=False)

    def __repr__(self) -> str:
        shards = len(self.manifest["shards"])
        return f"Index({self.url!r}, {self.model_tag}: {len(self.keys):,} rows, {shards} shards)"

    def search(
        self, queries: np.ndarray, k: int, nprobe: int = 16
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best ``(ids, scores)`` per query over every segment."""
        found = [s.search(queries, k, nprobe) for s in self.segments]
        ids = np.concatenate([f[0] for f in found], axis=1)
        scores = np.concatenate([f[1] for f in found], axis=1)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(ids, best, 1), np.take_along_axis(scores, best, 1)

    def candidates(self, query: np.ndarray, nprobe: int = 16) -> np.ndarray:
        """The row ids in the ``nprobe`` lists nearest to ``query``, over every segment."""
        if not self.segments:
            return np.zeros(0, np.int64)
        lists = self.segments[0].probes(query, nprobe)  # the segments share their centroids
        return np.concatenate([s.ids_in(lists) for s in self.segments])

    def rows_of(self, df: Any) -> np.ndarray:
        """For each row id, the row of ``df`` holding that image version, or -1."""
        want = row_keys(df)
        order = np.argsort(want, kind="stable")
        at = np.searchsorted(want[order], self.keys)
        at = np.minimum(at, max(len(want) - 1, 0))
        hit = want[order][at] == self.keys if len(want) else np.zeros(len(self.keys), bool)
        return np.where(hit, order[at], -1)


def _listing(store: Store, files: list[str]) -> dict[str, dict[str, Any]]:
    """``name -> {size, version}`` of the shards (generation on GCS, else modification time)."""
    wanted = {os.path.basename(f) for f in files}
    out = {}
    for info in store.fs.ls(store.path.rstrip("/"), detail=True, refresh=True):
        name = os.path.basename(info["name"].rstrip("/"))
        if name in wanted:
            version = info.get("generation") or info.get("mtime") or info.get("updated") or ""
            out[name] = {"size": int(info.get("size") or 0), "version": str(version)}
    return out


def open_index(
    dst: str | Store, model_tag: str, *, token: Any = None, fresh: bool = True
) -> Index | None:
    """The index of ``model_tag`` under ``dst`` if it exists and is readable, else None.

    With ``fresh``, an index that misses a shard of the dataset or covers one that changed is
    also None (see :func:`build_index`).
    """
    from gcsemb.explore.dataset import parquet_files

    store = open_store(dst, token=token)
    try:
        index = _load(store, model_tag)
    except FileNotFoundError:
        return None
    except (ValueError, OSError, KeyError, TypeError) as e:
        log.warning("ignoring the index at %s: %s", index_url(store, model_tag), str(e)[:200])
        return None
    if fresh and _changes(index, _listing(store, parquet_files(store)))[0] != "same":
        return None
    return index


def _changes(index: Index, listing: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    """``("same" | "grown" | "stale", new shard names)`` of the dataset against the index."""
    covered = {s["name"]: s for s in index.manifest["shards"]}
    for name, shard in covered.items():
        now = listing.get(name)
        if now is None or (now["size"], now["version"]) != (shard["size"], shard["version"]):
            return "stale", []
    new = sorted(set(listing) - set(covered))
    return ("grown" if new else "same"), new


def _local_copy(store: Store, url: str, manifest: dict[str, Any]) -> Path:
    """A local folder holding the index files (the folder itself for a local dataset)."""
    if store.backend.local:
        return Path(store.fs._strip_protocol(url))
    from gcsemb.storage.cache import cache_path
    from gcsemb.storage.files import atomic_path

    key = hashlib.sha1(store.uri(store.fs._strip_protocol(url)).encode()).hexdigest()[:16]
    local = cache_path("index", key)
    names = ["centroids.npy"] + [f"{s}/{a}.npy" for s in manifest["segments"] for a in ARRAYS]
    for name in names:
        target = local / name
        remote = f"{store.fs._strip_protocol(url)}/{name}"
        size = store.fs.size(remote)
        if target.exists() and target.stat().st_size == size:
            continue
        with atomic_path(target, size) as tmp:
            store.fs.get_file(remote, tmp)
    return local


def _load(store: Store, model_tag: str) -> Index:
    """Open the index files: plain arrays only, their shapes checked."""
    url = index_url(store, model_tag)
    path = store.fs._strip_protocol(url)
    manifest = json.loads(store.fs.cat_file(f"{path}/manifest.json"))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError("not a gcsemb index manifest of this version")
    if manifest.get("model") != model_tag or not isinstance(manifest.get("segments"), list):
        raise ValueError("the manifest does not describe this model's index")
    local = _local_copy(store, url, manifest)
    centroids = np.load(local / "centroids.npy", allow_pickle=False)
    segments, keys = [], []
    for name in manifest["segments"]:
        if not re.fullmatch(r"seg-[0-9a-z-]+", str(name)):
            raise ValueError(f"bad segment name {name!r}")
        arrays = {
            a: np.load(local / name / f"{a}.npy", mmap_mode="r", allow_pickle=False) for a in ARRAYS
        }
        keys.append(np.asarray(arrays.pop("keys"), np.uint64))
        segments.append(ivf.IVF(np.asarray(centroids, np.float32), **arrays))
    _check(centroids, segments, keys)
    return Index(
        store, url, model_tag, manifest, segments, np.concatenate(keys or [np.zeros(0, np.uint64)])
    )


def _check(centroids: np.ndarray, segments: list[ivf.IVF], keys: list[np.ndarray]) -> None:
    """Raise ValueError unless the arrays fit together (ids in range, offsets monotonic)."""
    if centroids.ndim != 2 or centroids.dtype != np.float32:
        raise ValueError("centroids are not a float32 matrix")
    base = 0
    for seg, key in zip(segments, keys, strict=True):
        n = len(key)
        ok = (
            seg.offsets.shape == (len(centroids) + 1,)
            and seg.offsets.dtype == np.int64
            and seg.ids.dtype == np.int64
            and seg.vectors.dtype == np.float32
            and seg.second.dtype == np.int32
            and seg.vectors.shape == (n, centroids.shape[1])
            and len(seg.ids) == n == len(seg.second) == seg.offsets[-1]
            and seg.offsets[0] == 0
            and bool(np.all(np.diff(seg.offsets) >= 0))
            and (not n or (seg.ids.min() >= base and seg.ids.max() < base + n))
            and (not n or (seg.second.min() >= 0 and seg.second.max() < len(centroids)))
        )
        if not ok:
            raise ValueError("the index arrays do not fit together")
        base += n


def _save_array(store: Store, path: str, array: np.ndarray) -> None:
    """``np.save`` straight into the store's file (streamed: no copy of a large array)."""
    with store.output(path) as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


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
    listing = _listing(store, files)
    index = None if rebuild else open_index(store, model_tag, fresh=False)
    state, new = _changes(index, listing) if index is not None else ("stale", [])
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
    old = set(manifest.get("segments") or [])
    manifest["segments"] = [p.name for p in parts]
    store.write(f"{path}/manifest.json", json.dumps(manifest, indent=1).encode())
    for name in old - set(manifest["segments"]):
        try:
            store.fs.rm(f"{path}/{name}", recursive=True)
        except OSError as e:  # a leftover folder costs space, not correctness
            log.debug("cannot remove %s: %s", name, e)
    return _load(store, model_tag)


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
