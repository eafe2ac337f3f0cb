"""An inverted-file (IVF) index on plain numpy arrays: search, kNN graph and similar pairs.

The vectors are split into ``nlist`` lists by their nearest centroid (spherical k-means on a
sample); each list's vectors are stored together (float32) beside their row ids. A query scores
the centroids, then only the vectors of its ``nprobe`` best lists, exactly. Everything is a plain
array (centroids, list offsets, ids, vectors), so an index saves with ``np.save`` and opens with
``np.load(mmap_mode="r", allow_pickle=False)``: nothing is ever unpickled, and a new shard's rows
form a segment of their own, assigned to the same centroids.

Why not faiss, usearch, hnswlib or pynndescent: measured in the README ("Exploring at scale"):
a graph index (HNSW) answers image queries fast but text queries (across CLIP's modality gap) with
low recall unless searched very wide, takes minutes to build at 1M rows on 2 cores, and has its own
file format; faiss is missing on Colab. This IVF builds in seconds, needs nothing beyond numpy, and
reaches any recall by probing more lists (text queries probe more).

Example:
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((2000, 16)).astype(np.float32)
    >>> X /= np.linalg.norm(X, axis=1, keepdims=True)
    >>> index = train(X, nlist=8)
    >>> ids, scores = index.search(X[:3], 5, nprobe=8)
    >>> ids[:, 0].tolist()
    [0, 1, 2]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

BLOCK = 2048
"""Rows of vectors scored at a time (bounds the temporary float32 copies)."""


def nlist_for(n: int) -> int:
    """The number of lists for ``n`` vectors: about ``2 sqrt(n)`` (500 rows a list at 1M)."""
    return int(np.clip(round(2 * np.sqrt(max(n, 1))), 1, 16384))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest scores per row, best first."""
    k = min(k, scores.shape[1])
    if k <= 0:
        return np.zeros((len(scores), 0), np.int64)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else None
    if part is None:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def kmeans(
    x: np.ndarray, nlist: int, iterations: int = 8, sample: int = 40, seed: int = 0
) -> np.ndarray:
    """Spherical k-means centroids (unit vectors) from a sample of ``sample * nlist`` rows."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x), min(len(x), sample * nlist), replace=False)
    data = _unit(x[np.sort(pick)])
    centroids = data[rng.choice(len(data), min(nlist, len(data)), replace=False)].copy()
    for _ in range(iterations):
        labels = assign(data, centroids)[0]
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, data)
        empty = np.flatnonzero(~sums.any(axis=1))
        sums[empty] = data[rng.choice(len(data), len(empty))]  # reseed empty lists
        centroids = _unit(sums)
    return centroids


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest and second-nearest list of each row (int32 each)."""
    first = np.empty(len(x), np.int32)
    second = np.empty(len(x), np.int32)
    for a in range(0, len(x), BLOCK):
        scores = np.asarray(x[a : a + BLOCK], np.float32) @ centroids.T
        best = _top(scores, 2)
        first[a : a + BLOCK] = best[:, 0]
        second[a : a + BLOCK] = best[:, -1]
    return first, second


