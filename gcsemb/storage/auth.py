"""From whatever credentials a user holds to what gcsfs needs, with a printable identity.

Accepted ``token`` values:

- ``None`` (default): application default credentials, found the way Google's libraries find them
  (``GOOGLE_APPLICATION_CREDENTIALS``, naming a key file or, as people set it, holding its JSON
  text; gcloud's ADC file, Colab after ``authenticate_user()``, the
  metadata server on Vertex AI Workbench / GCE). In Colab, missing credentials trigger
  ``authenticate_user()``. Nothing found is an error naming the fixes; only against a storage
  endpoint on this machine (a local emulator) does gcsemb then go anonymous, and says so.
- ``"anon"``: anonymous access, for public buckets.
- ``"adc"`` / ``"google_default"``: application default credentials only.
- ``"metadata"`` / ``"cloud"``: the VM's service account from the metadata server.
- ``"colab"``: run Colab's ``authenticate_user()`` first.
- a path to a JSON key (service account, authorized user, external account), its parsed dict, or
  its text (a string starting with ``{``, a UTF-8 BOM allowed, e.g. a notebook secret's value).
- a ``google.auth.credentials.Credentials`` object.

No message, repr or log line ever holds key material or a token: a key is named by its source
("the key passed as JSON text", a file's base name) and the identity by its e-mail. A string that
is none of the above (a base64-encoded key, a bare PEM private key, a refresh token) is refused
naming only its form and length; a missing path is echoed only when it ends in ``.json``.

Example:
    >>> ident = resolve("anon")
    >>> ident
    Identity('anonymous')
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gcsemb.errors import AUTH_FIXES, AuthError

SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
ANON = "anon"
KEYWORDS = {
    "anon": ANON,
    "anonymous": ANON,
    "adc": "adc",
    "google_default": "adc",
    "default": "adc",
    "metadata": "metadata",
    "cloud": "metadata",
    "colab": "colab",
}


@dataclass(frozen=True)
class Identity:
    """Resolved credentials: ``token`` goes to gcsfs, ``description`` into messages.

    Attributes:
        token: What gcsfs takes (``"anon"`` or a ``google.auth`` credentials object).
        description: Who this is, for messages: an e-mail or a kind, never a secret.
        recipe: How another process gets the same credentials without receiving any secret:
            ``"anon"``, ``"adc"``, ``"metadata"`` or a key file's path; ``None`` when they
            cannot travel (a key given as a dict or as text, or a credentials object).

    The repr shows only the description.
    """

    token: Any = field(repr=False, compare=False)
    description: str
    recipe: str | None = None

    def __repr__(self) -> str:
        return f"Identity({self.description!r})"

    @property
    def anonymous(self) -> bool:
        """Whether requests go out without credentials."""
        return self.token == ANON


ANONYMOUS = Identity(ANON, "anonymous", ANON)


def in_colab() -> bool:
    """Whether this process runs in Google Colab."""
    import sys

    return (
        "google.colab" in sys.modules
        or "COLAB_RELEASE_TAG" in os.environ
        or "COLAB_GPU" in os.environ
    )


def describe(credentials: Any) -> str:
    """A human name for a credentials object: an e-mail or a kind, never a secret."""
    email = getattr(credentials, "service_account_email", None)
    kind = type(credentials).__module__
    if "compute_engine" in kind:
        return f"the VM's service account ({email or 'default'}, metadata server)"
    if email:
        return f"service account {email}"
    if kind.startswith("google.oauth2.credentials"):
        account = getattr(credentials, "account", "")
        if account or getattr(credentials, "refresh_token", None):
            return f"user credentials ({account or 'gcloud application-default login'})"
        return "an access token (a Credentials object without a refresh token)"
    return f"{type(credentials).__name__} credentials"


def _from_info(info: Mapping[str, Any], source: str, recipe: str | None = None) -> Identity:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    from google.oauth2 import credentials as user_credentials
    from google.oauth2 import service_account

    kind = info.get("type")
    if kind is None:
        raise AuthError(f"{source} is not a Google credentials key (it has no 'type' field).")
    try:
        if kind == "service_account":
            credentials = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
        elif kind == "authorized_user":
            credentials = user_credentials.Credentials.from_authorized_user_info(info, SCOPES)
        else:  # external_account, impersonated_service_account, ...
            credentials, _ = google.auth.load_credentials_from_dict(dict(info), scopes=SCOPES)
    except (DefaultCredentialsError, ValueError, KeyError):
        missing = [k for k in ("client_email", "private_key", "token_uri") if k not in info]
        hint = (
            f" (missing fields: {', '.join(missing)})"
            if kind == "service_account" and missing
            else ""
        )
        # chained without the original text: google-auth's messages may quote the key
        raise AuthError(
            f"{source} is not a valid {kind} key{hint}. Download a new JSON key from the Cloud "
            "console (IAM > Service accounts > Keys) and pass its path."
        ) from None
    return Identity(credentials, describe(credentials), recipe)


_KEYS: dict[tuple[str, int, int], Identity] = {}
BOM = "\ufeff"
WORKING_FORMS = "a key file's path, the key file's JSON text, 'anon', 'adc', 'metadata' or 'colab'"


def _key_file_name(path: str | os.PathLike[str]) -> str:
    return f"the key file {os.path.basename(os.fspath(path))!r}"


def _is_file(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` names an existing file; a value no file can have is simply not one."""
    try:
        return Path(text).expanduser().is_file()
    except (OSError, ValueError, RuntimeError):  # too long, a NUL byte, an unknown ~user
        return False


