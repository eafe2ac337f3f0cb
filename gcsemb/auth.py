"""From whatever credentials a user holds to what gcsfs needs, with a printable identity.

Accepted ``token`` values:

- ``None`` (default): application default credentials, found the way Google's libraries find them
  (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's ADC file, Colab after ``authenticate_user()``, the
  metadata server on Vertex AI Workbench / GCE). In Colab, missing credentials trigger
  ``authenticate_user()``. Nothing found is an error: gcsemb never falls back to anonymous silently.
  Against the local emulator no credentials are needed.
- ``"anon"``: anonymous access, for public buckets.
- ``"adc"`` / ``"google_default"``: application default credentials only.
- ``"metadata"`` / ``"cloud"``: the VM's service account from the metadata server.
- ``"colab"``: run Colab's ``authenticate_user()`` first.
- a path to a JSON key (service account, authorized user, external account), or its parsed dict.
- a ``google.auth.credentials.Credentials`` object.

Example:
    >>> ident = resolve("anon")
    >>> ident
    Identity('anonymous')
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gcsemb.errors import AUTH_FIXES, AuthError

SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
ANON = "anon"


@dataclass(frozen=True)
class Identity:
    """Resolved credentials: ``token`` goes to gcsfs, ``description`` into messages.

    The repr shows only the description, never key material or tokens.
    """

    token: Any = field(repr=False, compare=False)
    description: str

    def __repr__(self) -> str:
        return f"Identity({self.description!r})"

    @property
    def anonymous(self) -> bool:
        """Whether requests go out without credentials."""
        return self.token == ANON


def describe(credentials: Any) -> str:
    """A human name for a credentials object: an e-mail or a kind, never a secret."""
    email = getattr(credentials, "service_account_email", None)
    kind = type(credentials).__module__
    if "compute_engine" in kind:
        return f"the VM's service account ({email or 'default'}, metadata server)"
    if email:
        return f"service account {email}"
    if kind.startswith("google.oauth2.credentials"):
        account = getattr(credentials, "account", "") or "gcloud application-default login"
        return f"user credentials ({account})"
    return f"{type(credentials).__name__} credentials"


def _from_info(info: Mapping[str, Any], source: str) -> Identity:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    from google.oauth2 import credentials as user_credentials
    from google.oauth2 import service_account

    kind = info.get("type")
    if kind is None:
        raise AuthError(f"{source} is not a Google credentials file (it has no 'type' field).")
    try:
        if kind == "service_account":
            credentials = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
        elif kind == "authorized_user":
            credentials = user_credentials.Credentials.from_authorized_user_info(info, SCOPES)
        else:  # external_account, impersonated_service_account, ...
            credentials, _ = google.auth.load_credentials_from_dict(dict(info), scopes=SCOPES)
    except (DefaultCredentialsError, ValueError, KeyError) as e:
        missing = [k for k in ("client_email", "private_key", "token_uri") if k not in info]
        hint = (
            f" (missing fields: {', '.join(missing)})"
            if kind == "service_account" and missing
            else ""
        )
        raise AuthError(
            f"{source} is not a valid {kind} key{hint}. Download a new JSON key from the Cloud "
            "console (IAM > Service accounts > Keys) and pass its path."
        ) from e
    return Identity(credentials, describe(credentials))


_KEYS: dict[tuple[str, int, int], Identity] = {}


def _from_key_file(path: str | os.PathLike[str], source: str | None = None) -> Identity:
    """Credentials from a JSON key; one per file version, so its token is fetched once."""
    source = source or f"Key file {os.fspath(path)!r}"
    p = Path(path).expanduser()
    if not p.is_file():
        raise AuthError(f"{source} does not exist. Check the path, or: {AUTH_FIXES}")
    stat = p.stat()
    key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _KEYS:
        _KEYS[key] = _read_key_file(p, source)
    return _KEYS[key]


def _read_key_file(p: Path, source: str) -> Identity:
    try:
        info = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AuthError(f"{source} is not a JSON key file. {AUTH_FIXES}") from e
    if not isinstance(info, dict):
        raise AuthError(f"{source} is not a JSON key file. {AUTH_FIXES}")
    return _from_info(info, source)


def _in_colab() -> bool:
    return "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ


def _colab_login() -> None:
    try:
        from google.colab import auth as colab_auth  # type: ignore[import-not-found]
    except ImportError as e:
        raise AuthError("token='colab' works only inside Google Colab. " + AUTH_FIXES) from e
    colab_auth.authenticate_user()


_ADC_ENV = ("CLOUDSDK_CONFIG", "HOME", "APPDATA", "GCE_METADATA_HOST", "COLAB_RELEASE_TAG")
_DEFAULTS: dict[tuple[str | None, ...], Identity] = {}


def _default() -> Identity:
    """Application default credentials, found once per environment (then reused)."""
    env_key = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if env_key:
        return _from_key_file(env_key, f"GOOGLE_APPLICATION_CREDENTIALS={env_key!r}")
    key = tuple(os.environ.get(var) for var in _ADC_ENV)
    if key not in _DEFAULTS:
        _DEFAULTS[key] = _find_default()
    return _DEFAULTS[key]


def _find_default() -> Identity:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError as e:
        if not _in_colab():
            raise AuthError(f"No Google credentials found on this machine. {AUTH_FIXES}") from e
        _colab_login()
        credentials, _ = google.auth.default(scopes=SCOPES)
    return Identity(credentials, describe(credentials))


def _metadata() -> Identity:
    from google.auth import compute_engine

    credentials = compute_engine.Credentials(scopes=list(SCOPES))
    return Identity(credentials, describe(credentials))


class _TimeoutRequest:
    """google-auth's requests transport with a short timeout: a bad key fails in seconds."""

    def __init__(self, timeout: float) -> None:
        import google.auth.transport.requests

        self._request = google.auth.transport.requests.Request()
        self._timeout = timeout

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = self._timeout
        return self._request(*args, **kwargs)


