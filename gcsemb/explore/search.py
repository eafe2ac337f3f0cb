"""Search an embeddings dataset by text or by image.

Text and new images are embedded with the same model that embedded the dataset (its tag is in the
``model`` column). Pass an :class:`~gcsemb.model.embedder.Embedder`, or a
:class:`~gcsemb.model.dataset_embedder.ModelChoice` (``model=``/``pretrained=`` as given to
:func:`gcsemb.embed`, also accepted as keywords); with neither, the weights are recovered from the
dataset, but only from what cannot run or fetch anything a dataset's author chose (see
:mod:`gcsemb.model.dataset_embedder`).

Every search returns a DataFrame, best first: ``uri``, ``score`` (cosine similarity, 1.0 is an
identical embedding) and ``md5`` (for thumbnails). :func:`gcsemb.view.viz.image_grid` draws it.
The query's vector is ranked by :mod:`gcsemb.explore.ranking` (exactly, or through an index);
near-duplicate pairs are :mod:`gcsemb.explore.duplicates`.

Example:
    >>> from gcsemb.explore.search import search_text, search_image
    >>> df, X = gcsemb.read_embeddings("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> search_text((df, X), "a dog on a beach", k=5)  # doctest: +SKIP
    >>> search_text((df, X), "a dog", embedder=ModelChoice(device="cpu"))  # doctest: +SKIP
    >>> search_image((df, X), df.uri[0], k=5)  # the image itself comes first  # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.explore.inputs import embeddings_of, model_tag_of
from gcsemb.explore.ranking import ranked
from gcsemb.model.dataset_embedder import ModelChoice, chosen_model, embedder_for

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from gcsemb.model.embedder import Embedder


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
