"""The embeddings dataset under DST: its schema, reading it back, and what a re-run may skip.

Layout (any fsspec URL: ``gs://``, a local folder, ...)::

    DST/part-<run>-00000.parquet   one row per image: uri, md5, size, generation, updated,
                                   width, height, model, embedding (float32, L2-normalised)
    DST/_errors/part-<run>-00000.parquet   one row per failed image: uri, md5, stage, error, ...

``pandas.read_parquet(DST)`` and ``pyarrow.dataset.dataset(DST)`` read the embeddings (pyarrow
skips names starting with ``_`` or ``.``). Every shard appears whole or not at all
(:mod:`gcsemb.embedding.writer`), so a run killed at any moment leaves only complete shards, and
:func:`done_index` tells the next run what to skip. Each shard's parquet metadata says how it was
made: the model tag and dimension, the source it came from, the checkpoint's location and sha256
(never a signed URL's query), and the run's settings. A damaged or foreign parquet file in DST is
skipped with a warning naming it, never the end of every later run.

Example:
    >>> from gcsemb.explore.dataset import read_embeddings
    >>> df, matrix = read_embeddings("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> matrix.shape  # doctest: +SKIP
    (306, 512)
    >>> df.attrs["dataset"]["source"]  # doctest: +SKIP
    'gs://my-bucket/photos'
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gcsemb.storage import ObjectInfo, Store, http_status, open_store

log = logging.getLogger(__name__)

ERRORS_DIR = "_errors"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
META_MODEL = b"gcsemb.model"
META_DIM = b"gcsemb.dim"
META_PREFIX = "gcsemb."
_ROW_COLUMNS = {"uri", "md5", "size", "updated", "model", "embedding"}


def schema(model: str, dim: int, metadata: dict[str, str] | None = None) -> pa.Schema:
    """The embeddings schema; the model, its dimension and ``metadata`` in the parquet metadata.

    Args:
        model: The model tag of every row.
        dim: Embedding dimension.
        metadata: More keys, stored as ``gcsemb.<key>`` (e.g. ``source``, ``checkpoint``).
    """
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
    meta = {META_MODEL: model.encode(), META_DIM: str(dim).encode()}
    meta.update({f"{META_PREFIX}{k}".encode(): v.encode() for k, v in (metadata or {}).items()})
    return pa.schema(fields, metadata=meta)


ERROR_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("md5", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("error", pa.string()),
        pa.field("model", pa.string()),
        pa.field("failed_at", pa.timestamp("us", tz="UTC")),
        pa.field("environmental", pa.bool_()),  # the cause was this machine, not the bytes
        pa.field("decoders", pa.string()),  # JSON: the decoder versions that failed on it
    ]
)


def parquet_files(store: Store, errors: bool = False) -> list[str]:
    """The shard paths under ``store`` (or its ``_errors/``), in name (= run start) order."""
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


def _read(
    store: Store, files: Sequence[str], columns: list[str] | None, required: set[str]
) -> list[pa.Table]:
    """Read some columns of many shards, several at once; damaged or foreign files are skipped.

    Each file is read whole or skipped with a warning that names it: one corrupt upload, or a
    parquet file of another tool, must not fail every later run.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(path: str) -> pa.Table | None:
        return _read_one(store, path, columns, required)

    with ThreadPoolExecutor(8) as pool:
        return [t for t in pool.map(one, files) if t is not None]


def _read_one(
    store: Store,
    path: str,
    columns: list[str] | None,
    required: set[str],
    without: tuple[str, ...] = (),
) -> pa.Table | None:
    """Some columns of one shard, or None (with a warning naming it) for a damaged or foreign file.

    The footer is checked before any column is read: a file whose rows would expand past what a
    gcsemb shard of its row count can hold (a "zip bomb": a few hundred KiB of zstd that
    decompress to gigabytes) is skipped like any other foreign file. ``without`` names columns
    not to read (all others are, when ``columns`` is None).
    """
    try:
        # (ParquetFile, not read_table: that imports pyarrow.dataset and pandas, 0.3 s a run)
        with store.open_input(path) as f:
            parquet = pq.ParquetFile(f)
            missing = required - set(parquet.schema_arrow.names)
            if missing:
                log.warning(
                    "skipping %s: not a gcsemb shard (no %s)",
                    store.uri(path),
                    sorted(missing),
                )
                return None
            too_big = _expansion(parquet, f.size() if callable(f.size) else f.size)
            if too_big:
                log.warning("skipping %s: not a gcsemb shard (%s)", store.uri(path), too_big)
                return None
            if without:
                columns = [n for n in parquet.schema_arrow.names if n not in without]
            return parquet.read(columns=columns)
    except (pa.ArrowException, OSError) as e:
        # pyarrow's complaints about the bytes are ArrowInvalid or a plain OSError ("Corrupt
        # snappy compressed data"); storage errors keep their own types and end the read
        damaged = isinstance(e, pa.ArrowException) or (
            type(e) is OSError and http_status(e) is None
        )
        if not damaged:
            raise
        log.warning("skipping %s: unreadable parquet (%s)", store.uri(path), str(e)[:200])
        return None