def verify(identity: Identity, timeout: float = 15.0) -> Identity:
    """Obtain an access token now, so an expired, revoked or malformed key fails at once.

    gcsfs would otherwise retry a refused key for half a minute before giving up.

    Raises:
        AuthError: Google refused the credentials, or its token service could not be reached.
    """
    creds = identity.token
    if identity.anonymous or getattr(creds, "valid", False) or not hasattr(creds, "refresh"):
        return identity
    from google.auth.exceptions import RefreshError, TransportError

    try:
        creds.refresh(_TimeoutRequest(timeout))
    except RefreshError as e:
        reason = str(e.args[0] if e.args else e)[:200]
        raise AuthError(
            f"Google refused the credentials of {identity.description} ({reason}). The key may be "
            f"revoked, expired or deleted: create a new one, or use another identity. {AUTH_FIXES}"
        ) from e
    except TransportError as e:
        raise AuthError(
            f"Could not reach Google's sign-in service for {identity.description}: "
            f"{str(e)[:200]}. Check the network or proxy settings."
        ) from e
    return identity


def resolve(token: Any = None, *, emulator: bool = False) -> Identity:
    """Turn any supported ``token`` into an :class:`Identity`.

    Args:
        token: See the module docstring for the accepted forms.
        emulator: The endpoint is a local emulator: ``token=None`` then means anonymous.

    Returns:
        The identity to hand to gcsfs.

    Raises:
        AuthError: No credentials could be found, or a key is unreadable; the message names fixes.

    Example:
        >>> resolve("anon").anonymous
        True
    """
    if isinstance(token, Identity):
        return token
    if token is None:
        return Identity(ANON, "anonymous (local emulator)") if emulator else _default()
    if isinstance(token, str) and token.lower() in (ANON, "anonymous"):
        return Identity(ANON, "anonymous")
    if isinstance(token, str) and token.lower() in ("adc", "google_default", "default"):
        return _default()
    if isinstance(token, str) and token.lower() in ("metadata", "cloud"):
        return _metadata()
    if isinstance(token, str) and token.lower() == "colab":
        _colab_login()
        return _default()
    if isinstance(token, str | os.PathLike):
        return _from_key_file(token)
    if isinstance(token, Mapping):
        return _from_info(token, "The key dict")
    if hasattr(token, "apply") and hasattr(token, "refresh"):  # google.auth Credentials
        return Identity(token, describe(token))
    raise AuthError(
        f"token must be None, 'anon', 'adc', 'metadata', 'colab', a key path or dict, or a "
        f"google.auth credentials object; got a {type(token).__name__}."
    )