def _names_a_path(text: str) -> bool:
    """Whether a missing ``text`` may be echoed: a one-line ``.json`` name, as no secret is."""
    return len(text) <= 1024 and text.isprintable() and text.lower().endswith(".json")


def _form(text: str) -> str:
    """What an unusable string looks like, in words, with the fix; never a piece of it."""
    bare = "".join(text.split())
    if "PRIVATE KEY-----" in text:
        return (
            "It looks like a PEM private key on its own: pass the whole JSON key file (it also "
            "names the account and its token endpoint)"
        )
    if bare.startswith("1//"):
        return (
            "It looks like a refresh token: run `gcloud auth application-default login`, or pass "
            "the authorized-user JSON that holds it"
        )
    if bare.startswith("ya29."):
        return (
            "It looks like an access token: in Python pass "
            "google.oauth2.credentials.Credentials(token=...)"
        )
    if len(bare) >= 64 and re.fullmatch(r"[A-Za-z0-9+/_-]+=*", bare):
        return "It looks like base64-encoded text: decode it first (base64 -d) and pass the JSON"
    return "Check for a typo"


def _unusable(text: str, where: str, works: str = WORKING_FORMS) -> AuthError:
    """The error for a string that is no key: named by its form and length only."""
    return AuthError(
        f"{where} is a {len(text):,}-character value that names no existing file, is not JSON "
        f"and is no keyword. {_form(text)}. What works: {works}."
    )


def _from_key_file(path: str | os.PathLike[str], source: str | None = None) -> Identity:
    """Credentials from a JSON key; one per file version, so its token is fetched once."""
    source = source or _key_file_name(path)
    p = Path(path).expanduser()
    if not _is_file(p):
        raise AuthError(f"{source} does not exist (looked for {os.fspath(path)!r}). {AUTH_FIXES}")
    stat = p.stat()
    key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _KEYS:
        _KEYS[key] = _read_key_file(p, source)
    return _KEYS[key]


def _read_key_file(p: Path, source: str) -> Identity:
    try:
        info = json.loads(p.read_text(encoding="utf-8-sig"))  # a BOM, as Notepad saves it
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise AuthError(f"{source} is not a JSON key file. {AUTH_FIXES}") from None
    if not isinstance(info, dict):
        raise AuthError(f"{source} is not a JSON key file. {AUTH_FIXES}")
    return _from_info(info, source, recipe=str(p.resolve()))


def json_text(text: str) -> str | None:
    r"""``text`` without a BOM and outer blanks when it is JSON object text, else None.

    Example:
        >>> json_text('\ufeff{"type": "service_account"}\n')
        '{"type": "service_account"}'
    """
    bare = text.strip().lstrip(BOM).strip()
    return bare if bare.startswith("{") else None


def _from_text(text: str, source: str = "The key passed as JSON text") -> Identity:
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        raise AuthError(
            f"{source} is not valid JSON (it starts with '{{' but does not parse). Pass the "
            "whole key file's content, or its path."
        ) from None
    if not isinstance(info, dict):
        raise AuthError(f"{source} is not a JSON object. {AUTH_FIXES}")
    return _from_info(info, source)


def _colab_login() -> None:
    try:
        from google.colab import auth as colab_auth  # type: ignore[import-not-found]
    except ImportError as e:
        raise AuthError("token='colab' works only inside Google Colab. " + AUTH_FIXES) from e
    colab_auth.authenticate_user()


ADC_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
_ADC_ENV = ("CLOUDSDK_CONFIG", "HOME", "APPDATA", "GCE_METADATA_HOST", "COLAB_RELEASE_TAG")
_DEFAULTS: dict[tuple[str | None, ...], Identity] = {}


