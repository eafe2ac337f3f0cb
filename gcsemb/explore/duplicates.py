"""Near-duplicate images: pairs above a cosine threshold, and groups to keep one of each.

Exact (all pairs, O(n^2): a minute at 100k rows on 2 cores) for small sets; beyond that, the
candidates come from the dataset's IVF index (each vector in its two nearest lists; the pairs
within each list), and every reported pair is verified with its exact cosine. Images with the
same bytes (same md5) are always reported, whatever their score.

Example:
    >>> import pandas as pd
    >>> X = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]
    >>> rows = pd.DataFrame({"uri": list("abcd"), "md5": ["1", "2", "3", "4"]})
    >>> near_duplicates((rows, X), threshold=0.95)[["uri_a", "uri_b", "score"]]
      uri_a uri_b  score
    0     a     b    1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.explore import ivf
from gcsemb.explore.neighbours import _check_method

if TYPE_CHECKING:
    import pandas as pd

EXACT_MAX = 50_000
"""Rows up to which ``method="auto"`` compares all pairs."""
GROUP_COLUMNS = ["group", "representative", "uri", "score", "md5", "width", "height", "size"]


def near_duplicates(
    data: Any,
    *,
    threshold: float = 0.95,
    method: str = "auto",
    groups: bool = False,
    chunk: int = 4096,
    max_pairs: int = 1_000_000,
    progress: bool = True,
    token: Any = None,
    model_tag: str | None = None,
) -> pd.DataFrame:
    """Every pair of images whose embeddings' cosine similarity is at least ``threshold``.

    Args:
        data: A dataset URL, the ``(df, matrix)`` pair, or a DataFrame with ``embedding``.
        threshold: Minimum cosine similarity (CLIP: about 0.95 and up for re-encodes, crops
            and resizes of one photo; 1.0 for identical pixels).
        method: ``"exact"`` (all pairs, in blocks of ``chunk`` rows), ``"index"`` (candidates
            from the IVF index, each verified exactly: minutes at 1M rows), or ``"auto"``:
            exact up to :data:`EXACT_MAX` rows.
        groups: Return groups instead of pairs: images linked by pairs, one row per image.
        chunk: Rows per block (``"exact"``).
        max_pairs: Stop with an error past this many pairs (the threshold is too low).
        progress: Show progress bars (``"index"``).
        token: Credentials for ``gs://``.
        model_tag: The model tag (``model`` column) to use when the dataset holds several.

    Returns:
        Pairs: ``uri_a``, ``uri_b``, ``score`` and ``exact`` (same md5), most similar first,
        each pair once. With ``groups``: ``group`` (0 is the largest group),
        ``representative`` (the one to keep: the most pixels, then the largest file, then the
        oldest), ``uri``, ``score`` (cosine to the representative), ``md5``, ``width``,
        ``height``, ``size``; the representative first in each group.

    Example:
        >>> pairs = near_duplicates("gs://my-bucket/embeddings", threshold=0.97)  # doctest: +SKIP
        >>> keep_one = near_duplicates("gs://b/emb", groups=True)  # doctest: +SKIP
        >>> drop = keep_one[~keep_one.representative].uri  # doctest: +SKIP
    """
    _check_method(method)
    df, vectors, a, b = _candidate_pairs(
        data,
        threshold,
        method,
        chunk=chunk,
        max_pairs=max_pairs,
        progress=progress,
        token=token,
        model_tag=model_tag,
    )
    if "md5" in df and len(df):
        ea, eb = _same_md5(df["md5"].to_numpy())
        a, b = np.concatenate([a, ea]), np.concatenate([b, eb])
    if len(a):
        pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
        a, b = pairs[:, 0], pairs[:, 1]
    scores = _scores(vectors, a, b)
    md5 = df["md5"].to_numpy() if "md5" in df else None
    same = (md5[a] == md5[b]) & (md5[a] != None) if md5 is not None else np.zeros(len(a), bool)  # noqa: E711
    keep = (scores >= threshold) | same  # every candidate verified with its exact cosine
    a, b, scores, same = a[keep], b[keep], scores[keep], same[keep]
    out = _groups(df, vectors, a, b) if groups else _pairs_frame(df, a, b, scores, same)
    out.attrs["store"] = df.attrs.get("store")  # the access thumbnails of the pairs reuse
    out.attrs["dataset"] = df.attrs.get("dataset")  # and what they may fetch (its source)
    return out


def _candidate_pairs(
    data: Any,
    threshold: float,
    method: str,
    *,
    chunk: int,
    max_pairs: int,
    progress: bool,
    token: Any,
    model_tag: str | None,
) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """``(df, vectors by row, a, b)``: candidate row pairs (a superset of the pairs found)."""
    from gcsemb.explore.neighbours import _size, dataset_ivf

    if method == "exact" or (method == "auto" and _size(data, token, model_tag) <= EXACT_MAX):
        from gcsemb.explore.inputs import embeddings_of

        df, matrix, _ = embeddings_of(data, token=token, model_tag=model_tag)
        unit = ivf._unit(matrix)
        a, b = _similar_pairs(unit, threshold - 1e-6, chunk, max_pairs)
        return df, unit, a, b
    df, index, _ = dataset_ivf(data, token=token, model_tag=model_tag, progress=progress)
    a, b = ivf.pairs(index, threshold - 1e-3, max_pairs, progress)
    return df, _RowVectors(index), a, b


class _RowVectors:
    """The vectors of an IVF by row id (its ids), without copying them into row order."""

    def __init__(self, index: ivf.IVF) -> None:
        self.index = index
        self.position = np.empty(len(index), np.int64)
        self.position[index.ids] = np.arange(len(index))

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.vectors[self.position[rows]], np.float32)


def _scores(vectors: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact cosine of each pair (rows of unit vectors), in blocks."""
    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), 65536):
        va, vb = vectors[a[s : s + 65536]], vectors[b[s : s + 65536]]
        out[s : s + 65536] = np.einsum("ij,ij->i", va, vb)
    return out


