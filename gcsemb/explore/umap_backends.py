"""Running UMAP from a precomputed kNN graph: umap-learn on the CPU, or cuML's UMAP on a GPU.

:func:`choose_backend` picks the implementation (a pure function of what is installed and
present), :func:`fit_layout` runs it on the embeddings and their kNN graph (so the neighbour
search happens once, in gcsemb's index, and is reused), and :func:`neighbourhood_preservation`
measures how much of each point's neighbourhood the 2-D layout keeps.

Example:
    >>> choose_backend("auto", cuml_available=False, gpu=False)
    'umap-learn'
    >>> choose_backend("auto", cuml_available=True, gpu=True)
    'cuml'
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy loads where it is used: the CLI imports BACKENDS for its --help
    import numpy as np

BACKENDS = ("auto", "umap-learn", "cuml")
N_NEIGHBORS = 15
"""UMAP's neighbourhood by default (:func:`gcsemb.umap_project`, ``gcsemb umap``)."""
MIN_DIST = 0.1
"""UMAP's ``min_dist`` by default (:func:`gcsemb.umap_project`, ``gcsemb umap``)."""
SPECTRAL_MAX = 100_000  # init="auto": umap-learn's spectral init up to here, PCA beyond
PCA_BLOCK = 16_384  # rows at a time in :func:`pca_layout` (64 MiB of float64 at 512-d)
CUML_HINT = (
    "pip install cuml-cu12 (Colab's GPU runtime ships it) on a machine with an NVIDIA GPU, "
    "or use backend='umap-learn'"
)


def choose_backend(requested: str, *, cuml_available: bool, gpu: bool) -> str:
    """The UMAP implementation to run: ``"cuml"`` or ``"umap-learn"``.

    Args:
        requested: ``"auto"`` (cuML when it is importable and a CUDA device is present, else
            umap-learn), ``"umap-learn"`` or ``"cuml"``.
        cuml_available: Whether RAPIDS cuML can be imported.
        gpu: Whether a CUDA device is present.

    Raises:
        ValueError: An unknown backend, or ``"cuml"`` asked for where it cannot run.

    Example:
        >>> choose_backend("umap-learn", cuml_available=True, gpu=True)
        'umap-learn'
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend={requested!r}: use one of {', '.join(BACKENDS)}.")
    if requested == "auto":
        return "cuml" if cuml_available and gpu else "umap-learn"
    if requested == "cuml" and not (cuml_available and gpu):
        missing = "cuML is not installed" if not cuml_available else "no CUDA device is present"
        raise ValueError(f"backend='cuml' cannot run here: {missing}. {CUML_HINT}.")
    return requested


def available(requested: str) -> dict[str, bool]:
    """``cuml_available`` and ``gpu`` for :func:`choose_backend`, probing only what it needs."""
    if requested == "umap-learn":
        return {"cuml_available": False, "gpu": False}
    cuml = importlib.util.find_spec("cuml") is not None
    return {"cuml_available": cuml, "gpu": cuml and _cuda_device()}


def _cuda_device() -> bool:
    """Whether CuPy (which cuML brings) sees a CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device, or a broken CUDA install: the CPU runs it
        return False


def describe(backend: str, n: int, seed: int | None, n_jobs: int) -> str:
    """The one line :func:`~.projection.umap_project` prints about the run it starts."""
    if backend == "cuml":
        how = "on the GPU"
    elif seed is not None:
        how = f"on one core (seed {seed}: a repeatable layout)"
    else:
        cores = (os.cpu_count() or 1) if n_jobs < 1 else n_jobs
        how = f"on {cores} core{'s' if cores != 1 else ''}"
    return f"UMAP of {n:,} point{'s' if n != 1 else ''} with {backend} {how}"


