"""The Ray engine's listing: one delimiter listing on the driver, then one task per folder.

:func:`fan_out` names SRC's top-level folders and splits DST's done index by them;
:func:`list_part` lists one folder in a task, drops what is done, folds identical bytes and
yields blocks of :data:`~gcsemb.embedding.ray_rows.OBJECT_SCHEMA` rows for Ray Data.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from gcsemb.embedding.ray_rows import objects_table
from gcsemb.embedding.stages import DEDUPE_WINDOW, Counts, Item, plan
from gcsemb.storage import (
    ObjectInfo,
    Store,
    explain,
    glob_base,
    list_images,
    normalize_extensions,
)

BLOCK_ROWS = 1024  # images per listing block: the unit a fetch/decode task takes


@dataclass(frozen=True)
class Part:
    """One listing task: a folder to list (or none) plus objects the driver already listed."""

    url: str | None
    objects: tuple[ObjectInfo, ...] = ()
    done: dict[str, Any] | None = None


def fan_out(
    src: Store, extensions: frozenset[str] | None, done: dict[str, Any]
) -> tuple[list[Part], str | None]:
    """Split ``src`` into listing parts: one per top-level folder, plus the top-level images.

    One delimiter listing (``fs.ls``) names the folders; each folder is then listed by its own
    task, with the slice of the done index under it (so no task holds the whole index).

    Returns:
        The parts and the glob pattern (a regex source) every listed name must match, if any.
    """
    path = src.path
    base, regex = glob_base(path)
    if regex is None:
        base = path.rstrip("/") or path
    elif not base:  # a glob in the bucket name (list_images explains it) or at a local root
        return [Part(src.url, done=done)], None
    try:
        folders, objects = src.backend.children(base)
    except FileNotFoundError:  # no such folder: list_images tells a bucket from a prefix
        return [Part(src.url, done=done)], None
    except Exception as e:
        raise explain(e, src.url, src, "list") from e
    exts = normalize_extensions(extensions)
    top = []
    for obj in objects:  # regular files only: never a pipe, a device, a broken link
        name = src.fs._strip_protocol(obj.uri)
        if (exts and os.path.splitext(name)[1].lower() not in exts) or (
            regex and not regex.match(name)
        ):
            continue
        top.append(obj)
    base_uri = src.uri(base)
    by_folder: dict[str, dict[str, Any]] = defaultdict(dict)  # the done index, split by folder
    for uri, row in done.items():
        if uri.startswith(base_uri + "/"):
            by_folder[uri[len(base_uri) + 1 :].split("/", 1)[0]][uri] = row
    parts = [
        Part(src.uri(name), done=by_folder.get(name.rsplit("/", 1)[-1], {}))
        for name in sorted(folders)
    ]
    if top:
        parts.insert(0, Part(None, tuple(top), {o.uri: done[o.uri] for o in top if o.uri in done}))
    return parts, regex.pattern if regex else None


def list_part(
    part: Part,
    src: Store,
    pattern: str | None,
    *,
    extensions: frozenset[str] | None,
    limit: int | None,
    max_object_bytes: int | None = None,
    block_rows: int = BLOCK_ROWS,
) -> Iterator[pa.Table | dict[str, int]]:
    """List one part, drop what is done, fold identical bytes; yield blocks, then the counts.

    Runs as a Ray streaming-generator task: each block becomes its own object for Ray Data, and
    the last item is ``{"seen": ..., "skipped": ..., "rows": ...}``.
    """
    fs = src.fs
    regex = re.compile(pattern, re.DOTALL) if pattern else None

    def listed() -> Iterator[ObjectInfo]:
        count = 0
        objects: Iterable[ObjectInfo] = part.objects
        if part.url is not None:
            objects = list_images(src.at(part.url), extensions=extensions)
        for obj in objects:
            if regex and not regex.match(fs._strip_protocol(obj.uri)):
                continue
            yield obj
            count += 1
            if limit is not None and count >= limit:
                return

    counts = Counts()
    window: list[tuple[Item, list[ObjectInfo]]] = []  # rows, each with its twins
    firsts: dict[str, list[ObjectInfo]] = {}  # md5 -> the twins list of its row in the window
    rows = 0
    for item in plan(listed(), part.done or {}, counts, max_object_bytes):
        if item.twin is not None and item.md5 in firsts:
            firsts[item.md5].append(item.obj)
            continue
        twins: list[ObjectInfo] = []
        window.append((item, twins))
        if item.md5 is not None and item.failure is None:
            firsts[item.md5] = twins
        if len(window) >= DEDUPE_WINDOW:
            for start in range(0, len(window), block_rows):
                rows += min(block_rows, len(window) - start)
                yield objects_table(window[start : start + block_rows])
            window, firsts = [], {}
    for start in range(0, len(window), block_rows):
        rows += min(block_rows, len(window) - start)
        yield objects_table(window[start : start + block_rows])
    yield {"seen": counts.seen, "skipped": counts.skipped, "rows": rows}
