"""The embedder of a dataset's model, recovered from what is safe to trust in the dataset.

Text and new images are embedded with the model that embedded the dataset (its tag is in the
``model`` column, ``"<architecture>/<weights>"``). :func:`embedder_for` loads it, or checks the one
passed; a :class:`ModelChoice` says how to load it (what is not chosen comes from the dataset), and
:func:`dataset_weights` says which weights to load, from only what cannot run or fetch anything a
dataset's author chose:

- an open_clip weights tag of the dataset's architecture (``laion2b_s34b_b79k``), or random weights;
- a checkpoint (``name#hash``): the local file the dataset records, when its sha256 is still the
  recorded one and the file is one gcsemb may read (in its cache, or passed by the user as weights
  on this machine before: a dataset naming ``/etc/shadow`` gets nothing opened), or a file with
  that sha256 already in gcsemb's cache (a line on stderr says which).
  A ``gs://`` or ``https://`` checkpoint location written in a dataset is never fetched: pass it as
  ``pretrained=`` (CLI ``--pretrained``) if you trust it.

Anything else in a dataset's model tag (a URL, a path) is refused before any request is made.

Example:
    >>> from gcsemb.model.dataset_embedder import dataset_weights
    >>> dataset_weights("ViT-B-32/random-seed0") is None
    True
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gcsemb.embedding.config import DEVICE_HELP, option_field
from gcsemb.errors import GcsembError
from gcsemb.model.checkpoints import BUNDLED_MODELS

if TYPE_CHECKING:
    from gcsemb.model.embedder import Embedder


@dataclass(frozen=True)
class ModelChoice:
    """Which model embeds the queries of a dataset (texts, new images), before it is loaded.

    Every field left as is comes from the dataset: its model tag names the architecture, and
    :func:`dataset_weights` recovers the weights where that is safe. Pass one wherever an
    ``embedder=`` is taken (:func:`gcsemb.search_text`, :class:`gcsemb.Explorer`, ...), or its
    fields as keywords there (``pretrained="/models/tuned.pt"``).

    Attributes:
        model: open_clip architecture or model-config JSON, as given to :func:`gcsemb.embed`
            (None: the dataset's, when open_clip or gcsemb ships it).
        pretrained: Weights tag or checkpoint path/URL, as given to :func:`gcsemb.embed`
            (None: recovered from the dataset by :func:`dataset_weights`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``: where queries are embedded.

    Example:
        >>> ModelChoice(pretrained="/models/tuned.pt")
        ModelChoice(model=None, pretrained='/models/tuned.pt', device='auto')
        >>> e = ModelChoice(device="cpu").load("ViT-B-32/laion2b_s34b_b79k")  # doctest: +SKIP
    """

    # metadata: the help of gcsemb search's --model, --pretrained and --device
    model: str | None = option_field(
        None, "architecture given to gcsemb embed", shown="the dataset's"
    )
    pretrained: str | None = option_field(
        None,
        "weights given to gcsemb embed (needed only for a checkpoint the dataset's record "
        "does not find)",
    )
    device: str = option_field("auto", DEVICE_HELP)

    def load(
        self, tag: str, *, token: Any = None, dataset: Mapping[str, Any] | None = None
    ) -> Embedder:
        """The embedder of the dataset model tagged ``tag``, loaded as chosen and checked.

        Args:
            tag: The dataset's ``model`` column value, e.g. ``"ViT-B-32/laion2b_s34b_b79k"``.
            token: Credentials for a ``gs://`` checkpoint passed as ``pretrained``.
            dataset: What the dataset records about how it was made (``df.attrs["dataset"]``):
                the checkpoint's location and sha256.

        Raises:
            GcsembError: The weights cannot be recovered safely, or the loaded model is another.
        """
        from gcsemb.model.embedder import load_embedder

        model = self.model if self.model is not None else _dataset_model(tag, dataset)
        pretrained = self.pretrained
        if pretrained is None:
            pretrained = dataset_weights(tag, dataset)
        return _checked(tag, load_embedder(model, pretrained, device=self.device, token=token))


def chosen_model(
    embedder: Embedder | ModelChoice | None = None, **choice: Any
) -> Embedder | ModelChoice:
    """``embedder``, or the :class:`ModelChoice` that ``choice``'s keywords change.

    What the public functions do with their ``embedder=`` and ``model=``/``pretrained=``/
    ``device=`` shorthand: a loaded embedder wins (the keywords are then not needed).

    Example:
        >>> chosen_model(None, pretrained="tuned.pt")
        ModelChoice(model=None, pretrained='tuned.pt', device='auto')
        >>> chosen_model(ModelChoice(model="ViT-B-16"), device="cpu")
        ModelChoice(model='ViT-B-16', pretrained=None, device='cpu')
    """
    if embedder is None:
        return ModelChoice(**choice)
    if isinstance(embedder, ModelChoice):
        return replace(embedder, **choice)
    return embedder


def embedder_for(
    tag: str,
    *,
    embedder: Embedder | ModelChoice | None = None,
    token: Any = None,
    dataset: Mapping[str, Any] | None = None,
    **choice: Any,
) -> Embedder:
    """The embedder of the model tagged ``tag`` (``"<arch>/<weights>"``), checked to match.

    Args:
        tag: The dataset's ``model`` column value, e.g. ``"ViT-B-32/laion2b_s34b_b79k"``.
        embedder: An embedder already loaded (it is only checked against ``tag``), or the
            :class:`ModelChoice` to load (default: everything recovered from the dataset).
        token: Credentials for a ``gs://`` checkpoint passed as ``pretrained``.
        dataset: What the dataset records about how it was made (``df.attrs["dataset"]``):
            the checkpoint's location and sha256.
        **choice: ``model=``, ``pretrained=``, ``device=``: the fields of a :class:`ModelChoice`.

    Raises:
        GcsembError: The weights cannot be recovered safely, or the loaded model is another one.

    Example:
        >>> e = embedder_for("ViT-B-32/laion2b_s34b_b79k")  # doctest: +SKIP
        >>> e = embedder_for(tag, embedder=ModelChoice(pretrained="tuned.pt"))  # doctest: +SKIP
    """
    chosen = chosen_model(embedder, **choice)
    if isinstance(chosen, ModelChoice):
        return chosen.load(tag, token=token, dataset=dataset)
    return _checked(tag, chosen)


def _checked(tag: str, embedder: Embedder) -> Embedder:
    """``embedder`` if it is the model tagged ``tag``."""
    if not _comparable(tag, embedder.name):
        raise GcsembError(
            f"The dataset was embedded with {tag} but the model loaded is {embedder.name}: "
            "their embeddings are not comparable. Pass the model and pretrained weights the "
            "dataset was embedded with (CLI: --model/--pretrained as given to gcsemb embed)."
        )
    return embedder


_CHECKPOINT_WEIGHTS = re.compile(r"(?P<name>[^/\\#]+)#(?P<hash>[0-9a-f]{8})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*")
_ANNOUNCED: set[str] = set()


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


def _dataset_model(tag: str, dataset: Mapping[str, Any] | None) -> str:
    """The tag's architecture if open_clip or gcsemb ships it, else the config the dataset records.

    Never a path from a dataset: a recorded model-config JSON is checked as data
    (:func:`gcsemb.model.model_config.check_model_config`) and written into gcsemb's cache.
    """
    arch = tag.partition("/")[0]
    bundled = BUNDLED_MODELS / f"{arch}.json"
    recorded = str((dataset or {}).get("architecture") or "")
    problem = ""
    if _NAME.fullmatch(arch) and not arch.endswith(".json"):
        import open_clip

        if arch in open_clip.list_models() or bundled.is_file():
            return _architecture_path(arch)
        if recorded:
            from gcsemb.model.model_config import recorded_architecture

            try:
                path = recorded_architecture(arch, recorded)
            except GcsembError as e:
                problem = f" The dataset records its config, but {e}."
            else:
                _say(f"using the architecture {arch} that the dataset records (its model config)")
                return str(path)
    raise GcsembError(
        f"The dataset's model tag {tag!r} names the architecture {arch!r}, which neither "
        f"open_clip nor gcsemb ships.{problem} Pass the one it was embedded with, model=... "
        "(CLI: --model)."
    )


def _registry_tag(arch: str, weights: str) -> bool:
    import open_clip

    return bool(open_clip.get_pretrained_cfg(arch, weights))


def _recorded_checkpoint(name: str, hash8: str, info: dict[str, Any]) -> Path:
    """The local checkpoint with the dataset's recorded sha256: its own file, or one cached.

    The recorded file is read only when it is in gcsemb's cache or the user passed it as
    weights on this machine before (:func:`gcsemb.model.checkpoints.trusted_checkpoint`): a dataset
    naming ``/etc/shadow`` gets nothing opened, hashed or remembered.
    """
    from gcsemb.model.checkpoints import content_hash, trusted_checkpoint
    from gcsemb.storage import local_path

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
    local = local_path(where)
    if local:
        path = Path(local)
        if not path.is_absolute():
            problem = f"{where} is not an absolute path"
        elif not trusted_checkpoint(path):
            problem = (
                f"{where} is neither in gcsemb's cache nor a checkpoint you passed on this "
                "machine, so gcsemb does not read it on a dataset's word"
            )
        elif not path.is_file():
            problem = f"{where} no longer exists"
        else:
            actual = content_hash(path)
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
    if local is None:
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
    from gcsemb.model.checkpoints import content_hash, hash_memo

    paths = [p for p, e in hash_memo().items() if e.get("sha256") == sha]
    paths.sort(key=lambda p: (Path(p).name != name, p))  # the same file name first
    for candidate in map(Path, paths):
        try:
            if candidate.is_file() and content_hash(candidate) == sha:
                return candidate
        except OSError:
            continue
    return None


def _announce(what: str, sha: str) -> None:
    """Say once per process which file stands in for a dataset's checkpoint (stderr)."""
    _say(f"using {what} (sha256 {sha[:12]}... matches)")


def _say(line: str) -> None:
    """One line on stderr, once per process."""
    if line not in _ANNOUNCED:
        _ANNOUNCED.add(line)
        print(f"gcsemb: {line}", file=sys.stderr)


def _comparable(tag: str, name: str) -> bool:
    """Same model: equal tags, or one checkpoint's bytes (hash) under two file names."""
    if tag == name:
        return True
    (arch_a, _, weights_a), (arch_b, _, weights_b) = tag.partition("/"), name.partition("/")
    a, b = _CHECKPOINT_WEIGHTS.fullmatch(weights_a), _CHECKPOINT_WEIGHTS.fullmatch(weights_b)
    return arch_a == arch_b and a is not None and b is not None and a["hash"] == b["hash"]


def _architecture_path(arch: str) -> str:
    """``arch`` if open_clip knows it, else gcsemb's bundled config of that name."""
    bundled = BUNDLED_MODELS / f"{arch}.json"
    if bundled.is_file():
        import open_clip

        if arch not in open_clip.list_models():
            return str(bundled)
    return arch
