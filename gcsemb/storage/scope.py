"""Which image URIs the rows of a dataset may make gcsemb fetch.

A dataset may come from anyone, and its ``uri`` column names what would be fetched for thumbnails.
So the rows of a dataset are fetched only under the source it was embedded from
(:func:`dataset_scope`: the same bucket for ``gs://``, the source folder for local files);
other protocols (``http(s)://``, ``ftp://``, ``webhdfs://``...), chained URLs (``::``), local
files outside that folder and other buckets are refused, and a source that is everything (``/``,
``gs://``) allows nothing. URIs a user passes as a list are fetched as given (no scope).

Example:
    >>> from gcsemb.storage.scope import dataset_scope
    >>> dataset_scope({"dataset": {"source": "gs://b/photos"}}).allows("gs://other/x.jpg")
    False
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gcsemb.storage.backend import Backend


@dataclass(frozen=True)
class FetchScope:
    """Which image URIs the rows of a dataset may make gcsemb fetch.

    Attributes:
        backend: The kind of storage fetched from (its :meth:`~Backend.inside` decides), or
            None: nothing is fetched.
        root: The bucket (``gs://``), the absolute source folder (local files), or ``""`` for
            any bucket (rows that name no dataset).
        why: What is fetched, said in the log line about URIs left out.

    Example:
        >>> from gcsemb.storage.gcs import GcsBackend
        >>> scope = FetchScope(GcsBackend, "photos-bucket", "only gs://photos-bucket is fetched")
        >>> scope.allows("gs://photos-bucket/a.jpg"), scope.allows("https://example.com/a.jpg")
        (True, False)
    """

    backend: type[Backend] | None
    root: str
    why: str

    def allows(self, uri: str) -> bool:
        """Whether ``uri`` is inside this scope: an object of its bucket or a local file in it.

        Never another protocol (``http(s)://``, ``ftp://``...) nor a chained URL (``::``).
        """
        from gcsemb.storage.backend import backend_class

        if self.backend is None or "::" in uri or backend_class(uri) is not self.backend:
            return False
        return self.backend.inside(self.root, uri)


def NOTHING(why: str) -> FetchScope:  # noqa: N802  (reads as a constant that says why)
    """The scope that allows nothing, saying why."""
    return FetchScope(None, "", f"{why}: nothing is fetched")


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
    from gcsemb.storage.backend import backend_class
    from gcsemb.storage.gcs import GcsBackend

    info = attrs.get("dataset") or {}
    source = str(info.get("source") or "") if isinstance(info, Mapping) else ""
    if source:
        if "::" in source:  # a chain of protocols
            return NOTHING(f"its source {source} is no gs:// bucket and no local folder")
        return backend_class(source).scope(source)
    url = str(getattr(attrs.get("store"), "url", "") or "")
    if url:
        return backend_class(url).own_scope(url)
    return FetchScope(GcsBackend, "", "rows that name no dataset fetch gs:// URIs only")
