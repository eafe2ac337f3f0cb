"""Importing umap-learn with numba's on-disk cache switched on for its compiled functions.

umap-learn is compiled by numba on first use, which costs tens of seconds per process;
umap-learn does not keep its compiled code. gcsemb switches numba's on-disk cache on for umap's
functions when it imports umap, so the compile is paid once per machine (per installed umap
version): later processes load the machine code in about a second. The cache lives where numba
keeps it (next to the installed package, or numba's user cache dir when site-packages is
read-only; ``NUMBA_CACHE_DIR`` moves it). :func:`gcsemb.explore.projection.warm_up` pays the compile
up front, e.g. while a notebook loads data or in a Docker build.

Example:
    >>> from gcsemb.explore.umap_cache import import_umap
    >>> umap = import_umap()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from gcsemb.extras import require

log = logging.getLogger(__name__)

_UMAP_MODULES = (
    "umap.umap_",
    "umap.layouts",
    "umap.utils",
    "umap.spectral",
    "umap.distances",
    "umap.sparse",
    "pynndescent.pynndescent_",
    "pynndescent.utils",
    "pynndescent.rp_trees",
    "pynndescent.distances",
    "pynndescent.sparse",
    "pynndescent.sparse_nndescent",
    "pynndescent.graph_utils",
)
_CACHED = False


def import_umap() -> Any:
    """Import umap-learn with numba's on-disk cache switched on for its compiled functions.

    Raises:
        ImportError: umap-learn is missing; the message names the extra to install.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap warns about optional TensorFlow at import
        umap = require(
            "umap", "viz", "UMAP projections", "pip install 'gcsemb[viz]' (or umap-learn)"
        )
    _enable_numba_cache()
    return umap


def _enable_numba_cache() -> None:
    """Let numba keep umap's compiled code on disk (umap-learn compiles it anew per process)."""
    global _CACHED
    if _CACHED:
        return
    import importlib

    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # pragma: no cover - numba moved the class
        _CACHED = True
        return
    enabled = 0
    for name in _UMAP_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for fn in vars(module).values():
            if isinstance(fn, Dispatcher) and type(fn._cache).__name__ == "NullCache":
                try:
                    fn.enable_caching()
                    enabled += 1
                except Exception as e:  # a function numba cannot cache is only compiled anew
                    log.debug("numba cannot cache %s: %s", getattr(fn, "__name__", fn), e)
    log.debug("numba on-disk cache enabled for %d umap functions", enabled)
    _CACHED = True
