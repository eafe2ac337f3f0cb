"""Errors that say what went wrong and what to do next.

Every error gcsemb raises on purpose is a :class:`GcsembError`; the CLI prints its message as one
line. Messages never contain credentials: only the identity's name (an e-mail or a kind).
"""

from __future__ import annotations


class GcsembError(Exception):
    """Base class: the message names the problem and the fix."""


class AuthError(GcsembError):
    """No usable credentials, or a key file that cannot be read."""


class AccessDenied(GcsembError):
    """The identity in use may not do this on this bucket."""


class NotFound(GcsembError, FileNotFoundError):
    """A bucket, prefix or object that does not exist."""


class BadURL(GcsembError, ValueError):
    """A URL that gcsemb cannot make sense of."""


class ModelLoadError(GcsembError, RuntimeError):
    """The model or its weights could not be loaded; the message says what to do next."""


READ_ROLE = "roles/storage.objectViewer"
"""What reading SRC needs: list and get objects (``storage.objects.list``, ``.get``)."""
WRITE_ROLE = "roles/storage.objectUser"
"""What DST needs: create, list, read, overwrite and delete objects (shards, the run lease and
the write check's probe; a re-run reads DST's index)."""

AUTH_FIXES = (
    "Fixes: in Colab run `from google.colab import auth; auth.authenticate_user()`; "
    "on a laptop run `gcloud auth application-default login`; with a service account pass "
    "`token='/path/key.json'` (CLI: --token) or set GOOGLE_APPLICATION_CREDENTIALS; "
    "for a public bucket pass token='anon'."
)
