"""Each image's nearest neighbours: exact for small sets, from the dataset's index beyond.

:func:`knn_graph` is what UMAP (umap-learn's ``precomputed_knn``) and Embedding Atlas's
``neighbors`` column reuse: computed once, kept in ``DST/_index/<model-tag>/`` beside the index.

Example:
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((100, 8)).astype(np.float32)
    >>> X /= np.linalg.norm(X, axis=1, keepdims=True)
    >>> import pandas as pd
    >>> indices, distances = knn_graph((pd.DataFrame({"uri": range(100)}), X), k=3)
    >>> indices[:2, 0].tolist(), distances[:2, 0].tolist()
    ([0, 1], [0.0, 0.0])
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from typing import Any

import numpy as np

from gcsemb.explore import ivf
from gcsemb.storage import Store

log = logging.getLogger(__name__)

EXACT_MAX = 100_000
"""Rows up to which ``method="auto"`` computes the graph exactly (all pairs, in blocks)."""
METHODS = ("auto", "exact", "index")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use 'auto', 'exact' or 'index'.")


def exact_knn(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` most similar rows ``(indices, scores)``, itself first: all pairs."""
    x = np.asarray(matrix, np.float32)
    n = len(x)
    k = min(k, n)
    indices = np.empty((n, k), np.int64)
    scores = np.empty((n, k), np.float32)
    step = max(16, (1 << 26) // max(n, 1))  # a block of scores stays under 256 MB
    for a in range(0, n, step):
        s = x[a : a + step] @ x.T
        rows = np.arange(len(s))
        s[rows, a + rows] = np.inf  # itself first, whatever its ties
        best = ivf._top(s, k)
        indices[a : a + step] = best
        scores[a : a + step] = np.minimum(np.take_along_axis(s, best, 1), 1.0)
    return indices, scores


def live_ivf(index: Any, df: Any) -> ivf.IVF:
    """The dataset index's vectors of the rows of ``df``, merged, with ids = rows of ``df``.

    Raises:
        LookupError: Some rows of ``df`` are not in the index (it is older than ``df``).
    """
    merged = ivf.stack(list(index.segments))  # no copy of the (memory-mapped) vectors
    rows = index.rows_of(df)[merged.ids]
    keep = rows >= 0
    if np.count_nonzero(np.bincount(rows[keep], minlength=len(df))) != len(df):
        raise LookupError("the index does not hold every row: build_index(dst) updates it")
    if keep.all():
        return ivf.IVF(merged.centroids, merged.offsets, rows, merged.vectors, merged.second)
    kept = np.concatenate([[0], np.cumsum(keep)])
    offsets = kept[merged.offsets].astype(np.int64)
    vectors = merged.vectors.select(keep)
    return ivf.IVF(merged.centroids, offsets, rows[keep], vectors, merged.second[keep])


def dataset_ivf(
    data: Any, *, token: Any = None, model_tag: str | None = None, progress: bool = True
) -> tuple[Any, ivf.IVF, Any]:
    """``(df, IVF with ids = rows of df, Index or None)`` of any data the search functions take.

    A dataset (URL or Store) uses its index in ``DST/_index/`` (built or updated first); rows
    given as a ``(df, matrix)`` pair are indexed in memory.
    """
    from gcsemb.explore.indexing import build_index

    if isinstance(data, str | os.PathLike | Store):
        from gcsemb.explore.shards import plan
        from gcsemb.storage import open_store

        store = open_store(data if isinstance(data, Store) else str(data), token=token)
        index = build_index(store, model_tag=model_tag, progress=progress)
        df = plan(store, index.model_tag).df
        return df, live_ivf(index, df), index
    from gcsemb.explore.inputs import embeddings_of

    df, matrix, _ = embeddings_of(data, token=token, model_tag=model_tag)
    return df, ivf.train(matrix), None


def knn_graph(
    data: Any,
    k: int = 15,
    *,
    method: str = "auto",
    probe: int = 8,
    progress: bool = True,
    token: Any = None,
    model_tag: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's ``k`` nearest images (itself first) and their cosine distances.

    Args:
        data: A dataset URL or :class:`~gcsemb.storage.Store`, or the ``(df, matrix)`` pair of
            :func:`gcsemb.read_embeddings`.
        k: Neighbours per image, itself included.
        method: ``"exact"`` (all pairs: O(n^2)), ``"index"`` (the dataset's IVF index: each
            list compared with its ``probe`` nearest lists), or ``"auto"``: exact up to
            :data:`EXACT_MAX` rows.
        probe: Lists each list is compared with (``"index"``); more is slower and more exact.
        progress: Show progress bars.
        token: Credentials for ``gs://``.
        model_tag: The model's rows, when the dataset holds several.

    Returns:
        ``(indices, distances)``: int64 and float32 arrays of shape ``(n, k)``, rows in the order
        of :func:`gcsemb.read_embeddings` (or of the pair), each row's own index first with
        distance 0, then by ascending cosine distance (``1 - cosine similarity``). A dataset's
        graph is saved beside its index and reused while the dataset is unchanged.

    Example:
        >>> indices, distances = knn_graph("gs://my-bucket/embeddings")  # doctest: +SKIP
    """
    _check_method(method)
    dataset = isinstance(data, str | os.PathLike | Store)
    if method == "exact" or (method == "auto" and _size(data, token, model_tag) <= EXACT_MAX):
        from gcsemb.explore.inputs import embeddings_of

        _, matrix, _ = embeddings_of(data, token=token, model_tag=model_tag)
        indices, scores = exact_knn(matrix, k)
        return indices, (1.0 - scores).clip(0, 2).astype(np.float32)
    df, index_ivf, index = dataset_ivf(data, token=token, model_tag=model_tag, progress=progress)
    name = f"knn-k{k}-p{probe}"
    if dataset and index is not None:
        saved = _load_graph(index, name, len(df), k)
        if saved is not None:
            return saved
    indices, scores = ivf.knn(index_ivf, k, probe, progress)
    distances = (1.0 - scores).clip(0, 2).astype(np.float32)
    distances[:, 0] = 0.0
    if dataset and index is not None:
        _save_graph(index, name, indices, distances)
    return indices, distances


def _size(data: Any, token: Any, model_tag: str | None) -> int:
    """How many rows ``data`` holds (a dataset's from its small columns only)."""
    if isinstance(data, str | os.PathLike | Store):
        from gcsemb.explore.shards import plan
        from gcsemb.storage import open_store

        store = open_store(data if isinstance(data, Store) else str(data), token=token)
        return len(plan(store, model_tag).df)
    if isinstance(data, tuple) and len(data) == 2:
        return len(data[1])
    return len(data)


def _graph_tag(index: Any) -> str:
    shards = json.dumps(index.manifest["shards"], sort_keys=True).encode()
    return hashlib.sha1(shards).hexdigest()[:16]


def _load_graph(index: Any, name: str, n: int, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The saved graph of this very set of shards, if any and well-formed (plain arrays)."""
    store = index.store
    path = f"{store.fs._strip_protocol(index.url)}/{name}-{_graph_tag(index)}.npz"
    try:
        with np.load(io.BytesIO(store.fs.cat_file(path)), allow_pickle=False) as f:
            indices, distances = f["indices"], f["distances"]
    except (FileNotFoundError, ValueError, OSError, KeyError) as e:
        if not isinstance(e, FileNotFoundError):
            log.warning("ignoring the saved kNN graph %s: %s", path, str(e)[:200])
        return None
    ok = (
        indices.shape == distances.shape == (n, min(k, n))
        and indices.dtype == np.int64
        and distances.dtype == np.float32
        and (not n or (indices.min() >= -1 and indices.max() < n))
    )
    return (indices, distances) if ok else None


def _save_graph(index: Any, name: str, indices: np.ndarray, distances: np.ndarray) -> None:
    store = index.store
    buf = io.BytesIO()
    np.savez(buf, indices=indices, distances=distances)
    path = f"{store.fs._strip_protocol(index.url)}/{name}-{_graph_tag(index)}.npz"
    try:
        store.fs.pipe_file(path, buf.getvalue())
    except OSError as e:  # an unwritable dataset: the graph is recomputed next time
        log.warning("cannot save the kNN graph beside %s: %s", index.url, str(e)[:200])
