"""What every run does before and after its stages, for both engines: one preamble.

:func:`prepare` opens the storage handles (credentials resolved once), refuses a destination
inside the source, names the weights (the model tag, without loading the model) and uploads rows
an earlier run could not write. :meth:`Run.read_index` reads what DST already holds. Once there
is work, :meth:`Run.begin_writing` checks that DST takes writes, takes DST's lease (one writer at
a time) and reads the index again (another run may have written meanwhile); :meth:`Run.finish`
gives the lease back.

Example:
    >>> run = prepare("gs://b/photos", "gs://b/emb", EmbedConfig())  # doctest: +SKIP
    >>> run.read_index()  # doctest: +SKIP
    >>> run.begin_writing()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from gcsemb.embedding.check import write_probe
from gcsemb.embedding.config import EmbedConfig
from gcsemb.embedding.report import EmbedSummary
from gcsemb.embedding.writer import spill_dir, upload_spill
from gcsemb.errors import BadURL
from gcsemb.explore.dataset import done_index, failed_index
from gcsemb.model.checkpoints import checkpoint_record, model_tag, public_url
from gcsemb.model.model_config import architecture_record
from gcsemb.storage import Store, explain, open_store

if TYPE_CHECKING:
    from gcsemb.embedding.lease import Lease

log = logging.getLogger(__name__)


def open_stores(
    src: str | Store,
    dst: str | Store,
    *,
    token: Any = None,
) -> tuple[Store, Store]:
    """The handles of a run: ``dst`` is reached with ``src``'s access (credentials resolved once).

    Raises:
        BadURL: ``dst`` lies inside ``src`` (its shards would be listed as images).
    """
    src_store = open_store(src, token=token)
    dst_store = open_store(dst, token=src_store)
    src_uri = src_store.uri(src_store.path).rstrip("/")
    dst_uri = dst_store.uri(dst_store.path).rstrip("/")
    inside = dst_uri == src_uri or dst_uri.startswith(src_uri + "/")
    if inside and not any(c in src_uri for c in "*["):
        raise BadURL(
            f"The destination {dst_store.url} is inside the source {src_store.url}: choose a "
            "folder outside it, e.g. a sibling like gs://bucket/embeddings."
        )
    return src_store, dst_store


def check_writable(dst: Store) -> None:
    """Write (and delete) a probe object in ``dst``, or stop the run with the fix.

    Raises:
        AccessDenied: The identity may not write there; the message names the role it needs.
    """
    try:
        note = write_probe(dst)
    except Exception as e:
        raise explain(e, dst.url, dst, "write") from e
    if note:
        log.warning("write check: %s", note)


def run_metadata(src: Store, cfg: EmbedConfig) -> dict[str, str]:
    """What every shard of a run records about how it was made (parquet metadata).

    The source URL (thumbnails and searches fetch only under it), the checkpoint's location and
    sha256 when the weights are a file (never a URL's password or signed query), the
    model-config JSON when the architecture is one
    (:func:`gcsemb.model.model_config.architecture_record`), the settings, the version.
    """
    import os

    from gcsemb import __version__

    source = src.url if "://" in src.url else os.path.abspath(src.url)  # readable from anywhere
    return {
        "source": source,
        **checkpoint_record(cfg.pretrained, token=src),
        **architecture_record(cfg.model),  # a config JSON: a search needs no --model
        "config": json.dumps(public_config(cfg), sort_keys=True),
        "version": __version__,
    }


def public_config(cfg: EmbedConfig) -> dict[str, Any]:
    """The settings as recorded: a checkpoint URL without its password or signature."""
    fields = asdict(cfg)
    if fields["pretrained"]:
        fields["pretrained"] = public_url(fields["pretrained"])
    return fields


def run_id() -> str:
    """A run's id: it names its lease claim and prefixes its shards (``part-<id>-00000``).

    It sorts by start time (to the microsecond) and never collides.

    Example:
        >>> len(run_id()), run_id() < run_id()
        (26, True)
    """
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}-{int(now * 1e6) % 1_000_000:06d}{uuid.uuid4().hex[:4]}"


@dataclass
class Run:
    """One run's handles, settings and knowledge of DST, shared by both engines.

    Attributes:
        src: The source handle.
        dst: The destination handle (``src``'s access).
        config: The settings.
        summary: What the run did so far (its counts, stages and timing).
        id: The run id: its shards' name prefix and its lease's holder.
        done: ``uri -> what DST holds`` (rows, and failures not to try again).
        lease: DST's lease, while this run writes.
        started: ``time.perf_counter()`` at the start.
    """

    src: Store
    dst: Store
    config: EmbedConfig
    summary: EmbedSummary
    id: str = field(default_factory=run_id)
    done: dict[str, Any] = field(default_factory=dict)
    lease: Lease | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def tag(self) -> str:
        """The model tag every row of this run carries."""
        return self.summary.model

    def read_index(self) -> dict[str, Any]:
        """What DST already holds for this model (and failures not to try again), into ``done``.

        Raises:
            GcsembError: DST cannot be read (the message names the role it needs).
        """
        try:
            with ThreadPoolExecutor(2) as pool:
                failed = (
                    None
                    if self.config.retry_failed
                    else pool.submit(failed_index, self.dst, self.tag)
                )
                fresh = done_index(self.dst, self.tag)
                if failed is not None:
                    fresh.update(failed.result())
        except Exception as e:
            raise explain(e, self.dst.url, self.dst, "index") from e
        self.done.clear()
        self.done.update(fresh)  # in place: a plan iterating over it sees the new index
        return self.done

    def begin_writing(self) -> None:
        """Before the first write: check DST takes writes, take its lease, re-read its index.

        Raises:
            AccessDenied: DST refuses writes.
            DestinationBusy: Another run holds DST's lease (see :mod:`gcsemb.embedding.lease`).
        """
        from gcsemb.embedding.lease import Lease

        check_writable(self.dst)
        if self.lease is None:  # rides through an outage as long as a shard write does
            self.lease = Lease(self.dst, self.id, retry_seconds=self.config.write_retry_seconds)
            self.lease.acquire(wait=self.config.wait_for_lease)
        self.read_index()  # a run that finished meanwhile wrote rows this one must skip

    def finish(self) -> EmbedSummary:
        """Give DST's lease back and close the summary's clock."""
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        self.summary.seconds = time.perf_counter() - self.started
        return self.summary


def prepare(
    src: str | Store,
    dst: str | Store,
    config: EmbedConfig,
    *,
    token: Any = None,
) -> Run:
    """Open the handles, name the weights, upload rows an earlier run could not write.

    Raises:
        BadURL: DST lies inside SRC.
        AuthError: No usable credentials.
        ModelLoadError: An unknown architecture or unreadable checkpoint (before any work).
        DestinationUnwritable: Rows kept by an earlier run still cannot be uploaded (DST's
            lease is given back: the next run is not kept waiting by this one).
    """
    src_store, dst_store = open_stores(src, dst, token=token)
    summary = EmbedSummary(src_store.url, dst_store.url)
    summary.model = model_tag(config.model, config.pretrained, token=src_store)
    run = Run(src_store, dst_store, config, summary)
    if any(spill_dir(dst_store).rglob("*.parquet")):
        try:
            run.begin_writing()  # rows waiting from an earlier run go first, under the lease
            uploaded = upload_spill(dst_store)
        except BaseException:
            run.finish()  # the caller gets no Run to finish: give the lease back here
            raise
        log.warning("uploaded %d rows an earlier run kept locally for %s", uploaded, dst_store.url)
    return run
