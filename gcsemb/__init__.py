"""gcsemb: CLIP embeddings of the images in a Google Cloud Storage bucket, as parquet.

``import gcsemb`` is light (no torch, no gcsfs); each helper loads its heavy parts when first used.

Example:
    >>> import gcsemb
    >>> for obj in gcsemb.list_images("gs://my-bucket/photos", limit=3):  # doctest: +SKIP
    ...     print(obj.uri)
"""

from __future__ import annotations

import importlib
import os
from typing import Any

if os.environ.get("STORAGE_EMULATOR_HOST"):
    # Must be set before gcsfs is imported; see gcsemb.emulator.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

_EXPORTS = {
    "open_store": "gcsemb.storage",
    "Store": "gcsemb.storage",
    "list_images": "gcsemb.storage",
    "ObjectInfo": "gcsemb.storage",
    "Identity": "gcsemb.storage.auth",
    "GcsembError": "gcsemb.errors",
    "AuthError": "gcsemb.errors",
    "AccessDenied": "gcsemb.errors",
    "DestinationBusy": "gcsemb.lease",
    "DestinationUnwritable": "gcsemb.writer",
    "EmbedSummary": "gcsemb.report",
    "embed": "gcsemb.pipeline",
    "EmbedConfig": "gcsemb.config",
    "RayEngine": "gcsemb.config",
    "read_embeddings": "gcsemb.dataset",
    "read_errors": "gcsemb.dataset",
    "iter_embeddings": "gcsemb.dataset",
    "build_index": "gcsemb.index",
    "knn_graph": "gcsemb.neighbours",
    "load_embedder": "gcsemb.embedder",
    "ModelChoice": "gcsemb.dataset_embedder",
    "umap_project": "gcsemb.projection",
    "plot_projection": "gcsemb.viz",
    "image_grid": "gcsemb.grid",
    "search_text": "gcsemb.search",
    "search_image": "gcsemb.search",
    "near_duplicates": "gcsemb.duplicates",
    "Explorer": "gcsemb.widgets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name == "__version__":  # one place for it, pyproject.toml; looked up on first use only
        return _version()  # (importlib.metadata alone costs 25 ms: most of `import gcsemb`)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gcsemb' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("gcsemb")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "0+unknown"


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, "__version__"])
