"""Reading the embeddings of a dataset lean: which rows to keep first, then one matrix.

:func:`plan` reads the small columns of every shard (never the embeddings) and decides which rows
:func:`gcsemb.read_embeddings` returns: those of one model tag, the newest version of each uri.
:func:`fill` then reads each shard's ``embedding`` column and copies its kept rows straight from
the Arrow buffer into one preallocated ``(n, dim)`` array (float32 or float16): no Python object
per row, no second copy of the embeddings in the DataFrame. :func:`iter_shards` yields the same
rows shard by shard, so an index can be built without the whole matrix in memory.

Example:
    >>> from gcsemb.explore.shards import plan, fill
    >>> p = plan(open_store("gs://my-bucket/embeddings"))  # doctest: +SKIP
    >>> matrix = fill(p, np.float16)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from gcsemb.explore.dataset import _ROW_COLUMNS, _read_one, dataset_info, parquet_files
from gcsemb.storage import Store

log = logging.getLogger(__name__)

_SHARD = "__gcsemb_shard"
T = TypeVar("T")


@dataclass
class ReadPlan:
    """The rows :func:`gcsemb.read_embeddings` returns, decided from the small columns.

    Attributes:
        store: The dataset.
        model_tag: The model tag of the rows.
        files: The shards read (damaged or foreign files left out), in name order.
        df: One row per image (no ``embedding`` column), in shard then row order.
        rows: Per shard, the row numbers within that shard of its rows in ``df`` (ascending).
        info: How the newest shard was made (:func:`gcsemb.explore.dataset.dataset_info`).
        reads: The shards' embeddings being read already (``plan(read_ahead=True)``), for
            :func:`fill`.
    """

    store: Store
    model_tag: str
    files: list[str]
    df: Any
    rows: list[np.ndarray] = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    reads: _Ahead | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (
            f"ReadPlan({self.store.url!r}, model_tag={self.model_tag!r}, "
            f"{len(self.df):,} rows in {len(self.files)} shards)"
        )


def plan(
    store: Store,
    model_tag: str | None = None,
    files: Sequence[str] | None = None,
    *,
    read_ahead: bool = False,
) -> ReadPlan:
    """Decide which rows to read: ``model_tag``'s, the newest version of each uri.

    Args:
        store: The dataset.
        model_tag: The model tag to keep; required when the shards hold several.
        files: Read only these shards (default: all of the dataset's).
        read_ahead: Start reading the first shards' embeddings while the rows are decided
            (from the small columns already read), for a :func:`fill` that follows (a few
            shards ahead, no more).

    Raises:
        FileNotFoundError: No embeddings under ``store``.
        ValueError: Several model tags and none chosen.
    """
    files = parquet_files(store) if files is None else list(files)

    def small(path: str) -> pa.Table | None:
        return _read_one(store, path, None, _ROW_COLUMNS, without=("embedding",))

    with ThreadPoolExecutor(8) as pool:
        read = [(p, t) for p, t in zip(files, pool.map(small, files), strict=True) if t is not None]
    if not read:
        raise FileNotFoundError(
            f"No embeddings under {store.url}: run `gcsemb embed SRC {store.url}` first."
        )
    models = sorted({m for _, t in read for m in t.column("model").unique().to_pylist()})
    if model_tag is None and len(models) > 1:
        raise ValueError(
            f"{store.url} holds several models {models}: pass model_tag=... to pick one."
        )
    if not read_ahead:
        return _select(store, model_tag or models[0], read, None)
    decided: list[ReadPlan] = []
    wanted = lambda i: not decided or len(decided[0].rows[i]) > 0  # noqa: E731
    reads = _reads(store, [p for p, _ in read], wanted, 8)
    try:
        decided.append(_select(store, model_tag or models[0], read, reads))
    except BaseException:
        reads.close()
        raise
    return decided[0]


def _select(
    store: Store, model_tag: str, read: list[tuple[str, pa.Table]], reads: _Ahead | None
) -> ReadPlan:
    """The plan from each shard's small columns: filter by model, keep the newest per uri."""
    import pyarrow.compute as pc

    from gcsemb.explore.dataset import _concat

    tables = []
    for number, (_, table) in enumerate(read):
        mask = pc.equal(table.column("model"), model_tag)
        marked = table.append_column(_SHARD, pa.array(np.full(table.num_rows, number, np.int32)))
        marked = marked.append_column("__gcsemb_row", pa.array(np.arange(table.num_rows)))
        tables.append(marked.filter(mask))
    info = next((dataset_info(t) for t in reversed(tables) if t.num_rows), {})
    table = _concat(tables)
    # one chunk per column: picking a few rows of a column of 200 chunks costs ~5 ms (over
    # 2 GB of strings in a column cannot be one chunk: left as it is)
    with contextlib.suppress(pa.ArrowInvalid):
        table = table.combine_chunks()
    if pc.count_distinct(table.column("uri")).as_py() < table.num_rows:
        table = table.take(_newest(table))
    df = table.to_pandas()
    shard = df.pop(_SHARD).to_numpy()
    row = df.pop("__gcsemb_row").to_numpy()
    bounds = np.searchsorted(shard, np.arange(len(read) + 1))
    rows = [row[bounds[i] : bounds[i + 1]] for i in range(len(read))]
    df.attrs["store"] = store
    df.attrs["dataset"] = info
    return ReadPlan(store, model_tag, [p for p, _ in read], df, rows, info, reads)


def _newest(table: pa.Table) -> np.ndarray:
    """The row numbers that keep each uri's newest version, in table order.

    An image changed since an earlier run has two rows; the newest ``updated`` wins (no date
    counts as newest, and of equal dates the later row), as pandas' stable
    ``sort_values("updated").drop_duplicates("uri", keep="last")`` would choose, without its
    hashing of every uri (~50 ms at 100k rows; this runs only when some uri repeats).

    Example:
        >>> t = pa.table({"uri": ["a", "b", "a"], "updated": [2, 1, 1]})
        >>> _newest(t).tolist()
        [0, 1]
    """
    import pyarrow.compute as pc

    order = pc.sort_indices(table, [("uri", "ascending"), ("updated", "ascending")]).to_numpy()
    uris = table.column("uri").take(order)
    # the last row of each run of one uri (sorted by date within it)
    last = np.append(pc.not_equal(uris[1:], uris[:-1]).to_numpy(zero_copy_only=False), True)
    return np.sort(order[last])


def fill(
    plan: ReadPlan, dtype: Any = np.float32, progress: bool = False
) -> tuple[ReadPlan, np.ndarray]:
    """The plan's embeddings as one ``(n, dim)`` array of ``dtype``, in the plan's row order.

    A shard whose embeddings turn out unreadable (or of another dimension) is dropped from the
    plan with a warning, so the returned plan's rows always match the matrix.
    """
    offsets = np.cumsum([0, *(len(r) for r in plan.rows)])
    out: np.ndarray | None = None
    bad: list[int] = []
    reads = plan.reads or _reads(plan.store, plan.files, lambda i: len(plan.rows[i]) > 0, 8)
    plan.reads = None  # read once
    with reads:
        for i, flat in _progress(enumerate(reads), len(reads), progress):
            if offsets[i] == offsets[i + 1]:  # none of its rows kept (another model's shard)
                continue
            part = _kept(plan, i, flat)
            if part is not None and out is None:
                out = np.empty((offsets[-1], part.shape[1]), dtype)
            if part is None or part.shape[1] != out.shape[1]:
                bad.append(i)
                continue
            out[offsets[i] : offsets[i + 1]] = part
    if out is None:
        out = np.zeros((0, 0), dtype)
    if bad:
        plan, out = _drop(plan, out, bad, offsets)
    return plan, out


def iter_shards(plan: ReadPlan, dtype: Any = np.float32) -> Iterator[tuple[Any, np.ndarray]]:
    """Yield ``(rows, matrix)`` per shard of the plan: its rows of ``plan.df`` and embeddings.

    ``rows`` keeps the index of ``plan.df`` (the row numbers :func:`gcsemb.read_embeddings`
    gives them); a shard with unreadable embeddings is skipped with a warning.
    """
    offsets = np.cumsum([0, *(len(r) for r in plan.rows)])
    # the next shard is read while this one is used, and no further: a slow consumer (an index
    # build) must not find the whole dataset read ahead into memory
    with _reads(plan.store, plan.files, lambda i: len(plan.rows[i]) > 0, 1) as reads:
        for i, flat in enumerate(reads):
            part = _kept(plan, i, flat)
            if part is not None and len(part):
                yield plan.df.iloc[offsets[i] : offsets[i + 1]], part.astype(dtype, copy=False)


class _Ahead(Iterator[T]):
    """``fn(0), ..., fn(n - 1)`` in order, computed in threads at most ``ahead`` in advance.

    The first calls start at once (while the caller does other work); unlike
    ``ThreadPoolExecutor.map`` (which starts every call at once), the results waiting for the
    consumer stay bounded: ``ahead + 1`` at most. Close it (or use it in ``with``) to cancel
    what has not started.
    """

    def __init__(self, fn: Callable[[int], T], n: int, ahead: int) -> None:
        self.fn, self.n, self.ahead, self.started = fn, n, max(ahead, 1), 0
        self.pool = ThreadPoolExecutor(self.ahead)
        self.pending: deque[Future[T]] = deque()
        self._submit()

    def _submit(self) -> None:
        while self.started < self.n and len(self.pending) <= self.ahead:
            self.pending.append(self.pool.submit(self.fn, self.started))
            self.started += 1

    def __next__(self) -> T:
        self._submit()
        if not self.pending:
            self.close()
            raise StopIteration
        return self.pending.popleft().result()

    def __len__(self) -> int:
        return self.n

    def close(self) -> None:
        """Cancel the calls not started; those running finish in the background."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> _Ahead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _progress(items: Any, total: int, show: bool) -> Any:
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc="reading shards", unit="shard")


def _drop(
    plan: ReadPlan, out: np.ndarray, bad: list[int], offsets: np.ndarray
) -> tuple[ReadPlan, np.ndarray]:
    """The plan and matrix without the rows of the shards ``bad``."""
    keep = np.ones(len(out), bool)
    for i in bad:
        keep[offsets[i] : offsets[i + 1]] = False
    df = plan.df[keep].reset_index(drop=True)
    df.attrs = plan.df.attrs
    good = [i for i in range(len(plan.files)) if i not in set(bad)]
    new = ReadPlan(
        plan.store,
        plan.model_tag,
        [plan.files[i] for i in good],
        df,
        [plan.rows[i] for i in good],
        plan.info,
    )
    return new, out[keep]


def _reads(
    store: Store, files: list[str], wanted: Callable[[int], bool], ahead: int
) -> _Ahead[np.ndarray | None]:
    """Each shard's embeddings in order, read ``ahead`` shards ahead of their use.

    A shard not ``wanted`` (none of its rows kept: another model's) is not read.
    """
    return _Ahead(lambda i: _shard_flat(store, files[i]) if wanted(i) else None, len(files), ahead)


def _shard_flat(store: Store, path: str) -> np.ndarray | None:
    """All of a shard's embeddings, as float32, or None (with a warning) when unreadable."""
    table = _read_one(store, path, ["embedding"], {"embedding"})
    if table is None:
        return None
    try:
        return embedding_array(table.column("embedding"))
    except ValueError as e:
        log.warning("skipping %s: %s", store.uri(path), e)
        return None


def _kept(plan: ReadPlan, i: int, flat: np.ndarray | None) -> np.ndarray | None:
    """The rows of shard ``i``'s embeddings ``flat`` that the plan keeps, or None."""
    rows = plan.rows[i]
    if not len(rows):
        return np.zeros((0, 0), np.float32)
    if flat is None:
        return None
    if rows[-1] >= len(flat):
        log.warning("skipping %s: it changed while being read", plan.store.uri(plan.files[i]))
        return None
    return flat if len(rows) == len(flat) else flat[rows]


def embedding_array(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list-of-floats Arrow column as an ``(n, dim)`` float32 array, from its value buffers.

    Raises:
        ValueError: Null embeddings, or rows of different lengths.

    Example:
        >>> embedding_array(pa.array([[1.0, 0.0], [0.0, 1.0]], pa.list_(pa.float32()))).shape
        (2, 2)
    """
    import pyarrow.compute as pc

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        return np.zeros((0, 0), np.float32)
    if any(c.null_count for c in chunks):
        raise ValueError("some embeddings are null")
    lengths = pc.min_max(pc.list_value_length(column))
    dim = lengths["min"].as_py()
    if dim != lengths["max"].as_py() or not dim:
        raise ValueError(f"embeddings of different lengths ({dim} to {lengths['max']})")
    if len(chunks) == 1:
        values = chunks[0].flatten().to_numpy(zero_copy_only=False)
        return np.asarray(values, np.float32).reshape(-1, dim)
    out = np.empty((sum(len(c) for c in chunks), dim), np.float32)
    start = 0
    for c in chunks:
        out[start : start + len(c)] = c.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        start += len(c)
    return out