@dataclass
class IVF:
    """The index: ``centroids`` (nlist, dim), and per list, contiguous ``ids`` and ``vectors``.

    Attributes:
        centroids: Unit vectors, float32.
        offsets: List ``c`` holds positions ``offsets[c]:offsets[c + 1]`` (int64, nlist + 1).
        ids: The row id of each position (int64).
        vectors: The vector at each position (float32).
        second: Each position's second-nearest list (int32), for near-duplicate candidates.
    """

    centroids: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray
    vectors: np.ndarray
    second: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"IVF({len(self):,} vectors, {len(self.centroids)} lists, dim {self.dim})"

    @property
    def dim(self) -> int:
        """The vectors' dimension."""
        return self.centroids.shape[1]

    def search(
        self, queries: np.ndarray, k: int, nprobe: int = 16
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best ``(ids, scores)`` per query among its ``nprobe`` best lists.

        Rows with fewer candidates are padded with id -1 and score -inf.
        """
        queries = _unit(np.atleast_2d(queries))
        probes = _top(queries @ self.centroids.T, nprobe)
        ids = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        for i, (query, lists) in enumerate(zip(queries, probes, strict=True)):
            spans = [(int(self.offsets[c]), int(self.offsets[c + 1])) for c in lists]
            spans = [(a, b) for a, b in spans if b > a]
            if not spans:
                continue
            # each list scored where it lies (a slice of the memory map): no gathered copy
            s = np.concatenate([self.vectors[a:b] @ query for a, b in spans])
            positions = np.concatenate([np.arange(a, b) for a, b in spans])
            best = _top(s[None], k)[0]
            ids[i, : len(best)] = self.ids[positions[best]]
            scores[i, : len(best)] = s[best]
        return ids, scores

    def candidates(self, query: np.ndarray, nprobe: int = 16) -> np.ndarray:
        """The ids in the ``nprobe`` lists nearest to one ``query`` (their vectors untouched).

        What a search that rescores from the rows' own matrix needs: only ``ids`` and
        ``offsets`` are read, never the (large, memory-mapped) vectors.
        """
        return self.ids_in(self.probes(query, nprobe))

    def probes(self, query: np.ndarray, nprobe: int = 16) -> np.ndarray:
        """The ``nprobe`` lists nearest to one ``query``, nearest first."""
        return _top(_unit(np.atleast_2d(query)) @ self.centroids.T, nprobe)[0]

    def ids_in(self, lists: np.ndarray) -> np.ndarray:
        """The ids held by ``lists``."""
        return np.asarray(self.ids[_positions(self.offsets, lists)])

    def lists(self) -> Iterator[tuple[int, slice]]:
        """``(list, positions)`` of every non-empty list."""
        for c in np.flatnonzero(np.diff(self.offsets)):
            yield int(c), slice(int(self.offsets[c]), int(self.offsets[c + 1]))


def _positions(offsets: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """The positions held by ``lists``, concatenated."""
    starts, stops = offsets[lists], offsets[lists + 1]
    sizes = stops - starts
    if not sizes.sum():
        return np.zeros(0, np.int64)
    out = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return out + np.arange(sizes.sum())


def build(
    x: np.ndarray, centroids: np.ndarray, ids: np.ndarray | None = None, vectors: bool = True
) -> IVF:
    """The index of the rows ``x`` (ids ``0..n-1`` unless given) on fixed ``centroids``.

    Without ``vectors`` the index holds no copy of them (``vectors`` is empty): enough for
    :meth:`IVF.candidates`, whose rows the caller scores from its own matrix.
    """
    first, second = assign(x, centroids)
    order = np.argsort(first, kind="stable")
    offsets = np.searchsorted(first[order], np.arange(len(centroids) + 1)).astype(np.int64)
    copied = np.empty((len(x) if vectors else 0, centroids.shape[1]), np.float32)
    for a in range(0, len(copied), BLOCK):
        copied[a : a + BLOCK] = x[order[a : a + BLOCK]]
    ids = np.arange(len(x)) if ids is None else np.asarray(ids, np.int64)
    return IVF(centroids, offsets, ids[order].astype(np.int64), copied, second[order])


def train(x: np.ndarray, nlist: int | None = None, seed: int = 0, vectors: bool = True) -> IVF:
    """Centroids from a sample of ``x``, then the index of all of ``x`` (see :func:`build`)."""
    return build(x, kmeans(x, nlist or nlist_for(len(x)), seed=seed), vectors=vectors)


def merge(parts: list[IVF]) -> IVF:
    """One index holding the lists of ``parts`` (all on the same centroids), list by list."""
    if len(parts) == 1:
        return parts[0]
    nlist = len(parts[0].centroids)
    sizes = np.stack([np.diff(p.offsets) for p in parts])  # (parts, nlist)
    offsets = np.concatenate([[0], np.cumsum(sizes.sum(0))]).astype(np.int64)
    total = int(offsets[-1])
    ids = np.empty(total, np.int64)
    second = np.empty(total, np.int32)
    vectors = np.empty((total, parts[0].dim), np.float32)
    for c in range(nlist):
        at = int(offsets[c])
        for p in parts:
            a, b = int(p.offsets[c]), int(p.offsets[c + 1])
            ids[at : at + b - a] = p.ids[a:b]
            second[at : at + b - a] = p.second[a:b]
            vectors[at : at + b - a] = p.vectors[a:b]
            at += b - a
    return IVF(parts[0].centroids, offsets, ids, vectors, second)


def knn(
    index: IVF, k: int, probe: int = 8, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's ``k`` nearest ``(ids, scores)``, itself first, indexed by id.

    The rows of one list are compared with the vectors of the ``probe`` lists nearest to that
    list's centroid (its own first). Ids must be ``0..n-1``.
    """
    n = len(index)
    near = index.centroids @ index.centroids.T
    np.fill_diagonal(near, np.inf)  # each list probes itself first
    probes = _top(near, probe)
    out_ids = np.full((n, k), -1, np.int64)
    out_scores = np.full((n, k), -np.inf, np.float32)
    lists = list(index.lists())
    for c, own in _bar(lists, progress, "kNN graph"):
        candidates = _positions(index.offsets, probes[c])
        start = int(np.flatnonzero(candidates == own.start)[0])
        vectors = index.vectors[candidates]
        for a in range(0, own.stop - own.start, BLOCK):
            rows = np.arange(a, min(a + BLOCK, own.stop - own.start))
            s = vectors[start + rows] @ vectors.T
            s[np.arange(len(rows)), start + rows] = np.inf  # itself first, whatever its ties
            best = _top(s, k)
            got = index.ids[own.start + rows]
            out_ids[got, : best.shape[1]] = index.ids[candidates[best]]
            out_scores[got, : best.shape[1]] = np.minimum(np.take_along_axis(s, best, 1), 1.0)
    return out_ids, out_scores


def pairs(
    index: IVF, threshold: float, max_pairs: int, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Id pairs ``(a, b)``, ``a < b``, scoring at least ``threshold`` in a shared list.

    Each vector sits in its nearest list and, for this, also in its second-nearest: two near
    copies share at least one of them. The scores are the index's vectors'; callers verify the
    pairs with their exact vectors.
    """
    by_second = np.argsort(index.second, kind="stable")
    second_offsets = np.searchsorted(index.second[by_second], np.arange(len(index.centroids) + 1))
    found: list[np.ndarray] = [np.zeros(0, np.int64)]
    total = 0
    n = int(index.ids.max()) + 1 if len(index) else 0
    for c, own in _bar(list(index.lists()), progress, "near-duplicates"):
        extra = by_second[second_offsets[c] : second_offsets[c + 1]]
        members = np.concatenate([np.arange(own.start, own.stop), extra])
        vectors = index.vectors[members]
        ids = index.ids[members]
        for a in range(0, own.stop - own.start, BLOCK):
            ii, jj = np.nonzero(vectors[a : a + BLOCK] @ vectors.T >= threshold)
            ii += a
            keep = jj > ii
            lo = np.minimum(ids[ii[keep]], ids[jj[keep]])
            hi = np.maximum(ids[ii[keep]], ids[jj[keep]])
            found.append(lo * n + hi)
            total += int(keep.sum())
            if total > 4 * max_pairs:
                raise ValueError(
                    f"More than {max_pairs:,} pairs score >= {threshold}: raise the "
                    "threshold (or max_pairs)."
                )
    keys = np.unique(np.concatenate(found))
    return keys // max(n, 1), keys % max(n, 1)


def _bar(items: list, show: bool, what: str) -> Iterator:
    if not show:
        return iter(items)
    from tqdm.auto import tqdm

    return iter(tqdm(items, desc=what, unit="list"))