def initial_layout(init: str, n: int, backend: str) -> str:
    """The init a backend runs for ``init="auto"``: spectral, except PCA for umap-learn on big n.

    umap-learn's spectral init lays out each connected component of the kNN graph separately,
    copying the whole graph once per component: on a million CLIP embeddings (thousands of
    components) that alone takes longer than the layout. PCA init keeps the same neighbourhoods
    (measured in ``benchmarks/bench_umap.py``). cuML's spectral init is fast on the GPU.

    Example:
        >>> initial_layout("auto", 1_000_000, "umap-learn")
        'pca'
    """
    if init != "auto":
        return init
    return "spectral" if backend == "cuml" or n <= SPECTRAL_MAX else "pca"


def fit_layout(
    matrix: np.ndarray,
    knn: tuple[np.ndarray, np.ndarray],
    params: dict[str, Any],
    *,
    backend: str,
    n_jobs: int = -1,
    low_memory: bool = True,
    verbose: bool = False,
) -> np.ndarray:
    """The ``(n, 2)`` float32 UMAP layout of ``matrix`` from its kNN graph ``knn``.

    Args:
        matrix: The ``(n, dim)`` embeddings (n of at least 4).
        knn: ``(indices, distances)``, ``(n, k)`` each, self first, with ``k`` at least
            ``params["n_neighbors"]``.
        params: ``umap.UMAP`` parameters, with ``seed`` for ``random_state`` and ``init``
            (``"auto"``: see :func:`initial_layout`).
        backend: ``"umap-learn"`` or ``"cuml"`` (see :func:`choose_backend`).
        n_jobs: umap-learn's threads (-1: all cores); a seed makes it single-threaded.
        low_memory: umap-learn's low-memory mode.
        verbose: Let the backend print its progress.
    """
    import numpy as np

    kwargs = dict(params)
    seed = kwargs.pop("seed")
    kwargs["init"] = initial_layout(kwargs.get("init", "auto"), len(matrix), backend)
    k = kwargs["n_neighbors"]
    graph = (np.ascontiguousarray(knn[0][:, :k]), np.ascontiguousarray(knn[1][:, :k]))
    data = np.ascontiguousarray(matrix, dtype=np.float32)
    if backend == "cuml":
        return _fit_cuml(data, graph, kwargs, seed=seed, verbose=verbose)
    if isinstance(kwargs["init"], str) and kwargs["init"] == "pca":
        kwargs["init"] = pca_layout(data, seed)
        # from a kNN graph and a layout to start from, umap-learn reads the embeddings only for
        # their row count, but copies them (``X[index]``) several times (2 GB each at 1M rows):
        # it is given the starting layout's rows instead, and lays out the same points the same
        data = kwargs["init"]
    from gcsemb.explore.umap_cache import import_umap

    umap = import_umap()
    reducer = umap.UMAP(
        n_components=2,
        random_state=seed,
        n_jobs=1 if seed is not None else n_jobs,
        low_memory=low_memory,
        verbose=verbose,
        precomputed_knn=graph,
        **kwargs,
    )
    with warnings.catch_warnings():
        # "no NNDescent search index", sklearn renames, spectral-init fallbacks
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Cannot cache compiled function")
        xy = reducer.fit_transform(data)
    return np.asarray(xy, dtype=np.float32)


def pca_layout(matrix: np.ndarray, seed: int | None = None) -> np.ndarray:
    """umap-learn's ``init="pca"`` layout, without a copy of ``matrix``.

    The two principal components from the ``(dim, dim)`` covariance, accumulated a block of
    rows at a time, scaled to +-10 with umap-learn's tiny noise, as its own PCA init does; its
    scikit-learn PCA first copies the whole matrix to centre it (2 GB more at 1M rows).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = rng.standard_normal((500, 8)).astype(np.float32) * [5, 2, 1, 1, 1, 1, 1, 1]
        >>> xy = pca_layout(X, seed=0)
        >>> xy.shape, round(float(np.abs(xy).max()))
        ((500, 2), 10)
    """
    import numpy as np

    n, dim = matrix.shape
    total, products = np.zeros(dim), np.zeros((dim, dim))
    for a in range(0, n, PCA_BLOCK):
        block = np.asarray(matrix[a : a + PCA_BLOCK], np.float64)
        total += block.sum(0)
        products += block.T @ block
    mean = total / n
    _, vectors = np.linalg.eigh(products / n - np.outer(mean, mean))
    axes = vectors[:, ::-1][:, :2]  # the largest two, largest first
    xy = np.empty((n, 2), np.float32)
    for a in range(0, n, PCA_BLOCK):
        xy[a : a + PCA_BLOCK] = (np.asarray(matrix[a : a + PCA_BLOCK], np.float64) - mean) @ axes
    xy *= 10 / max(float(np.abs(xy).max()), 1e-12)
    noise = np.random.RandomState(seed).normal(scale=1e-4, size=xy.shape)
    return xy + noise.astype(np.float32)


