"""Exploring a dataset, computed (drawing lives in :mod:`gcsemb.view`).

- Reading: :mod:`~gcsemb.explore.dataset` (schema, ``read_embeddings``) and
  :mod:`~gcsemb.explore.shards` (the lean read: one matrix from the Arrow buffers).
- Neighbours: :mod:`~gcsemb.explore.index` (``DST/_index/``, built by
  :mod:`~gcsemb.explore.indexing`), :mod:`~gcsemb.explore.ivf`
  (the inverted-file index on numpy arrays), :mod:`~gcsemb.explore.neighbours` (kNN graph),
  :mod:`~gcsemb.explore.search` (text and image queries) and :mod:`~gcsemb.explore.ranking`
  (exact or through an index), :mod:`~gcsemb.explore.duplicates`.
- :mod:`~gcsemb.explore.inputs`: the forms every explore function accepts (a URL, a
  ``(df, matrix)`` pair, a DataFrame).
- Maps: :mod:`~gcsemb.explore.projection` (``umap_project``, saved in ``DST/_umap/``), with
  :mod:`~gcsemb.explore.umap_backends` (umap-learn or cuML) and
  :mod:`~gcsemb.explore.umap_cache`.
"""
