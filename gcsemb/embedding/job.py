"""``gcsemb.embed``: every image under SRC into a parquet dataset at DST, on this machine or Ray.

The work is split by concern: :mod:`gcsemb.embedding.config` (how), :mod:`gcsemb.embedding.run` (the
preamble both engines share: handles, weights tag, DST's index and lease),
:mod:`gcsemb.embedding.stages` (plan, fetch, decode, outcome as plain functions),
:mod:`gcsemb.embedding.graph` and :mod:`gcsemb.embedding.local` (the local engine),
:mod:`gcsemb.embedding.ray_engine` (Ray Data), :mod:`gcsemb.embedding.writer` (shards that are never
lost) and :mod:`gcsemb.embedding.report` (what the run did, where the time went). This module only
dispatches.

Example:
    >>> import gcsemb
    >>> summary = gcsemb.embed("gs://my-bucket/photos", "gs://my-bucket/emb")  # doctest: +SKIP
    >>> summary.embedded, summary.bound  # doctest: +SKIP
    (10234, 'model')
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gcsemb.embedding.config import EmbedConfig, RayEngine
from gcsemb.embedding.report import EmbedSummary
from gcsemb.storage import IMAGE_EXTENSIONS, Store

_GIVEN: Any = object()  # "not passed": pretrained=None means random weights


def embed(
    src: str | Store,
    dst: str | Store,
    *,
    model: str = _GIVEN,
    pretrained: str | None = _GIVEN,
    token: Any = None,
    limit: int | None = None,
    extensions: frozenset[str] | None = IMAGE_EXTENSIONS,
    progress: bool = True,
    config: EmbedConfig | None = None,
    engine: str | RayEngine = "local",
    **overrides: Any,
) -> EmbedSummary:
    """Embed every image under ``src`` into a parquet dataset at ``dst``.

    Safe to stop and run again: a re-run embeds only new or changed images (decided from the
    listing's md5, without downloading the others), and a run killed at any point leaves only
    whole shards, so the next run ends with exactly one row per image. Rows DST would not take
    are kept locally and uploaded first by the next run. One run writes to a DST at a time.

    Args:
        src: ``gs://bucket/prefix``, a glob, a local folder, or any fsspec URL (or a
            :class:`~gcsemb.storage.Store`).
        dst: Destination folder (``gs://`` or local, or a Store); when a URL, it is reached
            with ``src``'s access.
        model: open_clip architecture name or model-config JSON path (default ``ViT-B-32``).
        pretrained: Weights tag, local or gs:// checkpoint; ``None`` for random weights
            (default ``laion2b_s34b_b79k``).
        token: Credentials for ``src``, ``dst`` and a gs:// checkpoint (see
            :mod:`gcsemb.storage.auth`). For billing (requester-pays) or another endpoint, pass
            ``src`` as a :func:`~gcsemb.storage.open_store` handle: ``dst`` gets its access.
        limit: Consider only the first N images of the listing.
        extensions: File endings counted as images.
        progress: Show a progress bar (tqdm.auto: a widget in notebooks) and an estimate.
        config: Pipeline settings (:class:`~gcsemb.embedding.config.EmbedConfig`); ``model``,
            ``pretrained`` and ``overrides`` given here replace its fields.
        engine: ``"local"`` (this machine), ``"ray"`` or a
            :class:`~gcsemb.embedding.config.RayEngine` (a Ray cluster,
            :mod:`gcsemb.embedding.ray_engine`; needs ``pip install 'gcsemb[ray]'``).
        **overrides: Single fields of the config to replace, e.g. ``batch_size=32``.

    Returns:
        What the run did: counts, images/s, device and precision, and the per-stage report
        (``summary.bound`` names the stage that limited the run, ``summary.hint`` what to try).

    Raises:
        AccessDenied: The identity may not list ``src`` or write ``dst``: the run stops at once
            (one image it may not read is recorded as a failure instead).
        AuthError: No credentials, or Google rejects them.
        DestinationBusy: Another run is writing to ``dst`` (see ``wait_for_lease``).
        DestinationUnwritable: ``dst`` stopped taking writes for longer than
            ``write_retry_seconds``; the message says where the rows are kept.

    Example:
        >>> summary = embed("gs://my-bucket/photos", "gs://my-bucket/emb")  # doctest: +SKIP
        >>> print(summary)  # doctest: +SKIP
        306 images seen under gs://my-bucket/photos: 306 embedded, 0 skipped ...
    """
    given = {k: v for k, v in (("model", model), ("pretrained", pretrained)) if v is not _GIVEN}
    cfg = replace(config or EmbedConfig(), **given, **overrides)
    if engine == "ray":
        engine = RayEngine()
    if not isinstance(engine, RayEngine) and engine != "local":
        raise ValueError(f"engine={engine!r}: use 'local', 'ray' or a RayEngine(...).")
    from gcsemb.embedding.run import prepare

    run = prepare(
        src, dst, cfg, token=token
    )  # fmt: skip
    try:
        if isinstance(engine, RayEngine):
            from gcsemb.embedding.ray_engine import (
                embed_ray,  # only here: the local engine never imports ray
            )

            embed_ray(run, engine, extensions=extensions, limit=limit, progress=progress)
        else:
            from gcsemb.embedding.local import embed_local

            embed_local(run, extensions=extensions, limit=limit, progress=progress)
    finally:
        run.finish()
    return run.summary
