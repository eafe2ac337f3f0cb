"""A model-config JSON as data a dataset carries: recorded when embedding, checked when used.

A dataset embedded with ``--model my-arch.json`` records that JSON in its shards' metadata
(``gcsemb.architecture``), so a later search needs no ``--model``: when the dataset's model tag
names an architecture that neither open_clip nor gcsemb ships, the recorded JSON is checked and
used (a line on stderr says so). A dataset may come from anyone, so the JSON is data, never a
way to fetch or run something: at most :data:`MAX_CONFIG_BYTES`, only open_clip's own
config keys, plain JSON values of a sane size, and no key that makes open_clip download (a
Hugging Face model or tokenizer, pretrained timm weights).

Example:
    >>> sorted(check_model_config('{"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}}'))
    ['embed_dim', 'text_cfg', 'vision_cfg']
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from gcsemb.errors import GcsembError

MAX_CONFIG_BYTES = 64 << 10
"""The largest model-config JSON a dataset may carry (open_clip's own are under 2 KiB)."""

_TOP = {
    "embed_dim",
    "vision_cfg",
    "text_cfg",
    "quick_gelu",
    "custom_text",
    "init_logit_scale",
    "init_logit_bias",
    "nonscalar_logit_scale",
}
_FETCHING = ("hf_model_name", "hf_tokenizer_name", "hf_model_pretrained", "timm_model_pretrained")
_LARGEST = 1 << 20  # any number in a config (widths, layers, vocabulary) stays below this


def architecture_record(model: str) -> dict[str, str]:
    """What a run records about its architecture: the model-config JSON it was given, if any.

    Args:
        model: An open_clip architecture name or a model-config JSON path.

    Returns:
        ``{"architecture": <the JSON, compact>}`` for a config file that passes
        :func:`check_model_config`; ``{}`` for a name, or a config a dataset could not carry
        (a search then needs ``--model`` again).

    Example:
        >>> architecture_record("ViT-B-32")
        {}
    """
    if not model.endswith(".json"):
        return {}
    try:
        config = check_model_config(Path(model).expanduser().read_text())
    except (OSError, GcsembError):
        return {}
    return {"architecture": json.dumps(config, sort_keys=True, separators=(",", ":"))}


def check_model_config(text: str) -> dict[str, Any]:
    """The model config in ``text``, checked to be plain open_clip data; else a GcsembError.

    Raises:
        GcsembError: Too large, not JSON, not a config (``embed_dim``, ``vision_cfg``,
            ``text_cfg``), a key open_clip does not know, a value that is not plain data of a
            sane size, or a key that would make open_clip download something.
    """
    if len(text.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise GcsembError(f"its model config is larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        config = json.loads(text)
    except ValueError as e:
        raise GcsembError(f"its model config is not JSON ({e})") from e
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
        raise GcsembError("its model config lacks embed_dim, vision_cfg or text_cfg")
    _check_keys("the config", config, _TOP)
    vision, text_fields = _tower_fields()
    for name, allowed in (("vision_cfg", vision), ("text_cfg", text_fields)):
        if not isinstance(config[name], dict):
            raise GcsembError(f"its model config's {name} is not an object")
        _check_keys(name, config[name], allowed)
    _check_values(config, depth=0)
    return config


def recorded_architecture(arch: str, text: str) -> Path:
    """The recorded config of ``arch``, checked, as ``<cache>/architectures/<sha>/<arch>.json``.

    Raises:
        GcsembError: The config fails :func:`check_model_config` (the reason, in words).
    """
    from gcsemb.storage.cache import atomic_write, cache_dir

    config = check_model_config(text)
    data = json.dumps(config, sort_keys=True, indent=1)
    key = hashlib.sha256(data.encode()).hexdigest()[:16]
    path = cache_dir() / "architectures" / key / f"{arch}.json"
    if not path.is_file():
        atomic_write(path, lambda tmp: Path(tmp).write_text(data))
    return path


def _tower_fields() -> tuple[set[str], set[str]]:
    """The keys open_clip's vision and text tower configs take."""
    import dataclasses

    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    def names(cls: Any) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    return names(CLIPVisionCfg), names(CLIPTextCfg)


def _check_keys(where: str, section: dict[str, Any], allowed: set[str]) -> None:
    for key, value in section.items():
        if key in _FETCHING and value not in (None, False, ""):
            raise GcsembError(
                f"its model config's {key!r} would make open_clip download something: "
                "gcsemb fetches nothing a dataset names"
            )
        if key not in allowed:
            raise GcsembError(f"its model config has a key open_clip does not know: {key!r}")


def _check_values(value: Any, depth: int) -> None:
    """Plain JSON data: numbers of a sane size, short strings, shallow lists and objects."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        if not math.isfinite(value) or abs(value) >= _LARGEST:
            raise GcsembError(f"its model config holds the number {value}, out of range")
        return
    if isinstance(value, str):
        if len(value) > 200:
            raise GcsembError("its model config holds a string longer than 200 characters")
        return
    if depth >= 3 or not isinstance(value, list | dict):
        raise GcsembError("its model config nests deeper than open_clip's own")
    for item in value.values() if isinstance(value, dict) else value:
        _check_values(item, depth + 1)
