"""Search an embeddings dataset: by text, by image, and for near-duplicate pairs.

Text and new images are embedded with the same model that embedded the dataset (its tag is in the
``model`` column). Pass an :class:`~gcsemb.model.embedder.Embedder`, or a
:class:`~gcsemb.model.dataset_embedder.ModelChoice` (``model=``/``pretrained=`` as given to
:func:`gcsemb.embed`, also accepted as keywords); with neither, the weights are recovered from the
dataset, but only from what cannot run or fetch anything a dataset's author chose (see
:mod:`gcsemb.model.dataset_embedder`).

Every search returns a DataFrame, best first: ``uri``, ``score`` (cosine similarity, 1.0 is an
identical embedding) and ``md5`` (for thumbnails). :func:`gcsemb.view.viz.image_grid` draws it.

Example:
    >>> from gcsemb.explore.search import search_text, search_image
    >>> df, X = gcsemb.read_embeddings("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> search_text((df, X), "a dog on a beach", k=5)  # doctest: +SKIP
    >>> search_text((df, X), "a dog", embedder=ModelChoice(device="cpu"))  # doctest: +SKIP
    >>> search_image((df, X), df.uri[0], k=5)  # the image itself comes first  # doctest: +SKIP
    >>> near_duplicates((df, X), threshold=0.97)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.explore.dataset import embedding_matrix
from gcsemb.model.dataset_embedder import ModelChoice, chosen_model, embedder_for
from gcsemb.storage import Store

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from gcsemb.model.embedder import Embedder

RESULT_COLUMNS = ["uri", "score", "md5"]
SEARCH_EXACT_MAX = 250_000
"""Rows up to which ``method="auto"`` searches exactly (one matrix product a query)."""
NPROBE = {"image": 16, "text": 64}
"""Lists an index search probes: texts lie away from the images (CLIP's modality gap) and need
more for recall@10 >= 0.95 (measured: ``benchmarks/bench_explore.py``)."""
_INDEXES: dict[int, Any] = {}  # id(matrix) -> its index, dropped with the matrix


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
        rows = plan(store, model_tag)
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


def search_text(
    data: Any,
    query: str,
    *,
    k: int = 10,
    embedder: Embedder | ModelChoice | None = None,
    token: Any = None,
    method: str = "auto",
    **choice: Any,
) -> pd.DataFrame:
    """The ``k`` images that best match a text, with the text tower of the dataset's model.

    Args:
        data: A dataset URL, the ``(df, matrix)`` pair of :func:`gcsemb.read_embeddings`, or a
            DataFrame with an ``embedding`` column. Pass the pair when searching repeatedly.
        query: What to look for, e.g. ``"a red car at night"``.
        k: How many results.
        embedder: The dataset's model, already loaded, or the
            :class:`~gcsemb.model.dataset_embedder.ModelChoice` that loads its text tower (default:
            the dataset's model, its weights recovered when that is safe).
        token: Credentials for ``gs://``.
        method: ``"exact"``, ``"index"`` or ``"auto"`` (see :func:`ranked`).
        **choice: ``model=``, ``pretrained=``, ``device=``: a ModelChoice's fields, as keywords.

    Returns:
        A DataFrame with ``uri``, ``score`` (cosine similarity) and ``md5``, best first.

    Example:
        >>> search_text("gs://my-bucket/embeddings", "a cat on a sofa", k=5)  # doctest: +SKIP
                                        uri     score                       md5
        0  gs://my-bucket/photos/cat-17.jpg  0.312871  lU1kSQ0Q...
        >>> search_text(dst, "a cat", pretrained="/models/tuned.pt")  # doctest: +SKIP
    """
    if not isinstance(query, str) or not query.strip():
        raise ValueError("Give a non-empty text to search for, e.g. 'a photo of a cat'.")
    chosen = chosen_model(embedder, **choice)
    df, matrix, dataset = embeddings_of(data, token=token, lean=True)
    text_tower = _dataset_embedder(df, "text", chosen, token=token or dataset)
    return ranked(df, matrix, text_tower.embed_texts([query])[0], k, method=method, kind="text")


def search_image(
    data: Any,
    image: Any,
    *,
    k: int = 10,
    embedder: Embedder | ModelChoice | None = None,
    token: Any = None,
    method: str = "auto",
    **choice: Any,
) -> pd.DataFrame:
    """The ``k`` images most similar to an image of the dataset or a new one.

    Args:
        data: A dataset URL, the ``(df, matrix)`` pair, or a DataFrame with ``embedding``.
        image: A URI in the dataset (its stored embedding is used: no model needed, and it comes
            back first), another image's URI or local path, a PIL image, image bytes, or an
            embedding vector.
        k: How many results.
        embedder: The dataset's model, for images not in the dataset: loaded, or the
            :class:`~gcsemb.model.dataset_embedder.ModelChoice` that loads it (default: see
            :func:`search_text`).
        token: Credentials for ``gs://``.
        method: ``"exact"``, ``"index"`` or ``"auto"`` (see :func:`ranked`).
        **choice: ``model=``, ``pretrained=``, ``device=``: a ModelChoice's fields, as keywords.

    Returns:
        A DataFrame with ``uri``, ``score`` and ``md5``, best first.

    Example:
        >>> hits = search_image((df, X), "gs://my-bucket/photos/cat-17.jpg", k=8)  # doctest: +SKIP
        >>> hits.uri[0]  # doctest: +SKIP
        'gs://my-bucket/photos/cat-17.jpg'
    """
    chosen = chosen_model(embedder, **choice)
    df, matrix, dataset = embeddings_of(data, token=token, lean=True)
    access = token or dataset
    if isinstance(image, np.ndarray) and image.ndim == 1:
        return ranked(df, matrix, image / (np.linalg.norm(image) or 1.0), k, method=method)

    def load() -> Embedder:
        return _dataset_embedder(df, "image", chosen, token=access)

    if isinstance(image, str | os.PathLike):
        uri = str(image)
        hit = np.flatnonzero((df["uri"] == uri).to_numpy()) if len(df) else []
        if len(hit):
            return ranked(df, matrix, matrix[hit[0]], k, method=method, first=uri)
        # the model first: weights the dataset names but gcsemb refuses cost no read
        chosen = load()
        pil = _as_pil(_read_image(uri, access))  # the caller named it: fetched as given
    else:
        pil = _as_pil(image)
        chosen = load()
    return ranked(df, matrix, chosen.embed_images([pil])[0], k, method=method)


def _dataset_embedder(
    df: pd.DataFrame, what: str, chosen: Embedder | ModelChoice, *, token: Any
) -> Embedder:
    """The model of the rows (checked against ``chosen`` when it is loaded) to embed ``what``."""
    tag = model_tag_of(df)
    if tag is not None:
        return embedder_for(tag, embedder=chosen, token=token, dataset=df.attrs.get("dataset"))
    if isinstance(chosen, ModelChoice):
        raise ValueError(f"No model tag in the rows: pass embedder= to embed the {what}.")
    return chosen


def _read_image(uri: str, token: Any) -> bytes:
    """The bytes of an image outside the dataset (a local path or any fsspec URL)."""
    if "://" not in uri:
        path = Path(uri).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{uri} is neither a uri of the dataset nor an image file: pass a dataset uri "
                "(df.uri), a local image path, or a gs:// URL."
            )
        return path.read_bytes()
    from gcsemb.storage import explain, open_store

    store = open_store(uri, token=token)
    (data,) = store.read_many([store.path])
    if isinstance(data, BaseException):
        raise explain(data, uri, store, "read") from data
    return data


def _as_pil(image: Any) -> Image.Image:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, bytes | bytearray | memoryview):
        from gcsemb.images.decode import decode_image

        decoded = decode_image(bytes(image))
        if not decoded.ok:
            raise ValueError(f"Cannot search with this image: {decoded.error}.")
        return decoded.image
    if isinstance(image, io.IOBase):
        return _as_pil(image.read())
    raise TypeError(
        f"Cannot search with a {type(image).__name__}: pass a dataset uri, an image path or "
        "URL, a PIL image, image bytes or an embedding vector."
    )


def __getattr__(name: str) -> Any:
    if name == "near_duplicates":  # moved to gcsemb.explore.duplicates; still importable from here
        from gcsemb.explore.duplicates import near_duplicates

        return near_duplicates
    raise AttributeError(f"module 'gcsemb.explore.search' has no attribute {name!r}")
