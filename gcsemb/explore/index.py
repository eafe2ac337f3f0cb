"""The neighbour index kept next to a dataset: ``DST/_index/<model-tag>/``.

An :mod:`IVF <gcsemb.explore.ivf>` index of one model's embeddings, in plain ``.npy`` files::

    DST/_index/<model-tag>/manifest.json       the shards covered (name, size, version, rows)
    DST/_index/<model-tag>/centroids.npy       the lists' centroids
    DST/_index/<model-tag>/<segment>/{offsets,ids,vectors,second,keys}.npy

:func:`~gcsemb.explore.indexing.build_index` (``gcsemb index DST``) indexes what is new:
the first call every shard, later calls only the shards written since, as a segment of their
own on the same centroids. A shard changed or removed under the index makes it stale: it is
rebuilt. Index files are only ever read with ``np.load(allow_pickle=False)`` (memory-mapped;
from a cached local copy for ``gs://``), and their shapes checked, so a file crafted by someone
else is rebuilt over, never unpickled or trusted. The rows of an index map to the rows of
:func:`gcsemb.read_embeddings` through a hash of each row's ``uri`` and ``updated`` (an older
version of an image, superseded by a later shard, maps to nothing).

This module opens an index and answers with it; :mod:`gcsemb.explore.indexing` builds and
updates it.

Example:
    >>> tag = "ViT-B-32/laion2b_s34b_b79k"
    >>> index = open_index("gs://my-bucket/embeddings", tag)  # doctest: +SKIP
    >>> index  # doctest: +SKIP
    Index('gs://my-bucket/embeddings', ViT-B-32/laion2b_s34b_b79k: 1,000,000 rows, 200 shards)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
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
SEGMENT_NAME = re.compile(r"seg-[0-9a-z-]+")
"""What a segment's folder is called; a manifest naming anything else is not read or acted on."""


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


def shard_listing(store: Store, files: list[str]) -> dict[str, dict[str, Any]]:
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
    also None (see :func:`~gcsemb.explore.indexing.build_index`).
    """
    from gcsemb.explore.dataset import parquet_files

    store = open_store(dst, token=token)
    try:
        index = load_index(store, model_tag)
    except FileNotFoundError:
        return None
    except (ValueError, OSError, KeyError, TypeError) as e:
        log.warning("ignoring the index at %s: %s", index_url(store, model_tag), str(e)[:200])
        return None
    if fresh and changes(index, shard_listing(store, parquet_files(store)))[0] != "same":
        return None
    return index


def changes(index: Index, listing: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    """``("same" | "grown" | "stale", new shard names)`` of the dataset against the index."""
    covered = {s["name"]: s for s in index.manifest["shards"]}
    for name, shard in covered.items():
        now = listing.get(name)
        if now is None or (now["size"], now["version"]) != (shard["size"], shard["version"]):
            return "stale", []
    new = sorted(set(listing) - set(covered))
    return ("grown" if new else "same"), new


def saved_segments(store: Store, model_tag: str) -> list[str]:
    """The segments the saved manifest names (well-formed names only); none without one.

    What a build removes once its own manifest is written: a rebuild must not leave the old
    index's segments behind (2 GB at 1M rows). Only names of :data:`SEGMENT_NAME`'s form are
    given, so a manifest written by someone else can never point a removal elsewhere.
    """
    path = store.fs._strip_protocol(index_url(store, model_tag))
    try:
        manifest = json.loads(store.fs.cat_file(f"{path}/manifest.json"))
    except (OSError, ValueError):  # none, or unreadable: nothing known to remove
        return []
    names = manifest.get("segments") if isinstance(manifest, dict) else None
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and SEGMENT_NAME.fullmatch(n)]


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
    for old in local.glob("seg-*"):  # segments of earlier versions of the index
        if old.name not in manifest["segments"]:
            shutil.rmtree(old, ignore_errors=True)
    return local


def load_index(store: Store, model_tag: str) -> Index:
    """Open the index files: plain arrays only, their shapes checked."""
    url = index_url(store, model_tag)
    path = store.fs._strip_protocol(url)
    manifest = json.loads(store.fs.cat_file(f"{path}/manifest.json"))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError("not a gcsemb index manifest of this version")
    if manifest.get("model") != model_tag or not isinstance(manifest.get("segments"), list):
        raise ValueError("the manifest does not describe this model's index")
    for name in manifest["segments"]:  # before any of them becomes a path
        if not SEGMENT_NAME.fullmatch(str(name)):
            raise ValueError(f"bad segment name {name!r}")
    local = _local_copy(store, url, manifest)
    centroids = np.load(local / "centroids.npy", allow_pickle=False)
    segments, keys = [], []
    for name in manifest["segments"]:
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
