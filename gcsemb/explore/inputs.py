"""What the explore functions accept: a dataset URL, a ``(df, matrix)`` pair, or a DataFrame.

:func:`embeddings_of` turns any of them into the rows, their matrix and the dataset's handle,
for search, near-duplicates, neighbours, the map and the Explorer alike. A dataset read here
that is bigger than :data:`SEARCH_EXACT_MAX` rows may be read lean (float16), since an index
finds its candidates and the matrix only rescores them.

Example:
    >>> import numpy as np, pandas as pd
    >>> df, X, dataset = embeddings_of((pd.DataFrame({"uri": ["a", "b"]}), np.eye(2)))
    >>> X.dtype, dataset is None
    (dtype('float32'), True)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.explore.dataset import embedding_matrix
from gcsemb.storage import Store

if TYPE_CHECKING:
    import pandas as pd

SEARCH_EXACT_MAX = 250_000
"""Rows up to which ``method="auto"`` searches exactly (one matrix product a query)."""


def embeddings_of(
    data: Any, *, token: Any = None, model_tag: str | None = None, lean: bool = False
) -> tuple[pd.DataFrame, np.ndarray, Store | None]:
    """``(df, matrix, dataset)`` from any of the forms the search and plot functions accept.

    Args:
        data: A dataset URL, local path or :class:`~gcsemb.storage.Store`, the ``(df, matrix)``
            pair of :func:`gcsemb.read_embeddings`, or a DataFrame with an ``embedding`` column.
        token: Credentials for ``gs://`` when ``data`` is a URL.
        model_tag: Keep the rows of this model tag only (the ``model`` column's value).
        lean: Read a dataset of more than :data:`SEARCH_EXACT_MAX` rows as float16 (half the
            memory: 10M rows of 512-d take 10 GB): what a search needs, whose index finds the
            candidates and the matrix only rescores them.

    Returns:
        The rows, their embeddings as an ``(n, dim)`` float32 array, and the dataset's handle
        (None for rows that were not read from a dataset).

    Example:
        >>> df, X, dataset = embeddings_of("gs://my-bucket/embeddings")  # doctest: +SKIP
    """
    if isinstance(data, str | os.PathLike | Store):
        from gcsemb.explore.shards import fill, plan
        from gcsemb.storage import open_store

        store = open_store(data if isinstance(data, Store) else str(data), token=token)
        rows = plan(store, model_tag, read_ahead=True)
        big = lean and len(rows.df) > SEARCH_EXACT_MAX
        rows, matrix = fill(rows, np.float16 if big else np.float32)
        return rows.df, matrix, store
    df, matrix = _rows_and_matrix(data)
    if len(df) != len(matrix):
        raise ValueError(f"{len(df)} rows but {len(matrix)} embeddings: they must match.")
    if model_tag is not None and "model" in df:
        keep = (df["model"] == model_tag).to_numpy()
        df, matrix = df[keep].reset_index(drop=True), matrix[keep]
    elif "model" in df and df["model"].nunique() > 1:
        raise ValueError(
            f"The rows hold several models {sorted(df['model'].unique())}: pass model_tag=... "
            "to pick one (embeddings of different models are not comparable)."
        )
    return df, matrix, df.attrs.get("store")


def _rows_and_matrix(data: Any) -> tuple[pd.DataFrame, np.ndarray]:
    """``(df, matrix)`` of a ``(df, matrix)`` pair or of a DataFrame with ``embedding``."""
    import pandas as pd

    if isinstance(data, tuple) and len(data) == 2:
        matrix = np.asarray(data[1])  # float16 stays float16 (half the memory at 10M rows)
        if matrix.dtype != np.float16:
            matrix = matrix.astype(np.float32, copy=False)
        return data[0], matrix
    if not isinstance(data, pd.DataFrame):
        raise TypeError(
            f"Cannot search {type(data).__name__}: pass a dataset URL, the (df, matrix) pair of "
            "gcsemb.read_embeddings(dst), or a DataFrame with an 'embedding' column."
        )
    if "embedding" not in data:
        raise ValueError(
            "The DataFrame has no 'embedding' column: pass gcsemb.read_embeddings(dst), "
            "i.e. the (df, matrix) pair, or the dataset URL."
        )
    return data, embedding_matrix(data)


def model_tag_of(df: pd.DataFrame) -> str | None:
    """The model tag of the rows (their ``model`` column), or None without one.

    Example:
        >>> import pandas as pd
        >>> model_tag_of(pd.DataFrame({"model": ["ViT-B-32/laion2b_s34b_b79k"]}))
        'ViT-B-32/laion2b_s34b_b79k'
    """
    return str(df["model"].iloc[0]) if "model" in df and len(df) else None