MAX_ROW_BYTES = 16 << 10
"""Bytes a gcsemb row may take beyond its embedding (uri, md5, model tag, the fixed columns)."""
MAX_RATIO = 32
"""How many times its file size a shard of more than :data:`MAX_SLACK` may expand to: real
embeddings hardly compress (about 1.1x), so a larger ratio means a file crafted to expand."""
MAX_SLACK = 64 << 20


def _expansion(parquet: pq.ParquetFile, file_size: int | None) -> str | None:
    """Why the footer of ``parquet`` promises more than a gcsemb shard could hold, or None.

    A gcsemb row holds its embedding (4 bytes a dimension, from the ``gcsemb.dim`` metadata) and
    at most :data:`MAX_ROW_BYTES` more; beyond :data:`MAX_SLACK`, a file may also not expand to
    more than :data:`MAX_RATIO` times its own size.
    """
    meta = parquet.metadata
    raw = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    try:
        dim = int((parquet.schema_arrow.metadata or {}).get(META_DIM, b"4096"))
    except ValueError:
        dim = 4096
    dim = min(max(dim, 1), 1 << 16)
    limit = meta.num_rows * (4 * dim + MAX_ROW_BYTES) + MAX_SLACK
    if file_size and raw > MAX_SLACK:
        limit = min(limit, max(MAX_SLACK, MAX_RATIO * file_size))
    if raw <= limit:
        return None
    return f"its {meta.num_rows} rows would take {raw / 2**20:.1f} MiB in memory"


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    return pa.concat_tables(tables, promote_options="default") if tables else None


def done_index(dst: Store, model: str) -> dict[str, tuple[str | None, int, Any]]:
    """``uri -> (md5, size, updated)`` of the rows already in ``dst`` for ``model``.

    Reads only those small columns (never the embeddings), so deciding what to skip costs one
    listing of ``dst`` and a few column chunks. ``updated`` is in microseconds since the epoch
    (turning timestamps into datetimes would import pandas: a third of a no-op run).
    """
    columns = ["uri", "md5", "size", "updated", "model"]
    table = _concat(_read(dst, parquet_files(dst), columns, _ROW_COLUMNS))
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
    """``uri -> md5`` of images whose bytes cannot be decoded: the same bytes fail again.

    Only failures caused by the bytes count, and only as long as this machine decodes with the
    same decoder versions that failed on them. A failure caused by the environment (a decoder
    missing, out of memory, a fetch error) is tried again by the next run, as is every failure
    after an upgrade of Pillow or its codecs.
    """
    from gcsemb.images.decode import decoder_versions

    now = json.dumps(decoder_versions(), sort_keys=True)
    columns = ["uri", "md5", "stage", "model", "environmental", "decoders"]
    files = parquet_files(dst, errors=True)
    table = _concat(_read(dst, files, None, {"uri", "md5", "stage", "model"}))
    if table is None:
        return {}
    rows = table.select([c for c in columns if c in table.column_names]).to_pylist()
    return {
        r["uri"]: r["md5"]
        for r in rows
        if r["model"] == model
        and r["md5"]
        and r["stage"] in ("decode", "preprocess")
        and not r.get("environmental")
        and r.get("decoders") == now
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


def dataset_info(table: pa.Table) -> dict[str, Any]:
    """The ``gcsemb.*`` parquet metadata of a shard as a dict (``config`` parsed from JSON).

    Another tool (or person) may have written any bytes there: what is not UTF-8 is decoded
    with replacement characters.
    """
    meta = table.schema.metadata or {}
    text = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in meta.items()}
    info: dict[str, Any] = {
        k[len(META_PREFIX) :]: v for k, v in text.items() if k.startswith(META_PREFIX)
    }
    if "config" in info:
        try:
            info["config"] = json.loads(info["config"])
        except ValueError:
            info.pop("config")
    return info


def embedding_matrix(df: Any) -> np.ndarray:
    """The ``embedding`` column of ``df`` stacked into an ``(n, dim)`` float32 array.

    An empty ``df`` gives a ``(0, 0)`` array.

    Example:
        >>> import pandas as pd
        >>> embedding_matrix(pd.DataFrame({"embedding": [[1.0, 0.0], [0.0, 1.0]]})).shape
        (2, 2)
    """
    if not len(df):
        return np.zeros((0, 0), np.float32)
    return np.asarray(np.stack(df["embedding"].to_numpy()), dtype=np.float32)


