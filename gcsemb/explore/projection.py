"""UMAP projection of an embeddings dataset to 2-D, saved next to the dataset and reused.

:func:`umap_project` runs UMAP (cosine metric, all cores by default) on the dataset's kNN graph
and returns one row per image: ``uri``, ``x``, ``y``, ``folder`` and the dataset's metadata
columns. The kNN graph comes from gcsemb's neighbour index (``knn_graph``), so the neighbour
search, the slow half of UMAP on a big dataset, is done once and reused; the layout runs on
umap-learn, or on cuML's UMAP when a GPU and cuML are present (:mod:`gcsemb.explore.umap_backends`).

Given a dataset URL it saves the coordinates as ``DST/_umap/<model-tag>.parquet`` (pyarrow and
pandas skip ``_`` folders, so the embeddings read exactly as before) and the next call with the
same images (same uri + md5 set) and the same parameters reads them back instead of recomputing.
The file also holds each point's neighbours in the form Apple's Embedding Atlas reads, so
``embedding-atlas DST/_umap/<tag>.parquet --x x --y y --neighbors neighbors`` opens it as is.

Speed: umap's compiled code is kept on disk (:mod:`gcsemb.explore.umap_cache`), and :func:`warm_up`
pays the first compile up front. ``seed=None`` (the default) lets umap use every core; a fixed
``seed`` makes the layout reproducible but single-threaded.

Example:
    >>> from gcsemb.explore.projection import umap_project
    >>> coords = umap_project("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> coords[["uri", "x", "y", "folder"]].head(2)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from contextlib import redirect_stdout
from typing import Any

import numpy as np

from gcsemb.explore.inputs import embeddings_of, model_tag_of
from gcsemb.explore.umap_backends import (
    MIN_DIST,
    N_NEIGHBORS,
    available,
    choose_backend,
    describe,
    fit_layout,
    without_self,
)
from gcsemb.storage import Store, open_store

log = logging.getLogger(__name__)

UMAP_DIR = "_umap"
META_PARAMS = b"gcsemb.umap.params"
META_FINGERPRINT = b"gcsemb.umap.fingerprint"
META_BACKEND = b"gcsemb.umap.backend"


def warm_up() -> float:
    """Compile umap's numba code now (the graph and layout steps :func:`umap_project` runs).

    With the on-disk cache (see the module doc) this costs tens of seconds once per machine and
    about a second afterwards. Returns the seconds it took.

    Example:
        >>> from gcsemb.explore.projection import warm_up
        >>> seconds = warm_up()  # doctest: +SKIP
    """
    started = time.perf_counter()
    matrix = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    with redirect_stdout(io.StringIO()):  # not the "UMAP of 300 points" line
        umap_project(matrix, n_epochs=2, n_neighbors=5, backend="umap-learn")
    return time.perf_counter() - started


def folder_of(uris: Sequence[str]) -> list[str]:
    """Each URI's folder below the folder all of them share, e.g. ``"cats"`` or ``"."``.

    Example:
        >>> folder_of(["gs://b/photos/cats/1.jpg", "gs://b/photos/dogs/2.jpg", "gs://b/photos/3.jpg"])
        ['cats', 'dogs', '.']
    """
    parents = [u.rsplit("/", 1)[0] if "/" in u else "" for u in uris]
    if not parents:
        return []
    common = parents[0]
    for p in parents[1:]:
        while common and not (p == common or p.startswith(common + "/")):
            common = common.rsplit("/", 1)[0] if "/" in common else ""
    return [p[len(common) :].lstrip("/") or "." for p in parents]


def projection_path(dst: str, model_tag: str) -> str:
    """The URL where the projection of the ``model_tag`` embeddings under ``dst`` is saved.

    Example:
        >>> projection_path("gs://b/emb", "ViT-B-32/laion2b_s34b_b79k")
        'gs://b/emb/_umap/ViT-B-32_laion2b_s34b_b79k.parquet'
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_tag).strip("._") or "model"
    return f"{str(dst).rstrip('/')}/{UMAP_DIR}/{safe}.parquet"


