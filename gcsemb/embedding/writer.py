"""Writing shards so that no computed row is lost: atomic files, long retries, a local spill.

A shard appears whole or not at all (:func:`write_parquet`). When DST stops taking writes, the
:class:`ShardWriter` retries with backoff for minutes, far beyond gcsfs's own half-minute of
retries. Before each shard it looks at DST's lease (:meth:`gcsemb.embedding.lease.Lease.confirm`):
no shard is written once another run took DST over or the claim was deleted. If DST stays
unwritable (or refuses outright: a permission revoked mid-run), if the lease is lost, or if the
run is interrupted (Ctrl-C) while a shard is being written, the rows go to a local *spill*
folder under the cache instead, and the run stops with one message saying how many rows are
kept and where. The next run to the same DST (same URL at the same endpoint) uploads them first
(:func:`upload_spill`), before it embeds anything, so a row is lost only if someone deletes it.
A spilled file that cannot be read is moved aside with a warning; its images are embedded again.

Example:
    >>> writer = ShardWriter(dst, "ViT-B-32/laion2b_s34b_b79k", 512, run=run.id)  # doctest: +SKIP
    >>> writer.add(obj, obj.md5, 640, 480, vector)  # doctest: +SKIP
    >>> writer.flush()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gcsemb.embedding.config import WRITE_RETRY_SECONDS
from gcsemb.embedding.lease import LeaseLost
from gcsemb.errors import AccessDenied, AuthError, GcsembError, NotFound
from gcsemb.explore.dataset import ERROR_SCHEMA, ERRORS_DIR, schema
from gcsemb.storage import ObjectInfo, Store, explain
from gcsemb.storage.cache import cache_dir
from gcsemb.storage.files import atomic_path

if TYPE_CHECKING:
    from gcsemb.embedding.lease import Lease

log = logging.getLogger(__name__)


class DestinationUnwritable(GcsembError):
    """DST refused writes for longer than the retry window; the rows are kept locally."""


def write_parquet(store: Store, path: str, table: pa.Table) -> None:
    """Write a parquet file so that it appears whole or not at all (:meth:`Store.write`)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    store.write(path, buf.getvalue())


def spill_dir(dst: Store) -> Path:
    """The local folder where rows that ``dst`` would not take wait for the next run.

    One per destination URL and endpoint: ``gs://b/emb`` on an emulator is not ``gs://b/emb``
    on Google.
    """
    where = dst.uri(dst.path.rstrip("/"))
    if dst.endpoint:
        where += f" at {dst.endpoint}"
    key = hashlib.sha1(where.encode()).hexdigest()[:16]
    return cache_dir() / "spill" / key