def _fit_cuml(
    data: np.ndarray,
    graph: tuple[np.ndarray, np.ndarray],
    kwargs: dict[str, Any],
    *,
    seed: int | None,
    verbose: bool,
) -> np.ndarray:
    """Run cuML's UMAP (``cuml.manifold.UMAP``) on the same kNN graph (its ``precomputed_knn``)."""
    import numpy as np

    from gcsemb.extras import require

    manifold = require("cuml.manifold", None, "UMAP on a GPU", CUML_HINT, package="cuML")
    reducer = manifold.UMAP(
        n_components=2,
        random_state=seed,
        precomputed_knn=graph,
        verbose=verbose,
        output_type="numpy",
        **kwargs,
    )
    return np.asarray(reducer.fit_transform(data), dtype=np.float32)


def without_self(ids: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Column positions of each row's first ``k`` neighbours other than the row itself.

    ``ids[i]`` lists row ``rows[i]``'s neighbours, nearest first; the row itself is usually
    first but need not be (exact copies tie with it), and may be absent.

    Example:
        >>> import numpy as np
        >>> without_self(np.array([[0, 5, 6], [9, 1, 7]]), np.array([0, 1]), 2)
        array([[1, 2],
               [0, 2]])
    """
    import numpy as np

    others = ids != rows[:, None]
    return np.argsort(~others, axis=1, kind="stable")[:, :k]


def neighbourhood_preservation(
    knn_indices: np.ndarray,
    xy: np.ndarray,
    *,
    k: int = 15,
    sample: int | None = 100_000,
    seed: int = 0,
) -> float:
    """Share of each point's ``k`` nearest neighbours (embedding space) among its ``k`` in 2-D.

    1.0 when every neighbourhood survives the projection; a random layout scores about
    ``k / n``. Self is left out on both sides.

    Args:
        knn_indices: ``(n, k + 1)`` neighbour ids in embedding space, nearest first, self
            included (e.g. the indices of ``knn_graph``); fewer columns lower ``k``.
        xy: The ``(n, 2)`` layout, in the same row order.
        k: Neighbours compared per point.
        sample: Points measured (chosen at random); None measures all.
        seed: Seed of the sample.

    Example:
        >>> import numpy as np
        >>> ids = np.array([[0, 1], [1, 0], [2, 3], [3, 2]])
        >>> xy = np.array([[0.0, 0], [0, 1], [9, 0], [9, 1]])
        >>> neighbourhood_preservation(ids, xy, k=1)
        1.0
    """
    import numpy as np
    from scipy.spatial import cKDTree

    n = len(xy)
    k = min(k, knn_indices.shape[1] - 1, n - 1)
    rows = np.arange(n)
    if sample is not None and n > sample:
        rows = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    high = knn_indices[rows]
    high = np.take_along_axis(high, without_self(high, rows, k), axis=1)
    _, near = cKDTree(np.asarray(xy, dtype=np.float64)).query(xy[rows], k=min(k + 1, n))
    near = np.take_along_axis(near, without_self(near, rows, k), axis=1)
    kept = (high[:, :, None] == near[:, None, :]).any(axis=2).sum(axis=1)
    return float(kept.mean() / k)