def _pairs_frame(
    df: Any, a: np.ndarray, b: np.ndarray, scores: np.ndarray, same: np.ndarray
) -> pd.DataFrame:
    import pandas as pd

    uris = df["uri"].to_numpy()
    out = pd.DataFrame(
        {
            "uri_a": uris[a],
            "uri_b": uris[b],
            "score": np.asarray(scores, np.float32),
            "exact": np.asarray(same, bool),
        }
    )
    out = out.sort_values(["score", "uri_a", "uri_b"], ascending=[False, True, True])
    return out.reset_index(drop=True)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The connected component of each of ``n`` nodes linked by edges ``(a, b)`` (its root).

    Example:
        >>> components(5, np.array([0, 3]), np.array([1, 4])).tolist()
        [0, 0, 2, 3, 3]
    """
    parent = np.arange(n)
    while True:  # hook each edge's roots to the smaller one until nothing moves
        ra, rb = parent[a], parent[b]
        low = np.minimum(ra, rb)
        before = parent.copy()
        np.minimum.at(parent, ra, low)
        np.minimum.at(parent, rb, low)
        parent = parent[parent]
        while not np.array_equal(parent, parent[parent]):
            parent = parent[parent]
        if np.array_equal(parent, before):
            return parent


def _groups(df: Any, vectors: Any, a: np.ndarray, b: np.ndarray) -> pd.DataFrame:
    """One row per image in a group; the representative first in each group."""
    import pandas as pd

    rows = np.unique(np.concatenate([a, b]))
    if not len(rows):
        return pd.DataFrame({c: [] for c in GROUP_COLUMNS})
    local = components(len(rows), np.searchsorted(rows, a), np.searchsorted(rows, b))
    out = df.iloc[rows].reset_index(drop=True)
    out["_root"] = local
    out["_pixels"] = _column(out, "width") * _column(out, "height")
    out["_bytes"] = _column(out, "size")
    out["_when"] = _column(out, "updated", -np.inf)
    out = out.sort_values(["_root", "_pixels", "_bytes", "_when"], ascending=[1, 0, 0, 1])
    out["representative"] = ~out["_root"].duplicated()
    sizes = out.groupby("_root")["_root"].transform("size")
    out["_size"] = sizes
    first = out.groupby("_root")["_root"].transform(lambda s: s.index[0])
    rep_rows = rows[first.to_numpy()]
    own_rows = rows[out.index.to_numpy()]
    out["score"] = _scores(vectors, own_rows, rep_rows)
    out = out.sort_values(["_size", "_root", "representative"], ascending=[0, 1, 0], kind="stable")
    out["group"] = pd.factorize(out["_root"])[0]
    for column in GROUP_COLUMNS:
        if column not in out:
            out[column] = None
    return out[GROUP_COLUMNS].reset_index(drop=True)


def _column(df: Any, name: str, missing: float = 0.0) -> np.ndarray:
    """A numeric column as float64 (timestamps as seconds), ``missing`` where absent."""
    import pandas as pd

    if name not in df:
        return np.full(len(df), missing)
    values = df[name]
    if pd.api.types.is_datetime64_any_dtype(values):
        seconds = values.astype("int64").astype(np.float64)
        return np.where(values.isna(), missing, seconds)
    return pd.to_numeric(values, errors="coerce").fillna(missing).to_numpy(np.float64)


def _similar_pairs(
    unit: np.ndarray, threshold: float, chunk: int, max_pairs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs ``(a, b)``, ``a < b``, of unit vectors scoring at least ``threshold``.

    Blocks of ``chunk`` x ``chunk`` rows bound the memory.
    """
    n = len(unit)
    found_a: list[np.ndarray] = [np.zeros(0, np.int64)]
    found_b: list[np.ndarray] = [np.zeros(0, np.int64)]
    total = 0
    for i0 in range(0, n, chunk):
        block = unit[i0 : i0 + chunk]
        for j0 in range(i0, n, chunk):
            ii, jj = np.nonzero(block @ unit[j0 : j0 + chunk].T >= threshold)
            if i0 == j0:  # the diagonal block: each pair once, no self-pairs
                keep = jj > ii
                ii, jj = ii[keep], jj[keep]
            found_a.append(ii + i0)
            found_b.append(jj + j0)
            total += len(ii)
            if total > max_pairs:
                raise ValueError(
                    f"More than {max_pairs:,} pairs score >= {threshold:.4f}: raise the "
                    "threshold (or max_pairs)."
                )
    return np.concatenate(found_a), np.concatenate(found_b)


def _same_md5(md5: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of rows with the same (non-null) md5."""
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(md5):
        if m:
            groups.setdefault(m, []).append(i)
    a: list[int] = []
    b: list[int] = []
    for rows in groups.values():
        if len(rows) > 1:
            for x in range(len(rows)):
                for y in range(x + 1, len(rows)):
                    a.append(rows[x])
                    b.append(rows[y])
    return np.asarray(a, np.int64), np.asarray(b, np.int64)
