"""Search an embeddings dataset: by text, by image, and for near-duplicate pairs.

Text and new images are embedded with the same model that embedded the dataset (its tag is in the
``model`` column). Pass an :class:`~gcsemb.embedder.Embedder`, or ``model=``/``pretrained=`` as
given to :func:`gcsemb.embed`; with neither, the weights are recovered from the dataset, but only
from what cannot run or fetch anything a dataset's author chose (see :func:`dataset_weights`):

- an open_clip weights tag of the dataset's architecture (``laion2b_s34b_b79k``), or random weights;
- a checkpoint (``name#hash``): the local file the dataset records, when its sha256 is still the
  recorded one, or a file with that sha256 already in gcsemb's cache (a line on stderr says which).
  A ``gs://`` or ``https://`` checkpoint location written in a dataset is never fetched: pass it as
  ``pretrained=`` (CLI ``--pretrained``) if you trust it.

Anything else in a dataset's model tag (a URL, a path) is refused before any request is made.

Every search returns a DataFrame, best first: ``uri``, ``score`` (cosine similarity, 1.0 is an
identical embedding) and ``md5`` (for thumbnails). :func:`gcsemb.viz.image_grid` draws it.

Example:
    >>> from gcsemb.search import search_text, search_image, near_duplicates
    >>> df, X = gcsemb.read_embeddings("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> search_text((df, X), "a dog on a beach", k=5)  # doctest: +SKIP
    >>> search_image((df, X), df.uri[0], k=5)  # the image itself comes first  # doctest: +SKIP
    >>> near_duplicates((df, X), threshold=0.97)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.errors import GcsembError
from gcsemb.storage import Store

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from gcsemb.embedder import Embedder

RESULT_COLUMNS = ["uri", "score", "md5"]
PAIR_COLUMNS = ["uri_a", "uri_b", "score", "exact"]


def embeddings_of(
    data: Any, *, token: Any = None, model: str | None = None
) -> tuple[pd.DataFrame, np.ndarray, Store | None]:
    """``(df, matrix, dataset)`` from any of the forms the search and plot functions accept.

    Args:
        data: A dataset URL, local path or :class:`~gcsemb.storage.Store`, the ``(df, matrix)``
            pair of :func:`gcsemb.read_embeddings`, or a DataFrame with an ``embedding`` column.
        token: Credentials for ``gs://`` when ``data`` is a URL.
        model: Keep the rows of this model tag only.

    Returns:
        The rows, their embeddings as an ``(n, dim)`` float32 array, and the dataset's handle
        (None for rows that were not read from a dataset).

    Example:
        >>> df, X, dataset = embeddings_of("gs://my-bucket/embeddings")  # doctest: +SKIP
    """
    import pandas as pd

    if isinstance(data, str | os.PathLike | Store):
        from gcsemb.dataset import read_embeddings

        source = data if isinstance(data, Store) else str(data)
        df, matrix = read_embeddings(source, token=token, model=model)
        return df, matrix, df.attrs["store"]
    if isinstance(data, tuple) and len(data) == 2:
        df, matrix = data
        matrix = np.asarray(matrix, dtype=np.float32)
    elif isinstance(data, pd.DataFrame):
        if "embedding" not in data:
            raise ValueError(
                "The DataFrame has no 'embedding' column: pass gcsemb.read_embeddings(dst), "
                "i.e. the (df, matrix) pair, or the dataset URL."
            )
        df = data
        matrix = (
            np.asarray(np.stack(df["embedding"].to_numpy()), dtype=np.float32)
            if len(df)
            else np.zeros((0, 0), np.float32)
        )
    else:
        raise TypeError(
            f"Cannot search {type(data).__name__}: pass a dataset URL, the (df, matrix) pair of "
            "gcsemb.read_embeddings(dst), or a DataFrame with an 'embedding' column."
        )
    if len(df) != len(matrix):
        raise ValueError(f"{len(df)} rows but {len(matrix)} embeddings: they must match.")
    if model is not None and "model" in df:
        keep = (df["model"] == model).to_numpy()
        df, matrix = df[keep].reset_index(drop=True), matrix[keep]
    elif "model" in df and df["model"].nunique() > 1:
        raise ValueError(
            f"The rows hold several models {sorted(df['model'].unique())}: pass model=... to "
            "pick one (embeddings of different models are not comparable)."
        )
    return df, matrix, df.attrs.get("store")


def _tag(df: pd.DataFrame) -> str | None:
    return str(df["model"].iloc[0]) if "model" in df and len(df) else None


def embedder_for(
    tag: str,
    *,
    embedder: Embedder | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    token: Any = None,
    device: str = "auto",
    dataset: Mapping[str, Any] | None = None,
) -> Embedder:
    """The embedder of the model tagged ``tag`` (``"<arch>/<weights>"``), checked to match.

    Args:
        tag: The dataset's ``model`` column value, e.g. ``"ViT-B-32/laion2b_s34b_b79k"``.
        embedder: Use this one (it is only checked against ``tag``).
        model: open_clip architecture or config JSON (default: the tag's architecture, when
            open_clip or gcsemb ships it).
        pretrained: Weights tag or checkpoint path/URL, as given to :func:`gcsemb.embed`
            (default: recovered from ``tag`` and ``dataset`` by :func:`dataset_weights`).
        token: Credentials for a ``gs://`` checkpoint passed as ``pretrained``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        dataset: What the dataset records about how it was made (``df.attrs["dataset"]``):
            the checkpoint's location and sha256.

    Raises:
        GcsembError: The weights cannot be recovered safely, or the loaded model is another one.

    Example:
        >>> e = embedder_for("ViT-B-32/laion2b_s34b_b79k")  # doctest: +SKIP
    """
    if embedder is None:
        if model is None:
            model = _architecture_path(_dataset_architecture(tag))
        if pretrained is None:
            pretrained = dataset_weights(tag, dataset)
        from gcsemb.embedder import load_embedder

        embedder = load_embedder(model, pretrained, device=device, token=token)
    if not _comparable(tag, embedder.name):
        raise GcsembError(
            f"The dataset was embedded with {tag} but the model loaded is {embedder.name}: "
            "their embeddings are not comparable. Pass the model and pretrained weights the "
            "dataset was embedded with (CLI: --model/--pretrained as given to gcsemb embed)."
        )
    return embedder


_CHECKPOINT_WEIGHTS = re.compile(r"(?P<name>[^/\\#]+)#(?P<hash>[0-9a-f]{8})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*")
_ANNOUNCED: set[tuple[str, str]] = set()


def dataset_weights(tag: str, dataset: Mapping[str, Any] | None = None) -> str | None:
    """The ``pretrained=`` to load a dataset's weights with, from what is safe to trust in it.

    A dataset may come from anyone, so its model tag never names what gets fetched:

    - ``random-seed0``: random weights (None);
    - an open_clip weights tag of the tag's architecture (``open_clip.get_pretrained_cfg``):
      that tag, which open_clip resolves from its own registry;
    - a checkpoint ``name#hash8``: the local file the dataset records (``dataset["checkpoint"]``)
      if its sha256 is the recorded ``checkpoint_sha256``, else a file with that sha256 already
      in gcsemb's cache (its hash record); a note on stderr says which file is used. A ``gs://``
      or ``http(s)://`` location is never fetched on a dataset's word.

    Args:
        tag: The dataset's model tag, ``"<arch>/<weights>"``.
        dataset: ``df.attrs["dataset"]`` (the checkpoint's recorded location and sha256).

    Returns:
        A weights tag, a verified local checkpoint path, or None (random weights).

    Raises:
        GcsembError: Anything else (a URL or a path as weights, a checkpoint that is missing,
            changed, or only remote); the message says what to pass as ``pretrained=``.

    Example:
        >>> dataset_weights("ViT-B-32/random-seed0") is None
        True
    """
    arch, _, weights = tag.partition("/")
    if weights == "random-seed0":
        return None
    found = _CHECKPOINT_WEIGHTS.fullmatch(weights)
    if found:
        return str(_recorded_checkpoint(found["name"], found["hash"], dict(dataset or {})))
    if _NAME.fullmatch(weights) and _registry_tag(arch, weights):
        return weights
    raise GcsembError(
        f"The dataset's model tag {tag!r} names the weights {weights!r}, which are neither an "
        f"open_clip weights tag of {arch}, random weights, nor a checkpoint (name#hash): "
        "gcsemb loads no weights a dataset names. If you know which weights it was embedded "
        "with, pass them: pretrained=... (CLI: --pretrained)."
    )


def _dataset_architecture(tag: str) -> str:
    """The tag's architecture, if open_clip or gcsemb ships it (never a path from a dataset)."""
    arch = tag.partition("/")[0]
    bundled = Path(__file__).resolve().parent / "models" / f"{arch}.json"
    if _NAME.fullmatch(arch) and not arch.endswith(".json"):
        import open_clip

        if arch in open_clip.list_models() or bundled.is_file():
            return arch
    raise GcsembError(
        f"The dataset's model tag {tag!r} names the architecture {arch!r}, which neither "
        "open_clip nor gcsemb ships: pass the one it was embedded with, model=... (CLI: --model)."
    )


def _registry_tag(arch: str, weights: str) -> bool:
    import open_clip

    return bool(open_clip.get_pretrained_cfg(arch, weights))


def _recorded_checkpoint(name: str, hash8: str, info: dict[str, Any]) -> Path:
    """The local checkpoint with the dataset's recorded sha256: its own file, or one cached."""
    from gcsemb.checkpoints import _content_hash

    sha = str(info.get("checkpoint_sha256") or "").lower()
    where = str(info.get("checkpoint") or "")
    what = f"the checkpoint {name} (sha256 {hash8}...)"
    again = f"pretrained='/path/to/{name}' (CLI: --pretrained PATH), or an embedder="
    if not re.fullmatch(r"[0-9a-f]{64}", sha) or not sha.startswith(hash8):
        raise GcsembError(
            f"The dataset was embedded with {what} but does not record where that file is. "
            f"Pass it again: {again}."
        )
    problem = ""
    local = where.removeprefix("file://") if where.startswith("file://") else where
    if local and "://" not in local:
        path = Path(local)
        if not path.is_absolute():
            problem = f"{where} is not an absolute path"
        elif not path.is_file():
            problem = f"{where} no longer exists"
        else:
            actual = _content_hash(path)
            if actual == sha:
                _announce(f"the checkpoint the dataset records, {path}", sha)
                return path
            problem = (
                f"the file at {where} has another content hash: its sha256 differs "
                f"(now {actual[:8]}..., recorded {sha[:8]}...), so it was changed or replaced"
            )
    cached = _cached_checkpoint(sha, name)
    if cached is not None:
        _announce(f"{cached} from gcsemb's cache for {where or name}", sha)
        return cached
    if "://" in local:
        raise GcsembError(
            f"The dataset was embedded with {what} from {where} (sha256 {sha}). gcsemb does not "
            "fetch a location written in a dataset, and no file with that sha256 is in its "
            f"cache. If you trust it, pass it: pretrained='{where}' (CLI: --pretrained {where})."
        )
    whence = f"from {where}, but {problem}" if where else "but does not record where it is"
    raise GcsembError(
        f"The dataset was embedded with {what} {whence}, and no file with that sha256 is in "
        f"gcsemb's cache. Pass the checkpoint it was embedded with: {again}."
    )


def _cached_checkpoint(sha: str, name: str) -> Path | None:
    """A file gcsemb has hashed before (its hash record) whose content is still ``sha``."""
    from gcsemb.checkpoints import _content_hash, cache_dir

    try:
        known = json.loads((cache_dir() / "checkpoint-hashes.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(known, dict):
        return None
    paths = [p for p, e in known.items() if isinstance(e, dict) and e.get("sha256") == sha]
    paths.sort(key=lambda p: (Path(p).name != name, p))  # the same file name first
    for candidate in map(Path, paths):
        try:
            if candidate.is_file() and _content_hash(candidate) == sha:
                return candidate
        except OSError:
            continue
    return None


def _announce(what: str, sha: str) -> None:
    """Say once per process which file stands in for a dataset's checkpoint (stderr)."""
    if (what, sha) not in _ANNOUNCED:
        _ANNOUNCED.add((what, sha))
        print(f"gcsemb: using {what} (sha256 {sha[:12]}... matches)", file=sys.stderr)


def _comparable(tag: str, name: str) -> bool:
    """Same model: equal tags, or one checkpoint's bytes (hash) under two file names."""
    if tag == name:
        return True
    (arch_a, _, weights_a), (arch_b, _, weights_b) = tag.partition("/"), name.partition("/")
    a, b = _CHECKPOINT_WEIGHTS.fullmatch(weights_a), _CHECKPOINT_WEIGHTS.fullmatch(weights_b)
    return arch_a == arch_b and a is not None and b is not None and a["hash"] == b["hash"]


def _architecture_path(arch: str) -> str:
    """``arch`` if open_clip knows it, else gcsemb's bundled config of that name."""
    bundled = Path(__file__).resolve().parent / "models" / f"{arch}.json"
    if bundled.is_file():
        import open_clip

        if arch not in open_clip.list_models():
            return str(bundled)
    return arch


def top_k(
    df: pd.DataFrame, matrix: np.ndarray, query: np.ndarray, k: int, first: str | None = None
) -> pd.DataFrame:
    """The ``k`` rows most similar to the unit vector ``query``, best first.

    Ties keep the dataset's order, except that the row ``first`` (the query image itself) wins
    its tie, so an image always finds itself before its exact copies.
    """
    import pandas as pd

    query = np.asarray(query, dtype=np.float32).reshape(-1)
    if len(matrix) == 0:
        return pd.DataFrame({c: [] for c in RESULT_COLUMNS})
    if matrix.shape[1] != len(query):
        raise ValueError(
            f"The query has {len(query)} dimensions but the dataset {matrix.shape[1]}: "
            "embed it with the dataset's model."
        )
    scores = matrix @ query
    k = max(0, min(int(k), len(scores)))
    candidates = np.argpartition(-scores, k - 1)[:k] if 0 < k < len(scores) else np.arange(k)
    # include every row tied with the k-th best so the tie-break below is exact
    if k:
        cutoff = scores[candidates].min()
        candidates = np.flatnonzero(scores >= cutoff)
    uris = df["uri"].to_numpy()
    is_first = (uris[candidates] == first) if first is not None else np.zeros(len(candidates))
    order = np.lexsort((candidates, ~is_first.astype(bool), -scores[candidates]))[:k]
    picked = candidates[order]
    out = pd.DataFrame(
        {
            "uri": uris[picked],
            "score": scores[picked].astype(np.float32),
            "md5": df["md5"].to_numpy()[picked] if "md5" in df else None,
        }
    )
    out.attrs["store"] = df.attrs.get("store")  # the access thumbnails of the results reuse
    out.attrs["dataset"] = df.attrs.get("dataset")  # and what they may fetch (its source)
    return out


def search_text(
    data: Any,
    query: str,
    *,
    k: int = 10,
    embedder: Embedder | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    token: Any = None,
    device: str = "auto",
) -> pd.DataFrame:
    """The ``k`` images that best match a text, with the text tower of the dataset's model.

    Args:
        data: A dataset URL, the ``(df, matrix)`` pair of :func:`gcsemb.read_embeddings`, or a
            DataFrame with an ``embedding`` column. Pass the pair when searching repeatedly.
        query: What to look for, e.g. ``"a red car at night"``.
        k: How many results.
        embedder: The dataset's model, already loaded.
        model: Architecture or config JSON, as given to :func:`gcsemb.embed` (default: from the
            dataset's model tag).
        pretrained: Weights, as given to :func:`gcsemb.embed` (default: recovered from the
            dataset when that is safe, see :func:`dataset_weights`).
        token: Credentials for ``gs://``.
        device: Where to run the text tower.

    Returns:
        A DataFrame with ``uri``, ``score`` (cosine similarity) and ``md5``, best first.

    Example:
        >>> search_text("gs://my-bucket/embeddings", "a cat on a sofa", k=5)  # doctest: +SKIP
                                        uri     score                       md5
        0  gs://my-bucket/photos/cat-17.jpg  0.312871  lU1kSQ0Q...
    """
    if not isinstance(query, str) or not query.strip():
        raise ValueError("Give a non-empty text to search for, e.g. 'a photo of a cat'.")
    df, matrix, dataset = embeddings_of(data, token=token)
    access = token or dataset
    embedder = _dataset_embedder(df, "text", embedder, model, pretrained, access, device)
    return top_k(df, matrix, embedder.embed_texts([query])[0], k)


def search_image(
    data: Any,
    image: Any,
    *,
    k: int = 10,
    embedder: Embedder | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    token: Any = None,
    device: str = "auto",
) -> pd.DataFrame:
    """The ``k`` images most similar to an image of the dataset or a new one.

    Args:
        data: A dataset URL, the ``(df, matrix)`` pair, or a DataFrame with ``embedding``.
        image: A URI in the dataset (its stored embedding is used: no model needed, and it comes
            back first), another image's URI or local path, a PIL image, image bytes, or an
            embedding vector.
        k: How many results.
        embedder: The dataset's model, for images not in the dataset.
        model: As given to :func:`gcsemb.embed` (default: from the dataset's tag).
        pretrained: As given to :func:`gcsemb.embed` (default: see :func:`dataset_weights`).
        token: Credentials for ``gs://``.
        device: Where to run the image tower.

    Returns:
        A DataFrame with ``uri``, ``score`` and ``md5``, best first.

    Example:
        >>> hits = search_image((df, X), "gs://my-bucket/photos/cat-17.jpg", k=8)  # doctest: +SKIP
        >>> hits.uri[0]  # doctest: +SKIP
        'gs://my-bucket/photos/cat-17.jpg'
    """
    df, matrix, dataset = embeddings_of(data, token=token)
    access = token or dataset
    if isinstance(image, np.ndarray) and image.ndim == 1:
        return top_k(df, matrix, image / (np.linalg.norm(image) or 1.0), k)
    if isinstance(image, str | os.PathLike):
        uri = str(image)
        hit = np.flatnonzero(df["uri"].to_numpy() == uri) if len(df) else []
        if len(hit):
            return top_k(df, matrix, matrix[hit[0]], k, first=uri)
        # the model first: weights the dataset names but gcsemb refuses cost no read
        embedder = _dataset_embedder(df, "image", embedder, model, pretrained, access, device)
        pil = _as_pil(_read_image(uri, access))  # the caller named it: fetched as given
    else:
        pil = _as_pil(image)
        embedder = _dataset_embedder(df, "image", embedder, model, pretrained, access, device)
    return top_k(df, matrix, embedder.embed_images([pil])[0], k)


def _dataset_embedder(
    df: pd.DataFrame,
    what: str,
    embedder: Embedder | None,
    model: str | None,
    pretrained: str | None,
    token: Any,
    device: str,
) -> Embedder:
    """The model of the rows (checked against ``embedder`` when one is given) to embed ``what``."""
    tag = _tag(df)
    if tag is not None:
        return embedder_for(
            tag,
            embedder=embedder,
            model=model,
            pretrained=pretrained,
            token=token,
            device=device,
            dataset=df.attrs.get("dataset"),
        )
    if embedder is None:
        raise ValueError(f"No model tag in the rows: pass embedder= to embed the {what}.")
    return embedder


def _read_image(uri: str, token: Any) -> bytes:
    """The bytes of an image outside the dataset (a local path or any fsspec URL)."""
    if "://" not in uri:
        path = Path(uri).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{uri} is neither a uri of the dataset nor an image file: pass a dataset uri "
                "(df.uri), a local image path, or a gs:// URL."
            )
        return path.read_bytes()
    from gcsemb.storage import cat_many, explain, open_store

    store = open_store(uri, token=token)
    (data,) = cat_many(store, [store.path])
    if isinstance(data, BaseException):
        raise explain(data, uri, store, "read") from data
    return data


def _as_pil(image: Any) -> Image.Image:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, bytes | bytearray | memoryview):
        from gcsemb.decode import decode_image

        decoded = decode_image(bytes(image))
        if not decoded.ok:
            raise ValueError(f"Cannot search with this image: {decoded.error}.")
        return decoded.image
    if isinstance(image, io.IOBase):
        return _as_pil(image.read())
    raise TypeError(
        f"Cannot search with a {type(image).__name__}: pass a dataset uri, an image path or "
        "URL, a PIL image, image bytes or an embedding vector."
    )


def near_duplicates(
    data: Any,
    *,
    threshold: float = 0.95,
    chunk: int = 4096,
    max_pairs: int = 1_000_000,
    token: Any = None,
    model: str | None = None,
) -> pd.DataFrame:
    """Every pair of images whose embeddings' cosine similarity is at least ``threshold``.

    Exact: all pairs are compared, in blocks of ``chunk`` x ``chunk`` rows (memory
    ``O(chunk^2)``, about 64 MB at 4096), so 100k images take about a minute on 2 cores. Images
    with the same bytes (same md5) are always reported, whatever their score.

    Args:
        data: A dataset URL, the ``(df, matrix)`` pair, or a DataFrame with ``embedding``.
        threshold: Minimum cosine similarity (CLIP: about 0.95 and up for re-encodes, crops
            and resizes of one photo; 1.0 for identical pixels).
        chunk: Rows per block.
        max_pairs: Stop with an error past this many pairs (the threshold is too low).
        token: Credentials for ``gs://``.
        model: The model tag to use when the dataset holds several.

    Returns:
        A DataFrame with ``uri_a``, ``uri_b``, ``score`` and ``exact`` (same md5), most similar
        first; each pair once.

    Example:
        >>> pairs = near_duplicates("gs://my-bucket/embeddings", threshold=0.97)  # doctest: +SKIP
        >>> pairs.head(3)  # doctest: +SKIP
    """
    import pandas as pd

    df, matrix, _ = embeddings_of(data, token=token, model=model)
    n = len(matrix)
    found_a: list[np.ndarray] = []
    found_b: list[np.ndarray] = []
    total = 0
    if n:
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        unit = (matrix / np.where(norms == 0, 1, norms)).astype(np.float32)
        for i0 in range(0, n, chunk):
            block = unit[i0 : i0 + chunk]
            for j0 in range(i0, n, chunk):
                sims = block @ unit[j0 : j0 + chunk].T
                ii, jj = np.nonzero(sims >= threshold)
                if i0 == j0:  # the diagonal block: each pair once, no self-pairs
                    keep = jj > ii
                    ii, jj = ii[keep], jj[keep]
                found_a.append(ii + i0)
                found_b.append(jj + j0)
                total += len(ii)
                if total > max_pairs:
                    raise ValueError(
                        f"More than {max_pairs:,} pairs score >= {threshold}: raise the "
                        "threshold (or max_pairs)."
                    )
    a = np.concatenate(found_a) if found_a else np.zeros(0, np.int64)
    b = np.concatenate(found_b) if found_b else np.zeros(0, np.int64)
    if "md5" in df and n:
        ea, eb = _same_md5(df["md5"].to_numpy())
        a, b = np.concatenate([a, ea]), np.concatenate([b, eb])
        pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
        a, b = pairs[:, 0], pairs[:, 1]
    scores = np.einsum("ij,ij->i", unit[a], unit[b]) if len(a) else np.zeros(0, np.float32)
    md5 = df["md5"].to_numpy() if "md5" in df else None
    exact = (md5[a] == md5[b]) & pd.notna(md5[a]) if md5 is not None else np.zeros(len(a), bool)
    uris = df["uri"].to_numpy()
    out = pd.DataFrame(
        {
            "uri_a": uris[a],
            "uri_b": uris[b],
            "score": np.asarray(scores, np.float32),
            "exact": np.asarray(exact, bool),
        }
    )
    out = out.sort_values(["score", "uri_a", "uri_b"], ascending=[False, True, True])
    out = out.reset_index(drop=True)
    out.attrs["store"] = df.attrs.get("store")  # the access thumbnails of the pairs reuse
    out.attrs["dataset"] = df.attrs.get("dataset")  # and what they may fetch (its source)
    return out


def _same_md5(md5: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of rows with the same (non-null) md5."""
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(md5):
        if m:
            groups.setdefault(m, []).append(i)
    a: list[int] = []
    b: list[int] = []
    for rows in groups.values():
        for x in range(len(rows)):
            for y in range(x + 1, len(rows)):
                a.append(rows[x])
                b.append(rows[y])
    return np.asarray(a, np.int64), np.asarray(b, np.int64)


def uris_of(results: Any) -> Sequence[str]:
    """The URIs of a search result (DataFrame with ``uri``) or a list of URIs."""
    if hasattr(results, "columns") and "uri" in results.columns:
        return list(results["uri"])
    return [str(u) for u in results]