def _default() -> Identity:
    """Application default credentials, found once per environment (then reused)."""
    env_key = os.environ.get(ADC_ENV)
    if env_key:
        found = _from_adc_variable(env_key)
        return Identity(found.token, found.description, "adc")
    key = tuple(os.environ.get(var) for var in _ADC_ENV)
    if key not in _DEFAULTS:
        _DEFAULTS[key] = _find_default()
    return _DEFAULTS[key]


def _from_adc_variable(value: str) -> Identity:
    """``GOOGLE_APPLICATION_CREDENTIALS``: a key file's path, or (as people set it) its JSON."""
    text = json_text(value)
    if text is not None:  # one identity per key text, so its token is fetched once
        key = (f"{ADC_ENV}:{hashlib.sha256(text.encode()).hexdigest()}", 0, 0)
        if key not in _KEYS:
            _KEYS[key] = _from_text(text, f"{ADC_ENV} (holding the key's JSON text)")
        return _KEYS[key]
    if _is_file(value) or _names_a_path(value):
        return _from_key_file(value, f"{ADC_ENV} ({os.path.basename(value)!r})")
    raise _unusable(value, ADC_ENV, "a key file's path, or the key file's JSON text")


def _find_default() -> Identity:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError as e:
        if not in_colab():
            raise AuthError(f"No Google credentials found on this machine. {AUTH_FIXES}") from e
        _colab_login()
        credentials, _ = google.auth.default(scopes=SCOPES)
    return Identity(credentials, describe(credentials), "adc")


def _metadata() -> Identity:
    from google.auth import compute_engine

    credentials = compute_engine.Credentials(scopes=list(SCOPES))
    return Identity(credentials, describe(credentials), "metadata")


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
    if identity.anonymous or not hasattr(creds, "refresh") or getattr(creds, "valid", False):
        return identity
    from google.auth.exceptions import RefreshError, TransportError

    try:
        creds.refresh(_TimeoutRequest(timeout))
    except RefreshError as e:
        reason = _reason(e)
        raise AuthError(
            f"Google refused the credentials of {identity.description} ({reason}). The key may be "
            f"revoked, expired or deleted: create a new one, or use another identity. {AUTH_FIXES}"
        ) from None
    except TransportError as e:
        raise AuthError(
            f"Could not reach Google's sign-in service for {identity.description}: "
            f"{str(e)[:200]}. Check the network or proxy settings."
        ) from e
    return identity


def _reason(error: BaseException) -> str:
    """The short reason google-auth gives (e.g. ``invalid_grant``), without tokens."""
    first = error.args[0] if error.args else error
    text = str(first).split("\n", 1)[0][:200]
    return text.replace("Bearer ", "")


def _default_or_anonymous(local_endpoint: bool) -> Identity:
    """Application default credentials; anonymous only for a local endpoint and none at all."""
    try:
        return _default()
    except AuthError:
        if not local_endpoint or os.environ.get(ADC_ENV):
            raise
        return Identity(ANON, "anonymous (no Google credentials found; local endpoint)", ANON)


def _from_string(text: str) -> Identity:
    """A keyword, a key's JSON text (a BOM allowed), or a key file's path."""
    kind = KEYWORDS.get(text.strip().lower())
    if kind == ANON:
        return ANONYMOUS
    if kind == "metadata":
        return _metadata()
    if kind == "colab":
        _colab_login()
    if kind is not None:
        return _default()
    key_text = json_text(text)
    if key_text is not None:
        return _from_text(key_text)
    if _is_file(text) or _names_a_path(text):
        return _from_key_file(text)
    raise _unusable(text, "The token")


def resolve(token: Any = None, *, local_endpoint: bool = False) -> Identity:
    """Turn any supported ``token`` into an :class:`Identity`.

    Args:
        token: See the module docstring for the accepted forms.
        local_endpoint: Storage is an endpoint on this machine (a local emulator): when
            ``token`` is None and no credentials exist at all, go anonymous (and say so).

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
        return _default_or_anonymous(local_endpoint)
    if isinstance(token, os.PathLike):  # a path object names a file, never a secret
        return _from_key_file(token)
    if isinstance(token, str):
        return _from_string(token)
    if isinstance(token, Mapping):
        return _from_info(token, "The key dict")
    if hasattr(token, "apply") and hasattr(token, "refresh"):  # google.auth Credentials
        return Identity(token, describe(token))
    raise AuthError(
        f"token must be None, 'anon', 'adc', 'metadata', 'colab', a key path, dict or JSON text, "
        f"or a google.auth credentials object; got a {type(token).__name__}."
    )
