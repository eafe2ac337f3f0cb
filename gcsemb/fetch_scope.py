"""Which image URIs the rows of a dataset may make gcsemb fetch.

A dataset may come from anyone, and its ``uri`` column names what would be fetched for thumbnails.
So the rows of a dataset are fetched only under the source it was embedded from
(:func:`dataset_scope`: the same bucket for ``gs://``, the source folder for local files);
``http(s)://`` URIs, local files outside that folder and other buckets are refused. URIs a user
passes as a list are fetched as given (no scope).

Example:
    >>> from gcsemb.fetch_scope import dataset_scope
    >>> dataset_scope({"dataset": {"source": "gs://b/photos"}}).allows("gs://other/x.jpg")
    False
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_GCS = ("gs", "gcs")
_LOCAL = ("file", "local")


@dataclass(frozen=True)
class FetchScope:
    """Which image URIs the rows of a dataset may make gcsemb fetch.

    Attributes:
        scheme: ``"gs"``, ``"file"`` or another fsspec protocol; ``""`` allows nothing.
        root: The bucket (``gs://``, other protocols: the first path part), the absolute source
            folder (local files), or ``""`` for any bucket.
        why: What is fetched, said in the log line about URIs left out.

    Example:
        >>> scope = FetchScope("gs", "photos-bucket", "only gs://photos-bucket is fetched")
        >>> scope.allows("gs://photos-bucket/a.jpg"), scope.allows("https://example.com/a.jpg")
        (True, False)
    """

    scheme: str
    root: str
    why: str

    def allows(self, uri: str) -> bool:
        """Whether ``uri`` is inside this scope (never ``http(s)://``)."""
        scheme, rest = _split(uri)
        if not self.scheme or scheme in ("http", "https"):
            return False
        if scheme in _GCS or self.scheme in _GCS:
            return scheme in _GCS and self.scheme in _GCS and self.root in ("", _bucket(rest))
        if scheme in _LOCAL or self.scheme in _LOCAL:
            if scheme not in _LOCAL or self.scheme not in _LOCAL or not os.path.isabs(rest):
                return False
            path = os.path.normpath(rest)
            try:
                inside = os.path.commonpath([self.root, path]) == self.root
            except ValueError:
                return False
            return inside and os.path.isfile(path)  # a regular file, never a device or a pipe
        return scheme == self.scheme and self.root == _bucket(rest)


def dataset_scope(attrs: Mapping[str, Any]) -> FetchScope:
    """What the rows of a dataset may fetch, from a DataFrame's ``attrs``.

    - The dataset records its source (``attrs["dataset"]["source"]``): URIs in the source's
      bucket (``gs://``), under the source folder (local; regular files only), or in the same
      bucket of another fsspec protocol. An ``http(s)://`` source allows nothing.
    - No recorded source (an older dataset): the bucket the dataset itself is in
      (``attrs["store"]``), and nothing local.
    - Neither (rows built by hand, ``pandas.read_parquet``): ``gs://`` URIs only.

    Args:
        attrs: ``df.attrs`` of :func:`gcsemb.read_embeddings`, search results or a projection.

    Example:
        >>> dataset_scope({"dataset": {"source": "gs://b/photos"}}).allows("gs://b/x/y.jpg")
        True
    """
    info = attrs.get("dataset") or {}
    source = str(info.get("source") or "") if isinstance(info, Mapping) else ""
    if source:
        scheme, rest = _split(source)
        if scheme in _GCS:
            bucket = _bucket(rest)
            why = f"only gs://{bucket} (the bucket of its source {source}) is fetched"
            return FetchScope("gs", bucket, why)
        if scheme in _LOCAL:
            from gcsemb.storage import glob_base

            folder = os.path.normpath(os.path.abspath(os.path.expanduser(glob_base(rest)[0])))
            return FetchScope("file", folder, f"only files under its source {folder} are read")
        if scheme in ("http", "https"):
            return FetchScope("", "", f"its source {source} is a web URL: nothing is fetched")
        why = f"only {scheme}://{_bucket(rest)} (the bucket of its source {source}) is fetched"
        return FetchScope(scheme, _bucket(rest), why)
    store = attrs.get("store")
    url = str(getattr(store, "url", "") or "")
    if url:
        scheme, rest = _split(url)
        if scheme in _GCS:
            why = f"it records no source: only its own bucket gs://{_bucket(rest)} is fetched"
            return FetchScope("gs", _bucket(rest), why)
        return FetchScope("", "", f"{url} records no source and is not in GCS: nothing is fetched")
    return FetchScope("gs", "", "rows that name no dataset fetch gs:// URIs only")


def _split(uri: str) -> tuple[str, str]:
    """``(scheme, rest)`` of a URI; a bare path is ``("file", path)``."""
    if "://" not in uri:
        return "file", os.path.expanduser(uri)
    scheme, rest = uri.split("://", 1)
    return scheme.lower(), rest


def _bucket(rest: str) -> str:
    return rest.split("/", 1)[0]