def fingerprint(uris: Sequence[str], md5s: Sequence[str | None] | None = None) -> str:
    """A hash of the set of (uri, md5) pairs: equal when the same image versions are projected."""
    md5s = md5s if md5s is not None else [""] * len(uris)
    lines = sorted(f"{u}\t{m or ''}" for u, m in zip(uris, md5s, strict=True))
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()


def umap_project(
    data: Any,
    *,
    n_neighbors: int = N_NEIGHBORS,
    min_dist: float = MIN_DIST,
    metric: str = "cosine",
    seed: int | None = None,
    n_epochs: int | None = None,
    init: str = "auto",
    backend: str = "auto",
    n_jobs: int = -1,
    low_memory: bool = True,
    knn: tuple[np.ndarray, np.ndarray] | None = None,
    dst: str | Store | None = None,
    model_tag: str | None = None,
    token: Any = None,
    reuse: bool = True,
    save: bool = True,
    verbose: bool = False,
    **umap_kwargs: Any,
) -> Any:
    """Project embeddings to 2-D with UMAP; saved next to the dataset and reused when unchanged.

    Prints one line when it computes: the number of points and the backend that runs.

    Args:
        data: A dataset URL (as given to :func:`gcsemb.embed`), the ``(df, matrix)`` pair of
            :func:`gcsemb.read_embeddings`, a DataFrame with an ``embedding`` column, or an
            ``(n, dim)`` array (then nothing is saved).
        n_neighbors: Neighbourhood size: larger keeps more global structure, smaller more local.
        min_dist: How tightly points may pack (0 to 1): smaller gives tighter clusters.
        metric: Distance between embeddings; CLIP embeddings compare by cosine (the kNN graph
            is cosine; the metric matters to umap-learn's init and to cuML).
        seed: None (default) lets umap use every core and gives a slightly different picture
            each time; a seed (e.g. 42) gives a repeatable layout, computed on one core.
        n_epochs: Layout optimisation epochs (umap's default: 500 below 10k points, else 200);
            fewer is faster and rougher.
        init: ``"auto"`` (spectral, umap's default, up to 100k points; PCA beyond, where
            umap-learn's spectral init gets slow), ``"spectral"``, ``"pca"`` or ``"random"``.
        backend: ``"auto"`` (cuML's UMAP when cuML is installed and a CUDA device is present,
            else umap-learn), ``"umap-learn"`` or ``"cuml"``.
        n_jobs: umap-learn's threads: -1 (default) uses every core; a ``seed`` forces one.
        low_memory: umap-learn's low-memory mode.
        knn: The rows' kNN graph ``(indices, distances)`` if already at hand (self first, at
            least ``n_neighbors`` columns, cosine distance); default: computed here.
        dst: Where to save/reuse the projection when ``data`` is not a URL (the dataset folder).
        model_tag: The model tag (``model`` column) to project when the dataset holds several.
        token: Credentials for ``gs://`` (see :mod:`gcsemb.storage.auth`), or a
            :class:`~gcsemb.storage.Store` whose access to reuse; default: the access the data
            was read with.
        reuse: Read a saved projection with the same images and parameters instead of computing
            (whichever backend computed it).
        save: Save the projection to ``DST/_umap/<model-tag>.parquet``, with each point's
            neighbours in Embedding Atlas's form (column ``neighbors``).
        verbose: Let the backend print its progress.
        **umap_kwargs: Any other ``umap.UMAP`` parameter (``spread``, ``densmap``...).

    Returns:
        A DataFrame in the dataset's row order: ``uri``, ``x``, ``y``, ``folder`` (the image's
        folder below the common prefix, handy for ``color_by``) and the other metadata columns
        (without ``embedding``). ``df.attrs["umap"]`` holds the parameters, the ``model_tag``,
        the ``backend``, the seconds taken, whether it was reused and where it is saved
        (``path``).

    Raises:
        ImportError: umap-learn is not installed (``pip install 'gcsemb[viz]'``).
        ValueError: No embeddings, several models and no ``model_tag``, or ``backend="cuml"``
            where cuML or a GPU is missing.

    Example:
        >>> coords = umap_project("gs://my-bucket/embeddings", n_neighbors=30)  # doctest: +SKIP
        UMAP of 1,000,000 points with umap-learn on 2 cores
        >>> coords.attrs["umap"]["reused"]  # doctest: +SKIP
        False
    """
    chosen = choose_backend(backend, **available(backend))  # before a read it would waste
    frame, matrix, source = _rows(data, token, model_tag)
    store = open_store(dst, token=token or source) if dst is not None else source
    params = {
        "n_neighbors": int(n_neighbors),
        "min_dist": float(min_dist),
        "metric": metric,
        "seed": seed,
        "n_epochs": n_epochs,
        "init": init,
        **{k: v for k, v in sorted(umap_kwargs.items())},
    }
    tag = model_tag_of(frame)
    uris = frame["uri"].tolist() if "uri" in frame else None
    md5s = frame["md5"].tolist() if "md5" in frame else None
    key = fingerprint(uris, md5s) if uris is not None else None
    saved = store.at(projection_path(store.url, tag)) if store and tag and key else None

    started = time.perf_counter()
    loaded = _load(saved, params, key, uris) if saved and reuse else None
    if loaded is not None:
        xy, chosen = loaded
        log.info("reused the UMAP projection saved at %s", saved.url)
    else:
        if knn is None:
            knn = _neighbour_graph(data, frame, matrix, params["n_neighbors"], token)
        print(describe(chosen, len(matrix), seed, n_jobs))
        xy = _fit(
            matrix, knn, params, chosen, n_jobs=n_jobs, low_memory=low_memory, verbose=verbose
        )
        if saved and save:
            _save(saved, uris, md5s, xy, knn, params=params, key=key, backend=chosen)
    out = _coordinates(frame, xy, uris)
    out.attrs["umap"] = {
        **params,
        "model_tag": tag,
        "backend": chosen,
        "seconds": time.perf_counter() - started,
        "reused": loaded is not None,
        "path": saved.url if saved else None,
    }
    out.attrs["store"] = frame.attrs.get("store")  # thumbnails reuse the dataset's access
    out.attrs["dataset"] = frame.attrs.get("dataset")  # and fetch only under its source
    return out