@dataclass
class ShardWriter:
    """Collects rows and writes them as parquet shards under ``store``.

    Args:
        store: The destination folder.
        model: The model tag stored in every row and in the metadata.
        dim: Embedding dimension.
        rows_per_shard: Flush after this many rows.
        seconds_per_shard: Flush at least this often, so an interrupted run loses little.
        metadata: More parquet metadata for every shard (the source, the weights, the config).
        retry_seconds: How long a failing write is retried before its rows are spilled.
        lease: DST's lease, looked at before each shard; once it is lost, rows are spilled.
        run: The shards' name prefix (``part-<run>-00000.parquet``): the run's id
            (:attr:`gcsemb.embedding.run.Run.id`, the same that names its lease claim).
    """

    store: Store
    model: str
    dim: int
    rows_per_shard: int = 5000
    seconds_per_shard: float = 60.0
    metadata: dict[str, str] = field(default_factory=dict)
    retry_seconds: float = WRITE_RETRY_SECONDS
    lease: Lease | None = None
    run: str = field(kw_only=True)
    shards: int = 0
    error_shards: int = 0
    written_rows: int = 0
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

    def add_error(
        self,
        obj: ObjectInfo,
        md5: str | None,
        stage: str,
        error: str,
        *,
        environmental: bool = False,
        decoders: str | None = None,
    ) -> None:
        """Record one image that failed, with the stage and the reason.

        Args:
            obj: The image.
            md5: Its bytes' md5, when known.
            stage: ``fetch``, ``decode``, ``preprocess``...
            error: The reason, in words.
            environmental: The cause lies in this machine (a decoder missing, out of memory, a
                transient fetch error), not in the bytes: the next run tries again.
            decoders: The decoder versions that failed on it (JSON), for ``decode`` failures.
        """
        self._errors.append(
            {
                "uri": obj.uri,
                "md5": md5,
                "stage": stage,
                "error": error,
                "model": self.model,
                "failed_at": _now(),
                "environmental": environmental,
                "decoders": decoders,
            }
        )
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        due = time.monotonic() - self._last_flush > self.seconds_per_shard
        if len(self._rows) >= self.rows_per_shard or (due and (self._rows or self._errors)):
            self.flush()

    def flush(self) -> None:
        """Write what is pending as new shards (one for rows, one for errors).

        Raises:
            DestinationUnwritable: DST took no write for ``retry_seconds`` (or refused it); the
                pending rows are in the local spill folder and the message says where.
            LeaseLost: Another run took DST over; the pending rows are in the spill folder.
            KeyboardInterrupt: Ctrl-C while writing: the pending rows are in the spill folder
                (a warning says where), then the interrupt goes on.
        """
        pending: list[tuple[str, pa.Table]] = []
        if self._rows:
            sch = schema(self.model, self.dim, self.metadata)
            pending.append((f"part-{self.run}-{self.shards:05d}.parquet", _table(self._rows, sch)))
            self.shards += 1
        if self._errors:
            name = f"{ERRORS_DIR}/part-{self.run}-{self.error_shards:05d}.parquet"
            pending.append((name, pa.Table.from_pylist(self._errors, schema=ERROR_SCHEMA)))
            self.error_shards += 1
        self._rows, self._errors = [], []
        for i, (name, table) in enumerate(pending):
            try:
                self._write(name, table)
            except BaseException as e:  # Ctrl-C too: every row is kept, then the error goes on
                kept = self._spill(pending[i:])
                if isinstance(e, LeaseLost):
                    raise LeaseLost(f"{e} {kept}", e.holder) from e
                if isinstance(e, GcsembError):
                    raise DestinationUnwritable(
                        f"Could not write to {self.store.url} ({e}). {kept}"
                    ) from e
                log.warning("Stopped (%r) while writing to %s. %s", e, self.store.url, kept)
                raise
            if not name.startswith(ERRORS_DIR):
                self.written_rows += table.num_rows
        self._last_flush = time.monotonic()

    def _write(self, name: str, table: pa.Table) -> None:
        """Write one shard, retrying with backoff for ``retry_seconds``, while the lease holds.

        Raises:
            LeaseLost: Another run took DST over (looked at before the first try, and between
                tries through the heartbeat's verdict).
            GcsembError: DST refused the write, or failed for ``retry_seconds``.
        """
        path = f"{self.store.path.rstrip('/')}/{name}"
        deadline, delay = time.monotonic() + self.retry_seconds, 2.0
        if self.lease is not None:
            self.lease.confirm()
        while True:
            if self.lease is not None:
                self.lease.check()
            try:
                write_parquet(self.store, path, table)
                return
            except Exception as e:
                error = explain(e, self.store.url, self.store, "write")
                refused = isinstance(error, AccessDenied | AuthError | NotFound)
                if refused or time.monotonic() + delay > deadline:
                    raise error from e
                log.warning("could not write %s (%s); trying again in %.0f s", name, error, delay)
                time.sleep(delay)
                delay = min(delay * 2, 60.0)

    def _spill(self, pending: list[tuple[str, pa.Table]]) -> str:
        """Keep ``pending`` shards in the spill folder; say so in a sentence."""
        folder = spill_dir(self.store)
        for name, table in pending:
            write_parquet_local(folder / name, table)
        (folder / "destination.txt").write_text(self.store.url)
        rows = sum(t.num_rows for n, t in pending if not n.startswith(ERRORS_DIR))
        return (
            f"{rows} embedded rows of this run are kept in {folder}; the next `gcsemb embed` to "
            f"{self.store.url} uploads them first, before embedding anything "
            f"({self.written_rows} rows were written before this)."
        )


def write_parquet_local(path: Path, table: pa.Table) -> None:
    """Write a parquet file on this machine atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def upload_spill(dst: Store) -> int:
    """Upload the rows an earlier run kept locally for ``dst``; return how many rows.

    Each file is uploaded under its own name (so a crash mid-upload duplicates nothing) and
    deleted locally only once DST holds it.

    Raises:
        DestinationUnwritable: DST still refuses writes; the files stay where they are.
    """
    folder = spill_dir(dst)
    files = sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith("."))
    rows = 0
    for local in files:
        name = local.relative_to(folder).as_posix()
        table = _read_spilled(local)
        if table is None:
            continue
        try:
            write_parquet(dst, f"{dst.path.rstrip('/')}/{name}", table)
        except Exception as e:
            raise DestinationUnwritable(
                f"{len(files)} files of rows kept by an earlier run wait in {folder}, but "
                f"{dst.url} still refuses them: {explain(e, dst.url, dst, 'write')}"
            ) from e
        local.unlink()
        rows += 0 if name.startswith(ERRORS_DIR) else table.num_rows
    if files:
        log.info("uploaded %d rows kept by an earlier run from %s", rows, folder)
    return rows


def _read_spilled(local: Path) -> pa.Table | None:
    """A spilled file's rows; None, with a warning naming it, when it cannot be read.

    A damaged file is moved aside (``NAME.damaged``), so it never stops a run again. Its rows
    never reached DST, so this run embeds those images again.
    """
    try:
        return pq.read_table(local)
    except Exception as e:
        aside = local.with_name(f"{local.name}.damaged")
        os.replace(local, aside)
        log.warning(
            "Could not read %s, rows an earlier run kept locally (%s: %s). Moved it aside to %s; "
            "its images are embedded again, as they are not in DST.",
            local,
            type(e).__name__,
            str(e)[:200],
            aside,
        )
        return None


def _table(rows: list[dict[str, Any]], sch: pa.Schema) -> pa.Table:
    """Build a shard's table; embeddings go in as one flat float32 buffer, not Python lists."""
    emb = np.stack([r["embedding"] for r in rows]).astype(np.float32, copy=False)
    dim = emb.shape[1]
    offsets = pa.array(np.arange(0, emb.size + 1, dim, dtype=np.int32))
    arrays = [
        pa.array([r[f.name] for r in rows], type=f.type) for f in sch if f.name != "embedding"
    ]
    arrays.append(pa.ListArray.from_arrays(offsets, pa.array(emb.reshape(-1))))
    return pa.Table.from_arrays(arrays, schema=sch)


def _now() -> Any:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc)
