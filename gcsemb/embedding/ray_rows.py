"""How images travel between the Ray engine's tasks: one Arrow row each, failures as columns.

A listed object is a row of :data:`OBJECT_SCHEMA` (its :class:`~gcsemb.storage.ObjectInfo`
fields, the objects with the same bytes, a failure already at listing); every later stage adds
its columns and rewrites the :data:`FAILURE_COLUMNS`, so one bad image never fails a batch.
"""

from __future__ import annotations

import pickle
from typing import Any

import pyarrow as pa

from gcsemb.embedding.stages import Failure, Item
from gcsemb.storage import OBJECT_FIELDS, ObjectInfo, object_schema

OBJECT_SCHEMA = pa.schema(
    [
        *object_schema(),
        pa.field("aliases", pa.binary()),  # pickled ObjectInfos with the same bytes, or empty
        pa.field("stage", pa.string()),  # a failure already at listing: too large to fetch
        pa.field("error", pa.string()),
    ]
)


FAILURE_COLUMNS = {  # how a Failure travels between the stages' tasks
    "stage": pa.string(),
    "error": pa.string(),
    "environmental": pa.bool_(),
    "decoders": pa.string(),
}


def objects_table(chunk: list[tuple[Item, list[ObjectInfo]]]) -> pa.Table:
    """Listed items as :data:`OBJECT_SCHEMA` rows, each with the objects sharing its bytes."""
    cols: dict[str, list[Any]] = {name: [] for name in OBJECT_SCHEMA.names}
    for item, aliases in chunk:
        for name in list(OBJECT_FIELDS):
            cols[name].append(getattr(item.obj, name))
        cols["aliases"].append(pickle.dumps(aliases) if aliases else b"")
        cols["stage"].append(item.failure.stage if item.failure else None)
        cols["error"].append(item.failure.error if item.failure else None)
    return pa.table(cols, schema=OBJECT_SCHEMA)


def items_of(batch: pa.Table, **columns: list[Any]) -> list[Item]:
    """Items of a batch of rows, with the failure the rows carry."""
    names = [n for n in FAILURE_COLUMNS if n in batch.column_names]
    failures = batch.select(names).to_pylist()
    items = []
    for obj, failure in zip(objects_of(batch), failures, strict=True):
        it = Item(obj, md5=obj.md5)
        if failure.get("stage"):
            it.failure = Failure(
                failure["stage"],
                failure.get("error") or "no result",
                bool(failure.get("environmental")),
                failure.get("decoders"),
            )
        items.append(it)
    return items


def with_failures(batch: pa.Table, items: list[Item]) -> pa.Table:
    """``batch`` with its failure columns set from ``items``."""
    batch = batch.drop_columns([n for n in FAILURE_COLUMNS if n in batch.column_names])
    for name, kind in FAILURE_COLUMNS.items():
        values = [getattr(it.failure, name) if it.failure else None for it in items]
        batch = batch.append_column(name, pa.array(values, kind))
    return batch


def objects_of(batch: pa.Table) -> list[ObjectInfo]:
    """The :class:`~gcsemb.storage.ObjectInfo` of each row."""
    columns = batch.select(list(OBJECT_FIELDS)).to_pydict()
    return [ObjectInfo(*values) for values in zip(*columns.values(), strict=True)]


def aliases_of(blob: bytes | None) -> list[ObjectInfo]:
    """The objects with the same bytes as a row (its ``aliases`` column)."""
    return pickle.loads(blob) if blob else []