def _rows(data: Any, token: Any, model_tag: str | None) -> tuple[Any, np.ndarray, Store | None]:
    """``(frame, matrix, dataset)`` of what :func:`umap_project` was given."""
    if isinstance(data, np.ndarray):
        import pandas as pd

        return pd.DataFrame(index=range(len(data))), np.asarray(data), None
    return embeddings_of(data, token=token, model_tag=model_tag)


def _coordinates(frame: Any, xy: np.ndarray, uris: list[str] | None) -> Any:
    """The projection's rows: ``uri``, ``x``, ``y``, ``folder``, then ``frame``'s metadata."""
    import pandas as pd

    out = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]}, index=frame.index)
    if uris is not None:
        out.insert(0, "uri", uris)
        out["folder"] = folder_of(uris)
    for column in frame.columns:
        if column not in out and column != "embedding":
            out[column] = frame[column]
    return out.reset_index(drop=True)


def _neighbour_graph(
    data: Any, frame: Any, matrix: np.ndarray, k: int, token: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The rows' kNN graph from :func:`gcsemb.explore.neighbours.knn_graph`.

    A dataset's comes from its index (saved and reused there); rows given in memory are
    searched exactly, or through an in-memory index when there are many.
    """
    from gcsemb.explore.neighbours import knn_graph
    from gcsemb.storage import Store

    if len(matrix) == 0:
        raise ValueError("No embeddings to project: the dataset is empty.")
    k = min(k, len(matrix))
    if isinstance(data, str | os.PathLike | Store):
        return knn_graph(data, k, token=token, model_tag=model_tag_of(frame))
    return knn_graph((frame, matrix), k)


def _fit(
    matrix: np.ndarray,
    knn: tuple[np.ndarray, np.ndarray],
    params: dict[str, Any],
    backend: str,
    **options: Any,
) -> np.ndarray:
    """Run UMAP on ``matrix``; tiny inputs (under 4 points) get a trivial layout."""
    n = len(matrix)
    if n < 4:  # umap's spectral layout needs a few points
        return np.column_stack([np.arange(n, dtype=np.float32), np.zeros(n, np.float32)])
    params = {**params, "n_neighbors": min(params["n_neighbors"], n - 1)}
    return fit_layout(matrix, knn, params, backend=backend, **options)


def _load(
    saved: Store, params: dict[str, Any], key: str, uris: list[str]
) -> tuple[np.ndarray, str] | None:
    """``(xy, backend)`` saved for the same images and parameters, in ``uris`` order."""
    import pyarrow.parquet as pq

    try:
        if not saved.fs.exists(saved.path):
            return None
        source = io.BytesIO(saved.fs.cat_file(saved.path))
        table = pq.read_table(source, columns=["uri", "x", "y"])  # not the neighbours
    except Exception as e:  # unreadable: compute again (and overwrite)
        log.warning("cannot read the saved projection %s (%s): computing it again", saved.url, e)
        return None
    meta = table.schema.metadata or {}
    try:
        saved_params = json.loads(meta.get(META_PARAMS, b"{}"))
    except ValueError:
        return None
    if meta.get(META_FINGERPRINT, b"").decode() != key or saved_params != _jsonable(params):
        return None
    rows = table.to_pandas().drop_duplicates("uri").set_index("uri")
    try:
        xy = rows.loc[uris, ["x", "y"]].to_numpy(np.float32)
    except KeyError:
        return None
    return xy, meta.get(META_BACKEND, b"umap-learn").decode()


def atlas_neighbors(knn: tuple[np.ndarray, np.ndarray]) -> Any:
    """Each row's neighbours as Embedding Atlas reads them: ``{"ids": [...], "distances": [...]}``.

    A pyarrow struct array (``ids`` list<int64>, ``distances`` list<float32>): zero-based row
    numbers of the same rows, nearest first, the row itself left out.

    Example:
        >>> ids = np.array([[0, 2, 1], [1, 0, 2], [2, 0, 1]])
        >>> dist = np.array([[0, 0.1, 0.3], [0, 0.3, 0.4], [0, 0.1, 0.4]], np.float32)
        >>> atlas_neighbors((ids, dist))[0].as_py()["ids"]
        [2, 1]
    """
    import pyarrow as pa

    indices, distances = knn
    n, k = indices.shape
    keep = without_self(indices, np.arange(n), max(k - 1, 0))
    ids = np.take_along_axis(indices, keep, axis=1).astype(np.int64)
    dist = np.take_along_axis(distances, keep, axis=1).astype(np.float32)
    found = ids >= 0  # an index may leave a slot empty (-1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(found.sum(axis=1))]).astype(np.int32))
    ids, dist = ids[found], dist[found]
    return pa.StructArray.from_arrays(
        [pa.ListArray.from_arrays(offsets, pa.array(ids)), pa.ListArray.from_arrays(offsets, dist)],
        names=["ids", "distances"],
    )


def _save(
    saved: Store,
    uris: list[str],
    md5s: list[str | None] | None,
    xy: np.ndarray,
    knn: tuple[np.ndarray, np.ndarray],
    *,
    params: dict[str, Any],
    key: str,
    backend: str,
) -> None:
    """Write the coordinates and neighbours as parquet (atomically); failures only warn."""
    import pyarrow as pa

    from gcsemb.embedding.writer import write_parquet

    table = pa.table(
        {
            "uri": pa.array(uris, pa.string()),
            "md5": pa.array(md5s if md5s is not None else [None] * len(uris), pa.string()),
            "x": pa.array(xy[:, 0], pa.float32()),
            "y": pa.array(xy[:, 1], pa.float32()),
            "neighbors": atlas_neighbors(knn),
        }
    )
    table = table.replace_schema_metadata(
        {
            META_PARAMS: json.dumps(_jsonable(params)).encode(),
            META_FINGERPRINT: key.encode(),
            META_BACKEND: backend.encode(),
        }
    )
    try:
        write_parquet(saved, saved.path, table)
    except Exception as e:  # a read-only dataset still gets its plot
        log.warning(
            "cannot save the projection to %s (%s); it will be computed again", saved.url, e
        )


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params, default=str, sort_keys=True))
