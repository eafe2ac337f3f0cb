"""Storage errors as messages that say what to do: the identity, the object, the fix.

Example:
    >>> from gcsemb.storage import open_store
    >>> explain(FileNotFoundError("x"), "/no/such/folder", open_store("/no/such/folder"), "list")
    NotFound('/no/such/folder does not exist (looked up as local files). Check the name for typos.')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gcsemb.errors import AUTH_FIXES, AccessDenied, AuthError, GcsembError, NotFound
from gcsemb.storage.auth import ANONYMOUS

if TYPE_CHECKING:
    from gcsemb.storage.handle import Store


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a storage error (gcsfs's ``code``), or None."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    if isinstance(exc, PermissionError) or str(exc).startswith("Forbidden"):
        return 403
    return None


def explain(exc: BaseException, uri: str, store: Store, action: str = "read") -> GcsembError:
    """Translate a storage exception into a :class:`GcsembError` that names the fix.

    Args:
        exc: What gcsfs or fsspec raised.
        uri: The URI being accessed.
        store: The handle in use (for the identity).
        action: ``"list"`` (the source), ``"read"`` (an object), ``"index"`` (read the
            destination's dataset), ``"write"`` or ``"delete"`` (the destination).
    """
    if isinstance(exc, GcsembError):
        return exc
    who = store.identity.description
    text = str(exc).split("\n")[-1][:300]
    code = http_status(exc)
    if isinstance(exc, FileNotFoundError):
        target = store.backend.missing(uri, action)
        return NotFound(f"{target} does not exist (looked up as {who}). Check the name for typos.")
    if (code == 401 or "Invalid Credentials" in text) and store.identity.anonymous:
        why = "" if who == ANONYMOUS.description else f" gcsemb is {who}."
        return AccessDenied(
            f"{uri} is not public: anonymous requests are refused (401).{why} {AUTH_FIXES}"
        )
    if code == 401 or "Invalid Credentials" in text:
        return AuthError(f"Google rejected the credentials of {who} (401). {AUTH_FIXES}")
    if code == 403:
        return AccessDenied(store.backend.denied(uri, action, text))
    if "requester pays" in text.lower():
        return GcsembError(
            f"{uri} is a requester-pays bucket: pass requester_pays=True and project=... "
            "(CLI: --requester-pays --project ID) to bill reads to your project."
        )
    return GcsembError(f"Could not {action} {uri} as {who}: {type(exc).__name__}: {text}")
