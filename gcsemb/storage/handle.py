"""One entry point from a URL to a storage handle: :func:`open_store` gives a :class:`Store`.

A :class:`Store` is the URL, who gcsemb is there (:mod:`gcsemb.storage.auth`) and how to reach it
(an :class:`~gcsemb.storage.backend.Access`: credentials, billing, endpoint). Every gcsemb
function passes this handle on, so credentials are resolved once per run, and a local emulator
differs from Google only by the endpoint URL. Its operations (list, read, write, delete, a
folder's entries) are its :attr:`Store.backend`'s, chosen by the URL's scheme.

Example:
    >>> store = open_store("/tmp")
    >>> store.identity, store.backend.local
    (Identity('local files'), True)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from gcsemb.errors import AuthError, BadURL
from gcsemb.storage.auth import Identity
from gcsemb.storage.auth import json_text as auth_json_text
from gcsemb.storage.backend import Access, Backend, backend_class
from gcsemb.storage.objects import Entry, ObjectInfo


@dataclass(frozen=True, eq=False)
class Store:
    """One storage location and how to reach it: the handle every gcsemb function passes on.

    Made once by :func:`open_store` from a URL and its access (credentials, billing settings,
    an endpoint). Credentials are resolved (and a token fetched) once, when the handle is made;
    the fsspec filesystem is opened on first use. :meth:`at` gives the same access to another
    URL.

    A handle pickles without secrets (for Ray workers): it carries *how* to get the credentials
    again (``identity.recipe``: a key file's path, ``"adc"``, ``"metadata"``, ``"anon"``), never a
    private key or an access token. Credentials that cannot travel that way (a key given as a
    dict or as text, a credentials object) refuse to pickle with a message saying what to pass;
    a local folder's handle holding such credentials pickles, and says so when a ``gs://`` URL
    is reached from it in the other process.

    Attributes:
        url: What this handle points at, e.g. ``gs://my-bucket/photos`` or a local folder.
        identity: Who gcsemb is there (its repr and ``description`` show no secret).
        access: How it is reached. On Google Cloud Storage its ``token`` is the resolved
            identity; elsewhere (a local folder) the credentials given, unresolved, which a
            ``gs://`` URL reached from it (:meth:`at`) gets.

    Example:
        >>> store = open_store("gs://my-bucket/photos")  # doctest: +SKIP
        >>> store  # doctest: +SKIP
        Store('gs://my-bucket/photos' as service account embedder@proj.iam.gserviceaccount.com)
        >>> store.fs.ls(store.path)  # doctest: +SKIP
    """

    url: str
    identity: Identity
    access: Access = field(default_factory=Access, repr=False)

    @functools.cached_property
    def backend(self) -> Backend:
        """The operations of this URL's kind of storage (:mod:`gcsemb.storage.backend`)."""
        return backend_class(self.url)(self)

    @functools.cached_property
    def fs(self) -> Any:
        """The fsspec filesystem (gcsfs for ``gs://``), opened once per handle."""
        return self.backend.filesystem()

    @property
    def project(self) -> str | None:
        """Google Cloud project (billing for requester-pays buckets)."""
        return self.access.project

    @property
    def requester_pays(self) -> bool | str:
        """Bill reads to ``project`` (or to this project id, if a string)."""
        return self.access.requester_pays

    @property
    def endpoint(self) -> str | None:
        """A storage endpoint other than Google's (an emulator), or None."""
        return self.access.endpoint

    @property
    def path(self) -> str:
        """The protocol-less path of :attr:`url` inside :attr:`fs` (``bucket/prefix``)."""
        return self.fs._strip_protocol(self.url)

    def uri(self, path: str) -> str:
        """The full URI of ``path`` (a path inside :attr:`fs`), e.g. ``gs://bucket/a.jpg``."""
        return self.backend.uri(path)

    def where(self, path: str) -> str:
        """How messages name ``path``: a full URI, or a plain path for a local folder."""
        return self.backend.where(path)

    def at(self, url: str) -> Store:
        """Exactly this access (credentials, billing, endpoint) for another URL.

        Within one kind of storage the filesystem is shared too. From a local folder to a
        bucket, the credentials, project, requester-pays setting and endpoint given for the
        folder apply.

        Example:
            >>> dst = open_store("gs://b/photos").at("gs://b/embeddings")  # doctest: +SKIP
        """
        if backend_class(url) is type(self.backend) and isinstance(self.access.token, Identity):
            other = replace(self, url=url)
            if "fs" in self.__dict__:
                other.__dict__["fs"] = self.__dict__["fs"]
            return other
        if isinstance(self.access.token, _Stayed):
            raise self.access.token.error()
        return _open(url, self.access)

    # --- the backend's operations, on paths inside :attr:`fs` ------------------------------

    def objects(self, path: str) -> Iterator[ObjectInfo]:
        """Every object under ``path``, streamed (GCS: one call per 1000 objects)."""
        return self.backend.objects(path)

    def entries(self, folder: str) -> tuple[list[Entry], float | None]:
        """The objects directly in ``folder``, read fresh, and the storage's time (or None)."""
        return self.backend.entries(folder)

    def read_many(
        self, paths: list[str], limits: list[int | None] | None = None
    ) -> list[bytes | BaseException]:
        """Read objects by exact name, concurrently; a failure comes back in its place.

        Names are taken literally: ``photo[1].jpg`` or ``what?.jpg`` are never glob patterns (as
        they would be for ``fs.cat``). Local files are read only when they are regular files
        (never a pipe or a device, even behind a link).

        Args:
            paths: Paths inside :attr:`fs` (``bucket/name`` for GCS).
            limits: The most bytes each object may hold (its listed size), or None per path (or
                in all) for no limit. One byte more is asked for (a ranged read); an object
                holding more fails with a :class:`GcsembError` instead of being read to its end.

        Returns:
            One entry per path, in order: the bytes, or the exception its read raised.

        Example:
            >>> open_store("/etc").read_many(["/etc/hostname"], [4])  # doctest: +SKIP
            [GcsembError('file:///etc/hostname holds more than the 4 bytes listed ...')]
        """
        if not paths:
            return []
        return self.backend.read_many(paths, list(limits) if limits else [None] * len(paths))

    def open_input(self, path: str) -> Any:
        """A seekable file for pyarrow to read ``path`` from (a context manager).

        Example:
            >>> import pyarrow.parquet as pq
            >>> store = open_store("gs://my-bucket/embeddings")  # doctest: +SKIP
            >>> with store.open_input(store.path + "/part-x.parquet") as f:  # doctest: +SKIP
            ...     pq.ParquetFile(f).metadata.num_rows
            5000
        """
        return self.backend.open_input(path)

    def output(self, path: str) -> Any:
        """A context manager giving a file that appears at ``path`` whole or not at all."""
        return self.backend.output(path)

    def write(self, path: str, data: bytes, *, if_generation: int | None = None) -> int | None:
        """Write ``data`` atomically (conditionally, where the store keeps generations)."""
        return self.backend.write(path, data, if_generation=if_generation)

    def delete(self, path: str, *, if_generation: int | None = None) -> None:
        """Delete an object (with ``if_generation``: only if it is still that version)."""
        self.backend.delete(path, if_generation=if_generation)

    def __repr__(self) -> str:
        return f"Store({self.url!r} as {self.identity.description})"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        recipe = _recipe(self.access.token)
        if isinstance(recipe, _Stayed) and self.access.token is self.identity:
            raise recipe.error()  # this handle's own credentials: they cannot travel
        access = replace(self.access, token=recipe)
        return (_reopen, (self.url, access))

    def __copy__(self) -> Store:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Store:
        return self


class _Stayed:
    """Credentials of a local handle that stayed in the process that resolved them."""

    def __init__(self, description: str) -> None:
        self.description = description

    def error(self) -> AuthError:
        return AuthError(
            f"The credentials of {self.description} cannot be sent to other processes (they "
            "were given as a key dict, key text or a credentials object, which gcsemb never "
            "copies). Pass a key file path that exists on every worker, or use application "
            "default credentials (token=None)."
        )


def _recipe(token: Any) -> str | _Stayed | None:
    """How another process gets the credentials ``token`` names, without any secret."""
    if token is None or isinstance(token, _Stayed):
        return token
    if isinstance(token, Identity):
        return token.recipe if token.recipe is not None else _Stayed(token.description)
    if isinstance(token, str | os.PathLike) and auth_json_text(os.fspath(token)) is None:
        return os.fspath(token)  # a keyword or a key file's path
    return _Stayed("the key given for this folder")


def _reopen(url: str, access: Access) -> Store:
    """Unpickle a :class:`Store`: resolve its credentials again, from their recipe."""
    return _open(url, access.with_token(None if access.token == "adc" else access.token))


def _open(url: str, access: Access) -> Store:
    """A handle for ``url`` with ``access``, from its backend (credentials resolved there)."""
    if not url:
        raise BadURL("Empty URL: give gs://bucket/prefix, a local folder, or an fsspec URL.")
    identity, access = backend_class(url).open(str(url), access)
    return Store(str(url), identity, access)


def open_store(
    url: str | Store,
    *,
    token: Any = None,
    project: str | None = None,
    requester_pays: bool | str = False,
    endpoint: str | None = None,
) -> Store:
    """The one entry point from a URL (and how to reach it) to a :class:`Store`.

    Args:
        url: ``gs://bucket/prefix``, a local path, or any fsspec URL; a :class:`Store` is returned
            as it is.
        token: Credentials for ``gs://`` (see :mod:`gcsemb.storage.auth`; default: application
            default credentials); elsewhere kept unresolved, with ``project``,
            ``requester_pays`` and ``endpoint``, for a ``gs://`` URL reached from the handle
            (:meth:`Store.at`). A :class:`Store` here lends its access (credentials, billing,
            endpoint) to ``url``, as :meth:`Store.at` does.
        project: Google Cloud project (billing for requester-pays buckets).
        requester_pays: Bill reads to ``project`` (or to this project id, if a string).
        endpoint: Another GCS endpoint (an emulator), else ``$STORAGE_EMULATOR_HOST``, else
            Google. Credentials found on this machine (``token=None``) go only to Google and to
            an endpoint on this machine
            (:func:`~gcsemb.storage.gcs.receives_found_credentials`); any other endpoint is
            reached anonymously unless ``token`` is given (the identity says which). Against an
            endpoint on this machine with no credentials at all, requests go anonymously too.

    Returns:
        The handle, with credentials resolved and a token fetched (so a refused key fails here,
        within seconds, before any storage request).

    Raises:
        AuthError: No credentials, an unreadable key, or credentials Google refuses.
        BadURL: The URL is empty or names no bucket.

    Example:
        >>> open_store("/tmp").identity
        Identity('local files')
    """
    if isinstance(url, Store):
        return url
    if isinstance(token, Store):
        return token.at(url)
    return _open(url, Access(token, project, requester_pays, endpoint))
