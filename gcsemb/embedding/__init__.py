"""Embedding: every image under SRC into a parquet dataset at DST (``gcsemb.embed``).

- :mod:`~gcsemb.embedding.job`: ``embed()``, which prepares a run and hands it to an engine.
- :mod:`~gcsemb.embedding.config`: how a run is made (``EmbedConfig``, ``RayEngine``).
- :mod:`~gcsemb.embedding.run`: the preamble both engines share (stores, weights tag, DST's
  index, the lease, the run id); :mod:`~gcsemb.embedding.check`: may we list, read, write?
- :mod:`~gcsemb.embedding.stages`: plan, fetch, decode, outcome as plain functions.
- Engines: :mod:`~gcsemb.embedding.local` (this machine: :mod:`~gcsemb.embedding.graph`,
  :mod:`~gcsemb.embedding.prefetch`, :mod:`~gcsemb.embedding.tuner`) and
  :mod:`~gcsemb.embedding.ray_engine` (Ray Data: :mod:`~gcsemb.embedding.ray_listing`,
  :mod:`~gcsemb.embedding.ray_tasks`, :mod:`~gcsemb.embedding.ray_rows`).
- Output: :mod:`~gcsemb.embedding.writer` (atomic shards, spill), :mod:`~gcsemb.embedding.lease`
  (one writer per DST; taking it in :mod:`~gcsemb.embedding.contest`, claims in
  :mod:`~gcsemb.embedding.claims`), :mod:`~gcsemb.embedding.report`
  (what a run did and what bounds it).
"""