def read_embeddings(
    dst: str | Store,
    *,
    model_tag: str | None = None,
    with_embeddings: bool = False,
    dtype: Any = np.float32,
    progress: bool = False,
    token: Any = None,
) -> tuple[Any, np.ndarray]:
    """Read the embeddings under ``dst`` as a DataFrame and a matrix.

    Lean: the rows to keep are decided from the small columns first, then each shard's
    embeddings are copied from the Arrow buffers straight into one preallocated matrix, so the
    peak memory is about the matrix plus the DataFrame. :func:`iter_embeddings` streams the same
    rows shard by shard.

    Args:
        dst: The destination folder given to :func:`gcsemb.embed` (a URL or a
            :class:`~gcsemb.storage.Store`).
        model_tag: Keep the rows of this model tag only (the ``model`` column, e.g.
            ``"ViT-B-32/laion2b_s34b_b79k"``); required when ``dst`` holds several.
        with_embeddings: Also put each row's embedding in an ``embedding`` column (views of the
            matrix's rows, no copy).
        dtype: The matrix's dtype: ``np.float32`` (default) or ``np.float16`` (half the memory;
            scores differ by about 1e-3).
        progress: Show a progress bar over the shards.
        token: Credentials for ``gs://`` (see :mod:`gcsemb.storage.auth`).

    Returns:
        ``(df, matrix)``: one row per image (the latest if an image was re-embedded after a
        change), and its embeddings as an ``(n, dim)`` array in the same order. ``df`` has no
        ``embedding`` column unless ``with_embeddings``. ``df.attrs["store"]`` is the dataset's
        handle (thumbnails and searches reuse its access); ``df.attrs["dataset"]`` how the
        newest shard was made (``source``, ``model``, ``checkpoint``, ``checkpoint_sha256``,
        ``config``...).

    Example:
        >>> df, X = read_embeddings("gs://my-bucket/embeddings")  # doctest: +SKIP
        >>> X @ X[0]  # cosine similarity to the first image  # doctest: +SKIP
    """
    from gcsemb.explore.shards import fill, plan

    store = open_store(dst, token=token)
    read, matrix = fill(plan(store, model_tag, read_ahead=True), np.dtype(dtype), progress)
    df = read.df
    if with_embeddings:
        df["embedding"] = list(matrix) if len(matrix) else []
    return df, matrix


def iter_embeddings(
    dst: str | Store,
    *,
    model_tag: str | None = None,
    dtype: Any = np.float32,
    token: Any = None,
) -> Iterator[tuple[Any, np.ndarray]]:
    """Yield ``(rows, matrix)`` per shard: the rows of :func:`read_embeddings`, streamed.

    The small columns of every shard are read first (to keep the newest version of each uri);
    then one shard's embeddings at a time, so the whole matrix is never in memory. ``rows``
    keeps the row numbers :func:`read_embeddings` gives those rows (its index). Arguments as
    for :func:`read_embeddings` (a :class:`~gcsemb.storage.Store` carries another endpoint).

    Example:
        >>> for rows, X in iter_embeddings("gs://my-bucket/embeddings"):  # doctest: +SKIP
        ...     print(rows.index[0], X.shape)
        0 (5000, 512)
    """
    from gcsemb.explore.shards import iter_shards, plan

    store = open_store(dst, token=token)
    yield from iter_shards(plan(store, model_tag), np.dtype(dtype))


def read_errors(
    dst: str | Store,
    *,
    token: Any = None,
) -> Any:
    """The images that failed and still have no row, as a DataFrame, newest failure per image.

    Columns: uri, md5, stage, error, model, failed_at, environmental (the next run tries it
    again), decoders. An image that failed once and was embedded later is not listed. Arguments
    as for :func:`read_embeddings`.
    """
    import pandas as pd

    store = open_store(dst, token=token)
    required = {"uri", "md5", "stage", "error", "model"}
    errors = _concat(_read(store, parquet_files(store, errors=True), None, required))
    if errors is None:
        return pd.DataFrame(columns=ERROR_SCHEMA.names)
    rows = _concat(_read(store, parquet_files(store), ["uri", "model"], _ROW_COLUMNS))
    df = errors.to_pandas()
    for column in ERROR_SCHEMA.names:
        if column not in df:
            df[column] = None
    df = df[ERROR_SCHEMA.names].sort_values("failed_at", kind="stable")
    df = df.drop_duplicates(["uri", "model"], keep="last")
    if rows is not None:
        pairs = zip(rows.column("uri").to_pylist(), rows.column("model").to_pylist(), strict=True)
        embedded = set(pairs)
        df = df[[(u, m) not in embedded for u, m in zip(df["uri"], df["model"], strict=True)]]
    return df.reset_index(drop=True)
