"""gcsemb's one cache root on this machine, and the files every room keeps in it.

The root is ``$GCSEMB_CACHE``, else ``$XDG_CACHE_HOME/gcsemb`` (``~/.cache/gcsemb``). Below it:
``open_clip/`` (downloaded weights), ``checkpoints/`` (remote checkpoints copied once),
``architectures/`` (a dataset's recorded model configs), ``thumbnails/``, ``index/`` (local copies
of remote neighbour indexes), ``spill/`` (rows a destination would not take), ``demo/``. Every
file is written through :func:`~gcsemb.storage.files.atomic_path`, so none is ever half there.

Example:
    >>> cache_path("thumbnails").name
    'thumbnails'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gcsemb.storage.files import atomic_path

CACHE_ENV = "GCSEMB_CACHE"


def cache_dir() -> Path:
    """The cache root: ``$GCSEMB_CACHE``, else ``$XDG_CACHE_HOME/gcsemb`` (``~/.cache/gcsemb``).

    Example:
        >>> cache_dir().name  # doctest: +SKIP
        'gcsemb'
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "gcsemb"


def cache_path(*parts: str) -> Path:
    """A path below the cache root (``cache_path("index", key)``); nothing is made."""
    return cache_dir().joinpath(*parts)


def atomic_write(dest: Path, write: Callable[[str], Any], size: int | None = None) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``dest``, then rename it to ``dest``."""
    with atomic_path(dest, size) as tmp:
        write(tmp)
