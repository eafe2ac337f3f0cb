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
SCORES = BLOCK * 16384
"""Scores computed at a time (128 MiB of float32): a list's block of rows against its
candidates has fewer rows when the candidates are many (a few lists are the second-nearest of
tens of thousands of vectors)."""
GATHER = 1 << 16
"""Rows gathered from memory-mapped segments at a time (see :class:`Gathered`)."""


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
    vectors: np.ndarray | Gathered
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
    """One index holding the lists of ``parts`` (all on the same centroids), copied list by list.

    What a segment saved to disk needs; to read several segments as one, :func:`stack` copies
    no vector.
    """
    if len(parts) == 1:
        return parts[0]
    view = stack(parts)
    vectors = view.vectors[: len(view)]
    return IVF(view.centroids, view.offsets, view.ids, vectors, view.second)


def stack(parts: list[IVF]) -> IVF:
    """``parts`` (all on the same centroids) seen as one index, their vectors left where they lie.

    Its ``vectors`` is a :class:`Gathered`: a position's vector is read from its part when asked
    for, so segments memory-mapped from disk are never copied whole (a merged copy of 1M rows
    is 2 GB). Ids and second lists (12 bytes a row) are merged.

    Example:
        >>> X = np.eye(4, dtype=np.float32)
        >>> first = train(X[:2], nlist=2)
        >>> both = stack([first, build(X[2:], first.centroids, ids=np.arange(2, 4))])
        >>> sorted(both.ids.tolist()), both.vectors[np.arange(4)].shape
        ([0, 1, 2, 3], (4, 4))
    """
    sizes = np.stack([np.diff(p.offsets) for p in parts])  # (parts, nlist)
    offsets = np.concatenate([[0], np.cumsum(sizes.sum(0))]).astype(np.int64)
    # runs in merged order: list by list, each part's share of the list in turn
    lengths = sizes.T.ravel()
    run_part = np.tile(np.arange(len(parts), dtype=np.int32), sizes.shape[1])
    run_start = np.stack([p.offsets[:-1] for p in parts]).T.ravel()
    part = np.repeat(run_part, lengths)
    at = np.repeat(run_start - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    vectors = Gathered([p.vectors for p in parts], part, at)
    ids = vectors.gather([p.ids for p in parts], np.arange(len(part)))
    second = vectors.gather([p.second for p in parts], np.arange(len(part)))
    return IVF(parts[0].centroids, offsets, ids.astype(np.int64), vectors, second)


class Gathered:
    """The vectors of several arrays seen as one ``(n, dim)`` float32 array, read on demand.

    Position ``p`` is row ``at[p]`` of ``parts[part[p]]``. Indexing with positions (an array
    or a slice) returns a new array of just those rows.
    """

    def __init__(self, parts: list[np.ndarray], part: np.ndarray, at: np.ndarray) -> None:
        self.parts, self.part, self.at = parts, part, at
        self.shape = (len(part), parts[0].shape[1])
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.part)

    def __getitem__(self, positions: np.ndarray | slice) -> np.ndarray:
        if isinstance(positions, slice):
            positions = np.arange(*positions.indices(len(self)))
        return self.gather(self.parts, np.asarray(positions))

    def gather(self, arrays: list[np.ndarray], positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions`` of per-part ``arrays`` laid out like the vectors."""
        out = np.empty((len(positions), *arrays[0].shape[1:]), arrays[0].dtype)
        for a in range(0, len(positions), GATHER):  # bounded temporary copies
            block = positions[a : a + GATHER]
            part, at, view = self.part[block], self.at[block], out[a : a + GATHER]
            for i, array in enumerate(arrays):
                mine = part == i
                if mine.any():
                    view[mine] = array[at[mine]]
        return out

    def select(self, keep: np.ndarray) -> Gathered:
        """The positions ``keep`` (a mask or positions) as a new view."""
        return Gathered(self.parts, self.part[keep], self.at[keep])


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
        step = _rows_per_block(len(candidates))
        for a in range(0, own.stop - own.start, step):
            rows = np.arange(a, min(a + step, own.stop - own.start))
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
        step = _rows_per_block(len(members))
        for a in range(0, own.stop - own.start, step):
            ii, jj = np.nonzero(vectors[a : a + step] @ vectors.T >= threshold)
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


def _rows_per_block(candidates: int) -> int:
    """Rows scored at once against ``candidates`` vectors: at most :data:`SCORES` scores."""
    return max(1, min(BLOCK, SCORES // max(candidates, 1)))


def _bar(items: list, show: bool, what: str) -> Iterator:
    if not show:
        return iter(items)
    from tqdm.auto import tqdm

    return iter(tqdm(items, desc=what, unit="list"))
