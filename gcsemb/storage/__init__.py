"""Storage: one handle from a URL to its objects, whatever keeps them.

Modules (each short enough to read in one sitting):

- :mod:`~gcsemb.storage.handle`: :func:`open_store` -> :class:`Store`, the handle every function
  passes on (URL, identity, :class:`Access`; pickles without secrets).
- :mod:`~gcsemb.storage.backend`: the operations a kind of storage offers (list, read, write
  atomically or only if the generation matches, delete, a folder's entries with the storage's
  clock), chosen by scheme; :mod:`~gcsemb.storage.gcs` (Google Cloud Storage and its emulators)
  and :mod:`~gcsemb.storage.files` (local folders) implement them, nothing else branches on it.
- :mod:`~gcsemb.storage.listing`: :func:`list_images` (prefixes, globs, literal names).
- :mod:`~gcsemb.storage.auth`: credentials in every form users paste them, never echoed.
- :mod:`~gcsemb.storage.explain`: storage errors as messages that name the fix.
- :mod:`~gcsemb.storage.scope`: which URIs an (untrusted) dataset's rows may fetch.
- :mod:`~gcsemb.storage.local_files`: regular files only, reads capped at the listed size.
- :mod:`~gcsemb.storage.cache`: the one cache root on this machine.

Example:
    >>> from gcsemb.storage import open_store
    >>> open_store("/tmp")
    Store('/tmp' as local files)
"""

from gcsemb.storage.auth import Identity
from gcsemb.storage.backend import Access, Backend, backend_class, local_path, register
from gcsemb.storage.explain import explain, http_status
from gcsemb.storage.gcs import EMULATOR_ENV, gcs_filesystem, receives_found_credentials
from gcsemb.storage.handle import Store, open_store
from gcsemb.storage.listing import glob_base, list_images, normalize_extensions
from gcsemb.storage.objects import (
    IMAGE_EXTENSIONS,
    OBJECT_FIELDS,
    Entry,
    ObjectInfo,
    object_schema,
    parse_time,
)

__all__ = [
    "EMULATOR_ENV",
    "IMAGE_EXTENSIONS",
    "OBJECT_FIELDS",
    "Access",
    "Backend",
    "Entry",
    "Identity",
    "ObjectInfo",
    "Store",
    "backend_class",
    "explain",
    "gcs_filesystem",
    "glob_base",
    "http_status",
    "list_images",
    "local_path",
    "normalize_extensions",
    "object_schema",
    "open_store",
    "parse_time",
    "receives_found_credentials",
    "register",
]
