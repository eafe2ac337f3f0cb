"""Where weights live on disk and what they are called, without importing torch.

Files go into gcsemb's cache (:mod:`gcsemb.storage.cache`), each written under a temporary name
and renamed, so an interrupted copy is never trusted.
:func:`model_tag` names a (model, weights) pair exactly as the parquet ``model`` column does, so a
run can decide what is already done before loading any model.

Example:
    >>> model_tag("ViT-B-32", "laion2b-s34b-b79k")
    'ViT-B-32/laion2b_s34b_b79k'
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from gcsemb.errors import ModelLoadError
from gcsemb.storage.cache import atomic_write, cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
BUNDLED_MODELS = Path(__file__).resolve().parent / "configs"
"""The model configs gcsemb ships (``tiny-clip.json``: a CLIP small enough for tests and demos)."""
TINY_MODEL = str(BUNDLED_MODELS / "tiny-clip.json")
_VERSION_KEYS = ("md5Hash", "crc32c", "generation", "etag", "ETag", "size", "mtime", "updated")
_HASHES: dict[tuple[str | int, ...], str] = {}
MEMO_NAME = "checkpoint-hashes.json"
_MEMO_KEYS = ("size", "mtime_ns", "ctime_ns", "ino", "dev")


def model_tag(model: str, pretrained: str | None, *, token: object = None) -> str:
    """The ``"<arch>/<weights>"`` tag that :class:`gcsemb.model.embedder.Embedder` stores, cheaply.

    Architecture names and weights tags are taken as given (tags in open_clip's spelling); a
    checkpoint file is named by its file name and content hash (:func:`local_checkpoint`); a
    remote checkpoint is copied into the cache first (once).

    Args:
        model: open_clip architecture name or model-config JSON path.
        pretrained: Weights tag, checkpoint path or URL, or None for random weights.
        token: Credentials for a ``gs://`` checkpoint, or a :class:`~gcsemb.storage.Store`
            whose access to reuse.
    """
    if model.endswith(".json") and not Path(model).expanduser().is_file():
        raise ModelLoadError(f"The model config {model} does not exist: check the path.")
    arch = Path(model).stem if model.endswith(".json") else check_architecture(model)
    if pretrained is None:
        return f"{arch}/random-seed0"
    if "://" in pretrained:
        return f"{arch}/{checkpoint_weights(remote_checkpoint(pretrained, token))}"
    local = local_checkpoint(pretrained)
    if local is not None:
        return f"{arch}/{checkpoint_weights(local)}"
    return f"{arch}/{normalize_tag(pretrained)}"


def normalize_tag(tag: str) -> str:
    """An open_clip weights tag in open_clip's own spelling (lower case, ``_`` for ``-``).

    Example:
        >>> normalize_tag("LAION2B-s34b-b79k")
        'laion2b_s34b_b79k'
    """
    return tag.lower().replace("-", "_")


def checkpoint_record(pretrained: str | None, *, token: object = None) -> dict[str, str]:
    """Where a checkpoint's weights came from, for the dataset's metadata; ``{}`` for a tag.

    ``checkpoint`` is the local path (links resolved) or the URL without its user name,
    password and query (a signed URL's signature is never stored); ``checkpoint_sha256`` its
    content hash, which a later search compares before it trusts a file found at that location.

    Example:
        >>> checkpoint_record("laion2b_s34b_b79k")
        {}
    """
    if pretrained is None:
        return {}
    if "://" in pretrained:
        path = remote_checkpoint(pretrained, token)  # cached: no second download
        return {"checkpoint": public_url(pretrained), "checkpoint_sha256": content_hash(path)}
    local = local_checkpoint(pretrained)
    if local is None:
        return {}
    return {"checkpoint": str(local), "checkpoint_sha256": content_hash(local)}


def local_checkpoint(pretrained: str) -> Path | None:
    """The checkpoint file ``pretrained`` names, as an absolute path with links resolved.

    The one place a local checkpoint path is normalised: a symbolic link (a Hugging Face cache
    snapshot is one) and its target name the same file, so they get the same weights tag.
    None when ``pretrained`` is no existing file (a weights tag).
    """
    if "://" in pretrained:
        return None
    try:
        path = Path(pretrained).expanduser()
        return path.resolve() if path.is_file() else None
    except OSError:  # e.g. a name too long to be a file
        return None


def public_url(url: str) -> str:
    """``url`` without user name, password, query and fragment: what may be recorded or shown.

    A signed URL's signature and a password in the URL never name anything; they stay out of
    datasets, messages, logs and reprs.

    Example:
        >>> public_url("https://me:pw@storage.googleapis.com/b/m.bin?X-Goog-Signature=abc#x")
        'https://storage.googleapis.com/b/m.bin'
    """
    from urllib.parse import urlsplit, urlunsplit

    from gcsemb.storage import backend_class

    if backend_class(url).literal_names:
        return url  # object names may hold '?', '#' and '@'; only web URLs carry these
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def redact(text: str, url: str) -> str:
    """``text`` (e.g. an error message about ``url``) with ``url``'s secret parts left out.

    Example:
        >>> redact("401 for https://me:pw@h/m.pt?sig=abc", "https://me:pw@h/m.pt?sig=abc")
        '401 for https://h/m.pt'
    """
    from urllib.parse import urlsplit

    text = text.replace(url, public_url(url))
    if public_url(url) == url:
        return text
    parts = urlsplit(url)
    for secret in (parts.netloc.rpartition("@")[0], parts.query, parts.fragment):
        if secret:
            text = text.replace(secret, "...")
    return text


def check_architecture(model: str, names: list[str] | None = None) -> str:
    """``model`` if open_clip knows it, else a :class:`ModelLoadError` naming close matches.

    Args:
        model: An open_clip architecture name.
        names: The known names; by default the configs shipped with open_clip, read from its
            package folder without importing it (so no torch import).
    """
    if names is None:
        import importlib.util

        spec = importlib.util.find_spec("open_clip")
        folder = Path(next(iter(spec.submodule_search_locations or ()))) if spec else None
        names = sorted(p.stem for p in (folder / "model_configs").glob("*.json")) if folder else []
        if model in names or not names:
            return model
        if "open_clip" in sys.modules:  # configs registered at run time count too
            names = sys.modules["open_clip"].list_models()
    if model in names:
        return model
    lower = {n.lower(): n for n in names}
    close = [lower[n] for n in difflib.get_close_matches(model.lower(), lower, n=5, cutoff=0.6)]
    raise ModelLoadError(
        f"Unknown open_clip architecture {model!r}."
        + (f" Did you mean {', '.join(close)}?" if close else "")
        + f" open_clip.list_models() lists all {len(names)}; or pass a model-config JSON path."
    )


def checkpoint_weights(path: Path) -> str:
    """A checkpoint's weights name: file name and the start of its sha256."""
    return f"{path.name}#{content_hash(path)[:8]}"


def remote_checkpoint(url: str, token: object = None) -> Path:
    """Copy a checkpoint at an fsspec URL into the cache once (keyed on its version).

    The cached file is named after the URL's path, never its password or query (a signed
    URL's signature); messages leave those out too, and so keep no cause that holds them.
    """
    from gcsemb.storage import explain, open_store

    name = public_url(url)
    secret = name != url and "://" in url
    try:
        store = open_store(url, token=token)
        fs, path = store.fs, store.path
    except Exception as e:
        raise ModelLoadError(f"Cannot open the checkpoint {name}: {redact(str(e), url)}") from (
            None if secret else e
        )
    try:
        info = fs.info(path)
        version = json.dumps({k: info[k] for k in _VERSION_KEYS if k in info}, default=str)
        key = hashlib.sha256(f"{name}\n{version}".encode()).hexdigest()[:16]
        dest = cache_dir() / "checkpoints" / key / os.path.basename(name.rstrip("/"))
        if not dest.is_file():
            log.info("copying %s into %s", name, dest)
            atomic_write(dest, lambda tmp: _copy(fs, path, tmp), info.get("size"))
    except Exception as e:
        why = redact(str(explain(e, name, store)), url)
        raise ModelLoadError(f"Cannot copy the checkpoint into the cache: {why}") from (
            None if secret else e
        )
    return dest


def _copy(fs: Any, path: str, local: str) -> None:
    """The download itself, on its own so a test can cut it short."""
    fs.get_file(path, local)


def content_hash(path: Path) -> str:
    """sha256 of a file, remembered in memory and in the cache's hash memo.

    A remembered hash is used only while the file's size, mtime, ctime, inode and device are
    all unchanged: a file replaced by one of the same size, its mtime set back, has another
    ctime (which no user can set), so it is hashed again.
    """
    stat, path = path.stat(), path.resolve()
    version = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]
    key = (str(path), *version)
    if key in _HASHES:
        return _HASHES[key]
    known = hash_memo()
    entry = known.get(key[0], {})
    if [entry.get(k) for k in _MEMO_KEYS] != version or "sha256" not in entry:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        entry = {**dict(zip(_MEMO_KEYS, version, strict=True)), "sha256": digest.hexdigest()}
        known[key[0]] = entry
        sidecar = cache_dir() / MEMO_NAME
        with contextlib.suppress(OSError):  # a read-only cache only costs re-hashing
            atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(known, indent=1)))
    _HASHES[key] = entry["sha256"]
    return entry["sha256"]


def hash_memo() -> dict[str, Any]:
    """The cache's memo of hashed checkpoints: ``{path: {size, ..., sha256}}`` (``{}`` if none).

    Only files the user named as weights (and copies in the cache) are ever hashed, so its
    paths are the checkpoints this machine's user passed to gcsemb.
    """
    try:
        known = json.loads((cache_dir() / MEMO_NAME).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(known, dict):
        return {}
    return {k: v for k, v in known.items() if isinstance(v, dict)}


def trusted_checkpoint(path: Path) -> bool:
    """Whether gcsemb may read ``path`` on a dataset's word: in its cache, or passed before.

    A path a dataset records is read (hashed, loaded) only when it lies in gcsemb's cache or
    is in the hash memo (:func:`hash_memo`: the user passed it as weights on this machine);
    links are resolved first, so a link that now points elsewhere is not trusted.

    Example:
        >>> trusted_checkpoint(Path("/etc/shadow"))
        False
    """
    try:
        real = path.resolve()
        return real.is_relative_to(cache_dir().resolve()) or str(real) in hash_memo()
    except (OSError, RuntimeError):  # a loop of links, a name too long
        return False
