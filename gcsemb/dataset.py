"""The embeddings dataset under DST: schema, atomic shard writes, reading back, the done index.

Layout (any fsspec URL: ``gs://``, a local folder, ...)::

    DST/part-<run>-00000.parquet   one row per image: uri, md5, size, generation, updated,
                                   width, height, model, embedding (float32, L2-normalised)
    DST/_errors/part-<run>-00000.parquet   one row per failed image: uri, md5, stage, error

``pandas.read_parquet(DST)`` and ``pyarrow.dataset.dataset(DST)`` read the embeddings (pyarrow
skips names starting with ``_`` or ``.``). Every shard appears whole or not at all, so a run killed
at any moment leaves only complete shards, and :func:`done_index` tells the next run what to skip.

Example:
    >>> from gcsemb.dataset import read_embeddings
    >>> df, matrix = read_embeddings("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> matrix.shape
    (306, 512)
"""

from __future__ import annotations

import datetime
import io
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gcsemb.storage import ObjectInfo, Store, explain, open_store, protocols

ERRORS_DIR = "_errors"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
META_MODEL = b"gcsemb.model"
META_DIM = b"gcsemb.dim"


def schema(model: str, dim: int) -> pa.Schema:
    """The embeddings schema, with the model and its dimension in the parquet metadata."""
    fields = [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("md5", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("generation", pa.int64()),
        pa.field("updated", pa.timestamp("us", tz="UTC")),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("model", pa.string()),
        pa.field("embedding", pa.list_(pa.float32())),
    ]
    return pa.schema(fields, metadata={META_MODEL: model.encode(), META_DIM: str(dim).encode()})


ERROR_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("md5", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("error", pa.string()),
        pa.field("model", pa.string()),
        pa.field("failed_at", pa.timestamp("us", tz="UTC")),
    ]
)


def write_parquet(fs: Any, path: str, table: pa.Table) -> None:
    """Write a parquet file so that it appears whole or not at all."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    if "file" in protocols(fs):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp"
        fs.pipe_file(tmp, buf.getvalue())
        fs.mv(tmp, path)  # a rename: atomic on one filesystem
    else:
        fs.pipe_file(path, buf.getvalue())  # an object store publishes an upload only when whole


@dataclass
class ShardWriter:
    """Collects rows and writes them as parquet shards under ``dst``.

    Args:
        store: The destination folder.
        model: The model tag stored in every row and in the metadata.
        dim: Embedding dimension.
        rows_per_shard: Flush after this many rows.
        seconds_per_shard: Flush at least this often, so an interrupted run loses little.
    """

    store: Store
    model: str
    dim: int
    rows_per_shard: int = 5000
    seconds_per_shard: float = 60.0
    run: str = field(default_factory=lambda: run_id())
    shards: int = 0
    error_shards: int = 0
    _rows: list[dict[str, Any]] = field(default_factory=list)
    _errors: list[dict[str, Any]] = field(default_factory=list)
    _last_flush: float = field(default_factory=time.monotonic)

    def add(
        self, obj: ObjectInfo, md5: str | None, width: int, height: int, embedding: np.ndarray
    ) -> None:
        """Add one embedded image."""
        self._rows.append(
            {
                "uri": obj.uri,
                "md5": md5,
                "size": obj.size,
                "generation": obj.generation,
                "updated": obj.updated,
                "width": width,
                "height": height,
                "model": self.model,
                "embedding": embedding,
            }
        )
        self._maybe_flush()

    def add_error(self, obj: ObjectInfo, md5: str | None, stage: str, error: str) -> None:
        """Record one image that failed, with the stage and the reason."""
        self._errors.append(
            {
                "uri": obj.uri,
                "md5": md5,
                "stage": stage,
                "error": error,
                "model": self.model,
                "failed_at": _now(),
            }
        )
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        due = time.monotonic() - self._last_flush > self.seconds_per_shard
        if len(self._rows) >= self.rows_per_shard or (due and (self._rows or self._errors)):
            self.flush()

    def flush(self) -> None:
        """Write what is pending as new shards (one for rows, one for errors)."""
        try:
            if self._rows:
                table = _rows_table(self._rows, schema(self.model, self.dim))
                path = f"{self._dst}/part-{self.run}-{self.shards:05d}.parquet"
                write_parquet(self.store.fs, path, table)
                self.shards += 1
                self._rows = []
            if self._errors:
                table = pa.Table.from_pylist(self._errors, schema=ERROR_SCHEMA)
                path = f"{self._dst}/{ERRORS_DIR}/part-{self.run}-{self.error_shards:05d}.parquet"
                write_parquet(self.store.fs, path, table)
                self.error_shards += 1
                self._errors = []
        except Exception as e:
            raise explain(e, self.store.url, self.store, "write") from e
        self._last_flush = time.monotonic()

    @property
    def _dst(self) -> str:
        return self.store.path.rstrip("/")


def run_id() -> str:
    """A shard-name prefix that sorts by start time (to the microsecond) and never collides."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}-{int(now * 1e6) % 1_000_000:06d}{uuid.uuid4().hex[:4]}"


