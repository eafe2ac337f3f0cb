"""Which image URIs the rows of a dataset may make gcsemb fetch.

A dataset may come from anyone, and its ``uri`` column names what would be fetched for thumbnails.
So the rows of a dataset are fetched only under the source it was embedded from
(:func:`dataset_scope`: the same bucket for ``gs://``, the source folder for local files);
other protocols (``http(s)://``, ``ftp://``, ``webhdfs://``...), chained URLs (``::``), local
files outside that folder and other buckets are refused, and a source that is everything (``/``,
``gs://``) allows nothing. URIs a user passes as a list are fetched as given (no scope).

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
        scheme: ``"gs"`` (a bucket) or ``"file"`` (a local folder); ``""`` allows nothing.
        root: The bucket (``gs://``), the absolute source folder (local files), or ``""`` for
            any bucket (rows that name no dataset).
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
        """Whether ``uri`` is inside this scope: an object of its bucket or a local file in it.

        Never another protocol (``http(s)://``, ``ftp://``...) nor a chained URL (``::``).
        """
        scheme, rest = _split(uri)
        if self.scheme in _GCS:
            return scheme in _GCS and self.root in ("", _bucket(rest))
        if self.scheme not in _LOCAL or scheme not in _LOCAL or "::" in uri:
            return False
        if not os.path.isabs(rest):
            return False
        path = os.path.normpath(rest)
        try:
            inside = os.path.commonpath([self.root, path]) == self.root
        except ValueError:
            return False
        return inside and os.path.isfile(path)  # a regular file, never a device or a pipe


def dataset_scope(attrs: Mapping[str, Any]) -> FetchScope:
    """What the rows of a dataset may fetch, from a DataFrame's ``attrs``.

    - The dataset records its source (``attrs["dataset"]["source"]``): URIs in the source's
      bucket (``gs://``/``gcs://``) or under the source folder (local; regular files only).
      Any other source allows nothing: another protocol (``http://``, ``ftp://``,
      ``webhdfs://``...), a chained URL (``simplecache::...``, ``zip://...::...``), a source
      that names no bucket (``gs://``) or the whole file system (``/``).
    - No recorded source (an older dataset): the bucket the dataset itself is in
      (``attrs["store"]``), and nothing local.
    - Neither (rows built by hand, ``pandas.read_parquet``): ``gs://`` URIs only.

    Args:
        attrs: ``df.attrs`` of :func:`gcsemb.read_embeddings`, search results or a projection.

    Example:
        >>> dataset_scope({"dataset": {"source": "gs://b/photos"}}).allows("gs://b/x/y.jpg")
        True
        >>> dataset_scope({"dataset": {"source": "ftp://host/photos"}}).allows("ftp://host/photos/a")
        False
    """
    info = attrs.get("dataset") or {}
    source = str(info.get("source") or "") if isinstance(info, Mapping) else ""
    if source:
        return _source_scope(source)
    store = attrs.get("store")
    url = str(getattr(store, "url", "") or "")
    if url:
        scheme, rest = _split(url)
        if scheme in _GCS:
            why = f"it records no source: only its own bucket gs://{_bucket(rest)} is fetched"
            return FetchScope("gs", _bucket(rest), why)
        return FetchScope("", "", f"{url} records no source and is not in GCS: nothing is fetched")
    return FetchScope("gs", "", "rows that name no dataset fetch gs:// URIs only")


def _source_scope(source: str) -> FetchScope:
    """The scope of a recorded source: its bucket, its folder, or nothing."""
    scheme, rest = _split(source)
    nothing = f"its source {source} is no gs:// bucket and no local folder: nothing is fetched"
    if "::" in source or scheme not in _GCS + _LOCAL:  # a chain or a protocol of its own
        return FetchScope("", "", nothing)
    if scheme in _GCS:
        bucket = _bucket(rest)
        if not bucket:
            return FetchScope("", "", f"its source {source} names no bucket: nothing is fetched")
        return FetchScope("gs", bucket, f"only gs://{bucket} (the bucket of its source) is fetched")
    from gcsemb.storage import glob_base

    folder = os.path.normpath(os.path.abspath(os.path.expanduser(glob_base(rest)[0] or "/")))
    if os.path.dirname(folder) == folder:  # "/" (or a drive's root): every file there is
        return FetchScope("", "", f"its source {source} is the whole file system: nothing is read")
    return FetchScope("file", folder, f"only files under its source {folder} are read")


def _split(uri: str) -> tuple[str, str]:
    """``(scheme, rest)`` of a URI; a bare path is ``("file", path)``."""
    if "://" not in uri:
        return "file", os.path.expanduser(uri)
    scheme, rest = uri.split("://", 1)
    return scheme.lower(), rest


def _bucket(rest: str) -> str:
    return rest.split("/", 1)[0]
