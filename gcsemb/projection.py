"""UMAP projection of an embeddings dataset to 2-D, saved next to the dataset and reused.

:func:`umap_project` runs `umap-learn <https://umap-learn.readthedocs.io>`_ (cosine metric, fixed
seed by default) and returns one row per image: ``uri``, ``x``, ``y``, ``folder`` and the dataset's
metadata columns. Given a dataset URL it saves the coordinates as
``DST/_umap/<model-tag>.parquet`` (pyarrow and pandas skip ``_`` folders, so the embeddings read
exactly as before) and the next call with the same images (same uri + md5 set) and the same
parameters reads them back instead of recomputing.

Speed: umap's compiled code is kept on disk (:mod:`gcsemb.umap_cache`), and :func:`warm_up` pays
the first compile up front. A fixed ``seed`` makes the layout reproducible but single-threaded;
``seed=None`` lets umap use every core.

Example:
    >>> from gcsemb.projection import umap_project
    >>> coords = umap_project("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> coords[["uri", "x", "y", "folder"]].head(2)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from gcsemb.search import embeddings_of, model_tag_of
from gcsemb.storage import Store, open_store
from gcsemb.umap_cache import import_umap

log = logging.getLogger(__name__)

UMAP_DIR = "_umap"
META_PARAMS = b"gcsemb.umap.params"
META_FINGERPRINT = b"gcsemb.umap.fingerprint"


def warm_up() -> float:
    """Compile umap's numba code now (both its small-set and its nearest-neighbour-descent paths).

    With the on-disk cache (see the module doc) this costs tens of seconds once per machine and
    about a second afterwards. Returns the seconds it took.

    Example:
        >>> from gcsemb.projection import warm_up
        >>> seconds = warm_up()  # doctest: +SKIP
    """
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    for n in (64, 4200):  # umap uses exact neighbours below 4096 points, NN-descent above
        matrix = rng.standard_normal((n, 8)).astype(np.float32)
        umap_project(matrix, n_epochs=2, n_neighbors=5)
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
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    seed: int | None = 42,
    n_epochs: int | None = None,
    init: str = "spectral",
    low_memory: bool = True,
    dst: str | Store | None = None,
    model_tag: str | None = None,
    token: Any = None,
    reuse: bool = True,
    save: bool = True,
    verbose: bool = False,
    **umap_kwargs: Any,
) -> Any:
    """Project embeddings to 2-D with UMAP; saved next to the dataset and reused when unchanged.

    Args:
        data: A dataset URL (as given to :func:`gcsemb.embed`), the ``(df, matrix)`` pair of
            :func:`gcsemb.read_embeddings`, a DataFrame with an ``embedding`` column, or an
            ``(n, dim)`` array (then nothing is saved).
        n_neighbors: Neighbourhood size: larger keeps more global structure, smaller more local.
        min_dist: How tightly points may pack (0 to 1): smaller gives tighter clusters.
        metric: Distance between embeddings; CLIP embeddings compare by cosine.
        seed: Random seed for a reproducible layout (umap then runs single-threaded); None lets
            umap use every core and gives a slightly different picture each time.
        n_epochs: Layout optimisation epochs (umap's default: 500 below 10k points, else 200);
            fewer is faster and rougher.
        init: ``"spectral"`` (umap's default), ``"pca"`` or ``"random"``.
        low_memory: umap's low-memory nearest-neighbour search (slower, much less memory).
        dst: Where to save/reuse the projection when ``data`` is not a URL (the dataset folder).
        model_tag: The model tag (``model`` column) to project when the dataset holds several.
        token: Credentials for ``gs://`` (see :mod:`gcsemb.auth`), or a
            :class:`~gcsemb.storage.Store` whose access to reuse; default: the access the data
            was read with.
        reuse: Read a saved projection with the same images and parameters instead of computing.
        save: Save the projection to ``DST/_umap/<model-tag>.parquet``.
        verbose: Let umap print its progress.
        **umap_kwargs: Any other ``umap.UMAP`` parameter (``spread``, ``densmap``...).

    Returns:
        A DataFrame in the dataset's row order: ``uri``, ``x``, ``y``, ``folder`` (the image's
        folder below the common prefix, handy for ``color_by``) and the other metadata columns
        (without ``embedding``). ``df.attrs["umap"]`` holds the parameters, the ``model_tag``,
        the seconds taken, whether it was reused and where it is saved (``path``).

    Raises:
        ImportError: umap-learn is not installed (``pip install 'gcsemb[viz]'``).
        ValueError: No embeddings, or several models and no ``model_tag``.

    Example:
        >>> coords = umap_project("gs://my-bucket/embeddings", n_neighbors=30)  # doctest: +SKIP
        >>> coords.attrs["umap"]["reused"]  # doctest: +SKIP
        False
    """
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
    path = saved.url if saved else None

    started = time.perf_counter()
    xy = _load(saved, params, key, uris) if saved and reuse else None
    reused = xy is not None
    if xy is None:
        xy = _fit(matrix, params, low_memory=low_memory, verbose=verbose)
        if saved and save:
            _save(saved, uris, md5s, xy, params=params, key=key)
    seconds = time.perf_counter() - started

    out = _coordinates(frame, xy, uris)
    out.attrs["umap"] = {
        **params,
        "model_tag": tag,
        "seconds": seconds,
        "reused": reused,
        "path": path,
    }
    out.attrs["store"] = frame.attrs.get("store")  # thumbnails reuse the dataset's access
    out.attrs["dataset"] = frame.attrs.get("dataset")  # and fetch only under its source
    if reused:
        log.info("reused the UMAP projection saved at %s", path)
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


def _fit(matrix: np.ndarray, params: dict[str, Any], *, low_memory: bool, verbose: bool) -> Any:
    """Run UMAP on ``matrix``; tiny inputs (under 4 points) get a trivial layout."""
    n = len(matrix)
    if n == 0:
        raise ValueError("No embeddings to project: the dataset is empty.")
    if n < 4:  # umap's spectral layout needs a few points
        return np.column_stack([np.arange(n, dtype=np.float32), np.zeros(n, np.float32)])
    umap = import_umap()
    kwargs = dict(params)
    seed = kwargs.pop("seed")
    kwargs["n_neighbors"] = min(kwargs["n_neighbors"], n - 1)
    reducer = umap.UMAP(
        n_components=2,
        random_state=seed,
        low_memory=low_memory,
        verbose=verbose,
        **({"n_jobs": -1} if seed is None else {}),
        **kwargs,
    )
    with warnings.catch_warnings():
        # "n_jobs overridden by random_state", sklearn renames, spectral-init fallbacks
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # pynndescent's nn_descent cannot be cached by numba: it is compiled per process
        warnings.filterwarnings("ignore", message="Cannot cache compiled function")
        xy = reducer.fit_transform(np.ascontiguousarray(matrix, dtype=np.float32))
    return np.asarray(xy, dtype=np.float32)


def _load(saved: Store, params: dict[str, Any], key: str, uris: list[str]) -> np.ndarray | None:
    """Saved coordinates in ``uris`` order, if saved for the same images and parameters."""
    import pyarrow.parquet as pq

    try:
        if not saved.fs.exists(saved.path):
            return None
        table = pq.read_table(io.BytesIO(saved.fs.cat_file(saved.path)))
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
    saved = table.to_pandas().drop_duplicates("uri").set_index("uri")
    try:
        return saved.loc[uris, ["x", "y"]].to_numpy(np.float32)
    except KeyError:
        return None


def _save(
    saved: Store,
    uris: list[str],
    md5s: list[str | None] | None,
    xy: np.ndarray,
    *,
    params: dict[str, Any],
    key: str,
) -> None:
    """Write the coordinates as parquet (atomically), keyed by uri; failures only warn."""
    import pyarrow as pa

    from gcsemb.writer import write_parquet

    table = pa.table(
        {
            "uri": pa.array(uris, pa.string()),
            "md5": pa.array(md5s if md5s is not None else [None] * len(uris), pa.string()),
            "x": pa.array(xy[:, 0], pa.float32()),
            "y": pa.array(xy[:, 1], pa.float32()),
        }
    )
    table = table.replace_schema_metadata(
        {META_PARAMS: json.dumps(_jsonable(params)).encode(), META_FINGERPRINT: key.encode()}
    )
    try:
        write_parquet(saved.fs, saved.path, table)
    except Exception as e:  # a read-only dataset still gets its plot
        log.warning(
            "cannot save the projection to %s (%s); it will be computed again", saved.url, e
        )


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params, default=str, sort_keys=True))