def _rows_table(rows: list[dict[str, Any]], sch: pa.Schema) -> pa.Table:
    """Build a shard's table; embeddings go in as one flat float32 buffer, not Python lists."""
    emb = np.stack([r["embedding"] for r in rows]).astype(np.float32, copy=False)
    dim = emb.shape[1]
    offsets = pa.array(np.arange(0, emb.size + 1, dim, dtype=np.int32))
    arrays = [
        pa.array([r[f.name] for r in rows], type=f.type) for f in sch if f.name != "embedding"
    ]
    arrays.append(pa.ListArray.from_arrays(offsets, pa.array(emb.reshape(-1))))
    return pa.Table.from_arrays(arrays, schema=sch)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _parquet_files(store: Store, errors: bool = False) -> list[str]:
    path = store.path.rstrip("/")
    folder = f"{path}/{ERRORS_DIR}" if errors else path
    try:
        names = store.fs.ls(folder, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(
        n
        for n in names
        if n.endswith(".parquet") and not os.path.basename(n).startswith(("_", "."))
    )


def _read(store: Store, files: Sequence[str], columns: list[str] | None) -> pa.Table | None:
    """Read some columns of many shards, several at once (only the needed column chunks)."""
    if not files:
        return None
    from concurrent.futures import ThreadPoolExecutor

    fs = store.fs

    def one(path: str) -> pa.Table:
        # a plain read-ahead buffer: gcsfs's default "adaptive" cache leaves asyncio tasks behind
        # (ParquetFile, not read_table: that imports pyarrow.dataset and pandas, 0.3 s a run)
        with fs.open(path, "rb", cache_type="readahead", block_size=1 << 20) as f:
            return pq.ParquetFile(f).read(columns=columns)

    with ThreadPoolExecutor(8) as pool:
        tables = list(pool.map(one, files))
    return pa.concat_tables(tables, promote_options="default")


def done_index(dst: Store, model: str) -> dict[str, tuple[str | None, int, Any]]:
    """``uri -> (md5, size, updated)`` of the rows already in ``dst`` for ``model``.

    Reads only those small columns (never the embeddings), so deciding what to skip costs one
    listing of ``dst`` and a few column chunks. ``updated`` is in microseconds since the epoch
    (turning timestamps into datetimes would import pandas: a third of a no-op run).
    """
    table = _read(dst, _parquet_files(dst), ["uri", "md5", "size", "updated", "model"])
    if table is None:
        return {}
    updated = table.schema.get_field_index("updated")
    table = table.set_column(updated, "updated", table["updated"].cast(pa.int64()))
    cols = table.to_pydict()
    return {
        uri: (md5, size, updated)
        for uri, md5, size, updated, m in zip(
            cols["uri"], cols["md5"], cols["size"], cols["updated"], cols["model"], strict=True
        )
        if m == model
    }


def failed_index(dst: Store, model: str) -> dict[str, str]:
    """``uri -> md5`` of images whose bytes could not be decoded; the same bytes fail again."""
    table = _read(dst, _parquet_files(dst, errors=True), ["uri", "md5", "stage", "model"])
    if table is None:
        return {}
    rows = table.to_pylist()
    return {
        r["uri"]: r["md5"]
        for r in rows
        if r["model"] == model and r["md5"] and r["stage"] in ("decode", "preprocess")
    }


def is_done(obj: ObjectInfo, done: dict[str, Any]) -> bool:
    """Whether ``dst`` holds this exact version of the object (md5, else size + time).

    ``done`` merges :func:`done_index` and :func:`failed_index`: bytes that failed to decode are
    not fetched again until they change.
    """
    row = done.get(obj.uri)
    if row is None:
        return False
    if isinstance(row, str):  # a failed_index entry: the md5 of bytes that did not decode
        return row == obj.md5
    md5, size, updated = row
    if obj.md5:
        return md5 == obj.md5
    return size == obj.size and updated == _microseconds(obj.updated)


def _microseconds(when: datetime.datetime | None) -> int | None:
    """Microseconds since the epoch, as the ``updated`` column stores it (naive means UTC)."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return (when - EPOCH) // datetime.timedelta(microseconds=1)


def read_embeddings(
    dst: str | Store,
    *,
    model: str | None = None,
    token: Any = None,
    project: str | None = None,
    requester_pays: bool | str = False,
    endpoint: str | None = None,
) -> tuple[Any, np.ndarray]:
    """Read the embeddings under ``dst`` as a DataFrame and a float32 matrix.

    Args:
        dst: The destination folder given to :func:`gcsemb.embed` (a URL or a
            :class:`~gcsemb.storage.Store`).
        model: Keep rows of this model tag only; required when ``dst`` holds several.
        token: Credentials for ``gs://`` (see :mod:`gcsemb.auth`).
        project: Google Cloud project (requester-pays billing).
        requester_pays: Bill reads to ``project``.
        endpoint: Another GCS endpoint (see :func:`gcsemb.storage.open_store`).

    Returns:
        ``(df, matrix)``: one row per image (the latest if an image was re-embedded after a
        change), and its embeddings as an ``(n, dim)`` float32 array in the same order.
        ``df.attrs["store"]`` is the dataset's handle: thumbnails and searches reuse its access.

    Example:
        >>> df, X = read_embeddings("gs://my-bucket/embeddings")  # doctest: +SKIP
        >>> X @ X[0]  # cosine similarity to the first image  # doctest: +SKIP
    """
    store = open_store(
        dst, token=token, project=project, requester_pays=requester_pays, endpoint=endpoint
    )
    table = _read(store, _parquet_files(store), None)
    if table is None:
        raise FileNotFoundError(f"No embeddings under {dst}: run `gcsemb embed SRC {dst}` first.")
    models = sorted(set(table.column("model").to_pylist()))
    if model is None and len(models) > 1:
        raise ValueError(f"{dst} holds several models {models}: pass model=... to pick one.")
    if model is not None:
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table.column("model"), model))
    df = table.to_pandas()
    # an image changed since an earlier run has two rows: keep its newest version
    df = df.sort_values("updated", kind="stable").drop_duplicates("uri", keep="last")
    df = df.sort_index().reset_index(drop=True)
    df.attrs["store"] = store
    matrix = (
        np.asarray(np.stack(df["embedding"].to_numpy()), dtype=np.float32)
        if len(df)
        else np.zeros((0, 0), np.float32)
    )
    return df, matrix


def read_errors(
    dst: str | Store,
    *,
    token: Any = None,
    project: str | None = None,
    requester_pays: bool | str = False,
    endpoint: str | None = None,
) -> Any:
    """The images that failed, as a DataFrame (uri, md5, stage, error, model, failed_at).

    Arguments as for :func:`read_embeddings`.
    """
    import pandas as pd

    store = open_store(
        dst, token=token, project=project, requester_pays=requester_pays, endpoint=endpoint
    )
    table = _read(store, _parquet_files(store, errors=True), None)
    if table is None:
        return pd.DataFrame(columns=ERROR_SCHEMA.names)
    return table.to_pandas().drop_duplicates("uri", keep="last").reset_index(drop=True)
