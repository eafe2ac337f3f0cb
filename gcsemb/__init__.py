"""gcsemb: CLIP embeddings of the images in a Google Cloud Storage bucket, as parquet.

``import gcsemb`` is light (no torch, no gcsfs); each helper loads its heavy parts when first used.

The rooms, in the order data flows through them::

    storage/    one handle per URL (Store) and one file per backend (gcs, files): listing,
                reads, atomic and conditional writes, credentials (auth), the cache root
    embedding/  gcsemb.embed: config, run preamble, stages, engines (local, Ray), writer,
                lease, report
    images/     bytes to pixels: PIL decode in bounded memory, torchvision decode on a GPU
    model/      the cached open_clip embedder, checkpoints, a dataset's model
    explore/    reading a dataset lean, the neighbour index, search, near-duplicates, UMAP
    view/       plots, thumbnails and the notebook Explorer (drawing apart from computing)
    demo/       the emulator (fake-gcs-server) and sample photos: the embedded default
    cli/        one module per command of ``gcsemb``
    notebook.py helpers for notebooks (sign-in, Session); errors.py, extras.py: shared

The names below are imported from ``gcsemb`` directly; they load their room on first use.

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
    # Must be set before gcsfs is imported; see gcsemb.demo.emulator.
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
    "DestinationBusy": "gcsemb.embedding.lease",
    "DestinationUnwritable": "gcsemb.embedding.writer",
    "EmbedSummary": "gcsemb.embedding.report",
    "embed": "gcsemb.embedding.job",
    "EmbedConfig": "gcsemb.embedding.config",
    "RayEngine": "gcsemb.embedding.config",
    "read_embeddings": "gcsemb.explore.dataset",
    "read_errors": "gcsemb.explore.dataset",
    "iter_embeddings": "gcsemb.explore.dataset",
    "build_index": "gcsemb.explore.indexing",
    "knn_graph": "gcsemb.explore.neighbours",
    "load_embedder": "gcsemb.model.embedder",
    "ModelChoice": "gcsemb.model.dataset_embedder",
    "umap_project": "gcsemb.explore.projection",
    "plot_projection": "gcsemb.view.viz",
    "image_grid": "gcsemb.view.grid",
    "search_text": "gcsemb.explore.search",
    "search_image": "gcsemb.explore.search",
    "near_duplicates": "gcsemb.explore.duplicates",
    "Explorer": "gcsemb.view.widgets",
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
