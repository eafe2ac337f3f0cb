"""Rank a dataset's rows against a query vector: exactly, or among an index's candidates.

:func:`top_k` scores every row (or the rows given) with one matrix product; :func:`ranked`
picks exact or index search (``method``) and rescores an index's candidates exactly. The index
is the dataset's own (``DST/_index/``, memory-mapped, when it is up to date) or one built in
memory for the matrix and kept while the matrix lives.

Example:
    >>> import numpy as np, pandas as pd
    >>> df = pd.DataFrame({"uri": ["a", "b", "c"]})
    >>> X = np.eye(3, dtype=np.float32)
    >>> top_k(df, X, X[1], k=2)["uri"].tolist()
    ['b', 'a']
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.explore.inputs import SEARCH_EXACT_MAX, model_tag_of

if TYPE_CHECKING:
    import pandas as pd

RESULT_COLUMNS = ["uri", "score", "md5"]
NPROBE = {"image": 16, "text": 64}
"""Lists an index search probes: texts lie away from the images (CLIP's modality gap) and need
more for recall@10 >= 0.95 (measured: ``benchmarks/bench_explore.py``)."""
_INDEXES: dict[int, Any] = {}  # id(matrix) -> its index, dropped with the matrix


def top_k(
    df: pd.DataFrame,
    matrix: np.ndarray,
    query: np.ndarray,
    k: int,
    *,
    first: str | None = None,
    among: np.ndarray | None = None,
) -> pd.DataFrame:
    """The ``k`` rows most similar to the unit vector ``query``, best first.

    Ties keep the dataset's order, except that the row ``first`` (the query image itself) wins
    its tie, so an image always finds itself before its exact copies. ``among`` (ascending row
    numbers, e.g. an index's candidates) limits the search to those rows.
    """
    import pandas as pd

    query = np.asarray(query, dtype=np.float32).reshape(-1)
    if len(matrix) == 0:
        return pd.DataFrame({c: [] for c in RESULT_COLUMNS})
    if matrix.shape[1] != len(query):
        raise ValueError(
            f"The query has {len(query)} dimensions but the dataset {matrix.shape[1]}: "
            "embed it with the dataset's model."
        )
    scores = _scores(matrix if among is None else matrix[among], query)
    k = max(0, min(int(k), len(scores)))
    candidates = np.argpartition(-scores, k - 1)[:k] if 0 < k < len(scores) else np.arange(k)
    # include every row tied with the k-th best so the tie-break below is exact
    if k:
        cutoff = scores[candidates].min()
        candidates = np.flatnonzero(scores >= cutoff)
    rows = candidates if among is None else among[candidates]
    # the candidates' strings only: turning a whole column of a million into objects costs more
    # than the search itself (pandas' Arrow-backed strings)
    uris = df["uri"].take(rows).to_numpy()
    is_first = (uris == first) if first is not None else np.zeros(len(candidates))
    order = np.lexsort((candidates, ~is_first.astype(bool), -scores[candidates]))[:k]
    picked = candidates[order]
    out = pd.DataFrame(
        {
            "uri": uris[order],
            "score": scores[picked].astype(np.float32),
            "md5": df["md5"].take(rows[order]).to_numpy() if "md5" in df else None,
        }
    )
    out.attrs["store"] = df.attrs.get("store")  # the access thumbnails of the results reuse
    out.attrs["dataset"] = df.attrs.get("dataset")  # and what they may fetch (its source)
    return out


def _scores(matrix: np.ndarray, query: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """``matrix @ query`` in float32; a float16 matrix a block of rows at a time (no full copy)."""
    if matrix.dtype == np.float32:
        return matrix @ query
    out = np.empty(len(matrix), np.float32)
    for a in range(0, len(matrix), block):
        out[a : a + block] = np.asarray(matrix[a : a + block], np.float32) @ query
    return out


def ranked(
    df: pd.DataFrame,
    matrix: np.ndarray,
    query: np.ndarray,
    k: int,
    *,
    method: str = "auto",
    kind: str = "image",
    first: str | None = None,
) -> pd.DataFrame:
    """:func:`top_k`, exactly or among the candidates of an index (``method``).

    ``"auto"`` is exact up to :data:`SEARCH_EXACT_MAX` rows. The index is the dataset's
    (``DST/_index/``, when up to date) or one built in memory for this matrix, kept while the
    matrix lives; candidates are rescored exactly.
    """
    from gcsemb.explore.neighbours import _check_method

    _check_method(method)
    if method == "exact" or (method == "auto" and len(matrix) <= SEARCH_EXACT_MAX):
        return top_k(df, matrix, query, k, first=first)
    index = _INDEXES.get(id(matrix))
    if index is None:
        index = _INDEXES[id(matrix)] = _index_for(df, matrix)
        weakref.finalize(matrix, _INDEXES.pop, id(matrix), None)
    rows = np.sort(index.shortlist(np.asarray(query, np.float32), k + 1, NPROBE[kind]))
    found = top_k(df, matrix, query, k, first=first, among=rows)
    if first is not None and k and not (found["uri"] == first).any():  # the image itself leads
        rows = np.union1d(rows, np.flatnonzero((df["uri"] == first).to_numpy())[:1])
        found = top_k(df, matrix, query, k, first=first, among=rows)
    return found


def _index_for(df: pd.DataFrame, matrix: np.ndarray) -> Any:
    """The dataset's index mapped onto ``df``'s rows when it is up to date, else a new one.

    The dataset's index (when it holds every row of ``df``) is used as it lies on disk: only
    its lists' ids are read (memory-mapped), never its vectors. Rows read from elsewhere get an
    index built in memory.
    """
    from gcsemb.explore import ivf
    from gcsemb.explore.index import open_index

    store, tag = df.attrs.get("store"), model_tag_of(df)
    if store is not None and tag is not None and "uri" in df:
        index = open_index(store, tag)
        if index is not None:
            rows = index.rows_of(df)
            held = rows[rows >= 0]
            if np.count_nonzero(np.bincount(held, minlength=len(df))) == len(df):
                size = sum(s.vectors.nbytes for s in index.segments)
                memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                resident = len(held) == len(rows) and size <= RESIDENT_SHARE * memory
                return _Shortlist(index, rows, resident)
    in_memory = ivf.train(matrix, vectors=False)  # the matrix itself scores the candidates
    return _Shortlist(in_memory, np.arange(len(df)))


RESIDENT_SHARE = 0.25
"""Share of this machine's memory up to which an index's vectors count as resident: searched
where they lie (contiguous lists, fast) instead of gathering the candidates' rows from the
matrix (what a 10M-row index, 20 GB of vectors, needs: they would be read from disk)."""


@dataclass(frozen=True)
class _Shortlist:
    """An index (the dataset's, memory-mapped, or one built in memory) answering with df rows.

    Attributes:
        index: The dataset's :class:`~gcsemb.explore.index.Index` or an in-memory
            :class:`~gcsemb.explore.ivf.IVF`.
        rows: The row of the df of each index id (-1: not among the df's rows).
        resident: Score with the index's own vectors (they fit in memory beside the matrix,
            and every index row is a row of the df); else only its lists' ids are read.
    """

    index: Any
    rows: np.ndarray = field(repr=False)
    resident: bool = False

    def shortlist(self, query: np.ndarray, k: int, nprobe: int) -> np.ndarray:
        """Rows of the df to score exactly for the ``k`` best of ``query``."""
        if self.resident:  # the index's k best (exact on its vectors): only they are rescored
            ids = self.index.search(query, k, nprobe)[0][0]
            ids = ids[ids >= 0]
        else:  # every row in the probed lists, for the matrix to score
            ids = self.index.candidates(query, nprobe)
        rows = self.rows[ids]
        return rows[rows >= 0]
